"""The unattended hospital command in docs/operations.md, run as documented.

A cron run after a `submit --wait` that ended early (timeout, reboot) finds the round already
trained: `train-local` refuses it (exit 1), and the documented line must still run `submit`,
which reveals the site's unmasking shares. With `&&` the site never reveals again.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from tests.cli.conftest import Fed, key_exchange, run, train_and_submit

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations.md"


def _hospital_line() -> str:
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# each hospital"))
    return next(line for line in lines[start:] if line.startswith("fedrema train-local"))


def test_the_documented_unattended_line_reveals_after_an_interrupted_wait(federation: Fed) -> None:
    fed = federation
    key_exchange(fed)
    train_and_submit(fed)  # cleveland trained and submitted; its `submit --wait` then ended
    assert run("aggregate", "-s", fed.coordinator).exit_code == 0  # unmasking requested
    (fed.root / "state").symlink_to(fed.site("cleveland"))
    script = (
        f'fedrema() {{ {shlex.quote(sys.executable)} -m fedrema_cli "$@"; }}\n'
        + _hospital_line().replace("86400", "60")
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's code, from any folder
    subprocess.run(["bash", "-c", script], cwd=fed.root, env=env, capture_output=True, timeout=120)
    assert (fed.workspace / "rounds" / "0001" / "reveals" / "cleveland.json").exists()
