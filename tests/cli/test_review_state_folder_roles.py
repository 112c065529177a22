"""A state folder belongs to one party: `init` must never replace another party's keys."""

from __future__ import annotations

import json
from pathlib import Path

from fedrema_cli.identity import Identity
from tests.cli.conftest import make_federation, run, snapshot


def _one_line_error(out, code: int, *needles: str) -> None:
    assert out.exit_code == code, (out.exit_code, out.stdout, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fedrema: error:"), out.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_joining_as_a_site_in_the_coordinators_folder_keeps_its_keys(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland", "hungary"), approve=False)
    before = snapshot(fed.coordinator), snapshot(fed.workspace)
    out = run(
        "init",
        "-w",
        fed.workspace,
        "-s",
        fed.coordinator,
        "--site",
        "va",
        "--train",
        fed.data("va"),
    )
    _one_line_error(out, 1, "coordinator's state folder")
    assert (snapshot(fed.coordinator), snapshot(fed.workspace)) == before
    # and the coordinator can still sign a roster every site accepts
    assert run("approve", "-s", fed.coordinator, "--all").exit_code == 0
    assert run("status", "-s", fed.site("cleveland")).exit_code == 0


def test_creating_a_federation_in_a_sites_folder_keeps_its_keys(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland", "hungary"), approve=False)
    site = fed.site("cleveland")
    before = snapshot(site)
    other = tmp_path / "other-ws"
    out = run("init", "-w", other, "-s", site, "--preset", "heart-disease", "--no-dp")
    _one_line_error(out, 1, "site's state folder")
    assert snapshot(site) == before
    assert not (other / "federation.json").exists()


def test_a_coordinator_whose_key_was_replaced_signs_nothing(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland", "hungary"), approve=False)
    (fed.coordinator / "identity.json").write_text(json.dumps(Identity.generate().to_json()))
    before = snapshot(fed.workspace)
    out = run("approve", "-s", fed.coordinator, "--all")
    _one_line_error(out, 1, "not the one that signed this federation")
    assert snapshot(fed.workspace) == before
