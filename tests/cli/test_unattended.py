"""A site left to cron: a changed data file is named, training shows progress on stderr only,
and a mistyped site name gets a did-you-mean."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from fedrema_cli import ui
from tests.cli.conftest import Fed, key_exchange, make_federation, run, run_rounds, snapshot


def test_a_data_file_changed_since_init_is_named(
    federation: Fed, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = federation
    key_exchange(fed)
    data = fed.data("va")
    data.write_text(data.read_text() + data.read_text().splitlines()[-1] + "\n")  # one more row
    before = snapshot(fed.site("va")), snapshot(fed.workspace)
    out = run("train-local", "-s", fed.site("va"))
    assert out.exit_code == 1, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{data} changed since this site ran `fedrema init`" in lines[0]
    assert (snapshot(fed.site("va")), snapshot(fed.workspace)) == before
    # a state folder from before the fingerprint was recorded is not checked
    meta = fed.site("va") / "site.json"
    doc = json.loads(meta.read_text())
    del doc["data_sha256"]
    meta.write_text(json.dumps(doc))
    assert run("train-local", "-s", fed.site("va")).exit_code == 0

    # training shows progress on stderr (in a terminal), never in --json's stdout
    monkeypatch.setattr(ui, "err_console", Console(stderr=True, force_terminal=True))
    out = run("train-local", "-s", fed.site("hungary"), "--json")
    assert out.exit_code == 0, out.stderr
    assert out.json()["round"] == 1
    assert "hungary: training, epoch" in out.stderr and "0:00:0" in out.stderr
    assert re.search(r"epoch\S* +\d+/\d+", out.stderr)  # epochs done of all


def test_approving_a_mistyped_site_suggests_the_enrolled_one(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland", "hungary"), approve=False)
    out = run("approve", "-s", fed.coordinator, "cleveland2", "hungary")
    assert out.exit_code == 1
    assert "no enrollment for cleveland2" in out.stderr
    assert "did you mean 'cleveland'?" in out.stderr


def test_train_local_once_the_federation_is_complete_is_done_not_an_error(
    tmp_path: Path,
) -> None:
    """The documented cron line keeps running after the study ends: exit 0, nothing trained."""
    fed = make_federation(tmp_path, "--no-dp", "--rounds", "1")
    run_rounds(fed, 1)
    before = snapshot(fed.site("cleveland"))
    out = run("train-local", "-s", fed.site("cleveland"))
    assert out.exit_code == 0, out.stderr
    assert "finished its 1 rounds" in out.stdout and "personalize" in out.stdout
    assert snapshot(fed.site("cleveland")) == before
    assert run("train-local", "-s", fed.site("cleveland"), "--json").json()["complete"] is True
