"""Every party in its own process, at the same time: `submit --wait` and `aggregate --wait`.

This is how hospitals run it for real: each site trains, then `submit --wait` does its whole
part of the round (keys, masked update, unmasking shares) as the coordinator's
`aggregate --wait` moves the round along.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.conftest import SITES, make_federation, run
from tests.signed_files import read_signed

FEDREMA = shutil.which("fedrema", path=os.path.dirname(sys.executable)) or "fedrema"


@pytest.mark.slow
def test_one_round_with_every_party_waiting_in_parallel(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, "--no-dp", "--rounds", "1")
    env = {**os.environ, "COLUMNS": "120"}
    procs = {
        s: subprocess.Popen(
            [
                "bash",
                "-c",
                f"{FEDREMA} train-local -s {fed.site(s)} && "
                f"{FEDREMA} submit -s {fed.site(s)} --wait --timeout 120",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for s in SITES
    }
    procs["coordinator"] = subprocess.Popen(
        [FEDREMA, "aggregate", "-s", str(fed.coordinator), "--wait", "--timeout", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    outputs = {name: p.communicate(timeout=180) for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, (name, outputs[name])
    result = read_signed(fed.workspace / "rounds/0001/result.json")["body"]
    assert result["survivors"] == list(SITES)
    assert "finished with 4 sites" in outputs["coordinator"][0]
    for s in SITES:
        assert "unmasking shares revealed" in outputs[s][0]


def test_a_wait_that_times_out_still_prints_its_json(tmp_path: Path) -> None:
    """A script reading --json learns what was sent even when the wait ran out (exit 75)."""
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland", "hungary"))
    out = run("submit", "-s", fed.site("cleveland"), "--wait", "--timeout", "1", "--json")
    assert out.exit_code == 75, (out.stdout, out.stderr)
    body = out.json()
    assert body["timed_out"] is True and body["site"] == "cleveland"
    assert body["done"] and body["waiting_for"]  # its keys went out; it waits for the coordinator
    assert "gave up after 1s" in out.stderr
    # one document: the command's own, with the error in it
    assert body["ok"] is False and body["exit_code"] == 75 and "gave up" in body["error"]
    out = run("aggregate", "-s", fed.coordinator, "--wait", "--timeout", "1", "--json")
    assert out.exit_code == 75, (out.stdout, out.stderr)
    body = out.json()
    assert body["timed_out"] is True and "hungary" in body["waiting_for"]
    out = run("submit", "-s", fed.site("hungary"), "--json")  # no --wait: nothing timed out
    assert out.exit_code == 0 and out.json()["timed_out"] is False
