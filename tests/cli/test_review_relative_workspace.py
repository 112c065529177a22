"""`init -w ws` with a relative path: later commands run from another directory (cron,
systemd, a new shell) must still find the workspace."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import make_federation, run


def test_a_relative_workspace_is_found_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland", "hungary"), workspace="ws")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for party in (fed.site("cleveland"), fed.coordinator):
        out = run("status", "-s", party, "--json")
        assert out.exit_code == 0, out.stderr
        assert out.json()["round"] == 1
    out = run("submit", "-s", fed.site("cleveland"))
    assert out.exit_code == 0, out.stderr
    assert (tmp_path / "ws" / "rounds" / "0001" / "keys" / "cleveland.json").exists()
