"""`init --site` must not leave a state folder that blocks its own re-run, nor join a
federation whose roster is already signed."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrema_cli.errors import StoreError
from fedrema_cli.roles import exchange
from tests.cli.conftest import make_federation, run, snapshot


def _join(fed, name: str) -> object:
    return run(
        "init",
        "-w",
        fed.workspace,
        "-s",
        fed.site(name),
        "--site",
        name,
        "--train",
        fed.data(name),
    )


def test_a_join_whose_enrollment_failed_can_be_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland", "hungary"), approve=False)
    real = exchange.write_enrollment

    def unwritable(*args: object, **kwargs: object) -> bool:
        raise StoreError("cannot write ws/enrollments/va.json: Permission denied")

    monkeypatch.setattr(exchange, "write_enrollment", unwritable)
    out = _join(fed, "va")
    assert out.exit_code == 1 and "Permission denied" in out.stderr
    monkeypatch.setattr(exchange, "write_enrollment", real)
    out = _join(fed, "va")  # the folder is writable again: the same command finishes the join
    assert out.exit_code == 0, out.stderr
    assert (fed.workspace / "enrollments" / "va.json").exists()
    listed = run("approve", "-s", fed.coordinator, "--json").json()["enrollments"]
    assert [e["site"] for e in listed] == ["cleveland", "hungary", "va"]


def test_joining_after_the_roster_is_approved_writes_nothing(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland", "hungary"))
    before = snapshot(fed.workspace)
    out = _join(fed, "va")
    assert out.exit_code == 1, out.stdout
    assert "already running" in out.stderr
    assert snapshot(fed.workspace) == before
    assert not fed.site("va").exists() or not any(fed.site("va").iterdir())
