"""The four-hospital example script runs end to end: every command, as operators type them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.signed_files import read_signed

ROOT = Path(__file__).resolve().parents[2]


def run_example(script: str, *args: str | Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """An example script of examples/heart_disease/, on this checkout's CLI; it must succeed."""
    env = {**os.environ, "FEDREMA": f"{sys.executable} -m fedrema_cli"}
    out = subprocess.run(
        ["bash", str(ROOT / "examples/heart_disease" / script), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_run_sh_drives_every_command_for_one_round(tmp_path: Path) -> None:
    """With pFedNet (the script's default, FedReMa, runs in `make demo`): any method works."""
    work = tmp_path / "run"
    out = run_example("run.sh", work, "1", "pfednet", timeout=600)
    status = read_signed(work / "workspace" / "rounds" / "0001" / "result.json")
    assert status["body"]["survivors"] == ["cleveland", "hungary", "switzerland", "va"]
    assert status["body"]["method"] == "pfednet" and "pfednet" in status["body"]
    heads = sorted(p.name for p in (work / "workspace/rounds/0002/heads").iterdir())
    assert heads == [f"{s}.json" for s in ("cleveland", "hungary", "switzerland", "va")]
    assert (work / "privacy-report.html").exists()
    assert "every ledger verifies" in out.stdout
    exported = sorted(p.name for p in (work / "models").iterdir())
    assert exported == ["cleveland", "hungary", "switzerland", "va"], exported
