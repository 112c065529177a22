"""examples/heart_disease/roster_scenario.sh end to end: the roster over a study's life.

Its own file so that a parallel run (`make test`, pytest-xdist by file) starts it beside
`test_example_script.py` instead of after it: the two are the suite's longest tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.test_example_script import run_example
from tests.signed_files import read_signed


@pytest.mark.slow
def test_roster_scenario_drops_rejoins_adds_a_fifth_site_and_rotates_a_key(
    tmp_path: Path,
) -> None:
    """examples/heart_disease/roster_scenario.sh: the roster over a study's life, 3 rounds."""
    work = tmp_path / "roster"
    out = run_example("roster_scenario.sh", work, timeout=1200)

    def survivors(r: int) -> list[str]:
        path = work / "workspace" / "rounds" / f"{r:04d}" / "result.json"
        return read_signed(path)["body"]["survivors"]

    four = ["cleveland", "hungary", "switzerland", "va"]
    assert survivors(1) == ["cleveland", "hungary", "va"]  # switzerland offline: quorum 3
    assert survivors(2) == four  # it rejoined the next round
    assert sorted(survivors(3)) == sorted([*four, "hungary-annex"])
    v2 = json.loads((work / "workspace" / "rosters" / "0002.json").read_text())["body"]
    assert (v2["effective_from_round"], v2["threshold"], len(v2["sites"])) == (3, 4, 5)
    assert "every ledger verifies" in out.stdout
