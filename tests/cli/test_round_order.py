"""Commands run too early, too late or twice in a round: exit codes that say what to do next."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from tests.cli.conftest import (
    Fed,
    key_exchange,
    make_federation,
    run,
    run_rounds,
    snapshot,
    train_and_submit,
)


def test_site_commands_before_approval_mean_not_yet(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland", "hungary"), approve=False)
    before = snapshot(fed.workspace), snapshot(fed.site("cleveland"))
    for command in ("train-local", "submit"):
        out = run(command, "-s", fed.site("cleveland"))
        assert out.exit_code == 75, (command, out.stdout, out.stderr)
        assert "fedrema approve" in out.stderr
        # a wait is normal in a cron log: worded as one, so a watcher on "error" stays quiet
        assert out.stderr.startswith("fedrema: waiting:") and "error" not in out.stderr
    assert (snapshot(fed.workspace), snapshot(fed.site("cleveland"))) == before
    out = run("aggregate", "-s", fed.coordinator)  # the coordinator's own step: not "later"
    assert out.exit_code == 1 and "fedrema approve" in out.stderr


def test_train_local_after_the_round_closed_without_this_site(federation: Fed) -> None:
    fed = federation
    key_exchange(fed)
    train_and_submit(fed, ("cleveland", "hungary", "switzerland"))
    out = run("aggregate", "-s", fed.coordinator, "--close")
    assert out.exit_code == 0, out.stderr
    assert "dropped: va" in out.stdout
    before = snapshot(fed.site("va")), snapshot(fed.workspace)
    out = run("train-local", "-s", fed.site("va"))
    assert out.exit_code == 75, (out.stdout, out.stderr)  # sits the round out: not an alarm
    # two rounds: round 2's keys were fixed without va when round 1 closed, so none is left
    assert "closed without va" in out.stderr and "no round is left to rejoin" in out.stderr
    assert (snapshot(fed.site("va")), snapshot(fed.workspace)) == before
    # which is what status already tells this site
    status = run("status", "-s", fed.site("va"), "--json").json()
    assert "not part of this round" in status["next"] and "no round is left" in status["next"]


def test_submit_and_aggregate_once_the_federation_is_complete(federation: Fed) -> None:
    fed = federation
    run_rounds(fed, 2)
    assert run("status", "-s", fed.coordinator, "--json").json()["complete"]
    out = run("aggregate", "-s", fed.coordinator)
    assert out.exit_code == 0, out.stderr
    assert "federation complete" in out.stdout
    out = run("aggregate", "-s", fed.coordinator, "--wait", "--timeout", "1", "--json")
    assert out.exit_code == 0 and out.json()["complete"]
    out = run("submit", "-s", fed.site("va"))
    assert out.exit_code == 0, out.stderr
    assert "personalize" in out.stdout
    out = run("submit", "-s", fed.site("va"), "--wait", "--timeout", "1")
    assert out.exit_code == 0, out.stderr


def test_train_local_twice_says_next_once(federation: Fed) -> None:
    key_exchange(federation)
    assert run("train-local", "-s", federation.site("va")).exit_code == 0
    out = run("train-local", "-s", federation.site("va"))
    assert out.exit_code == 0, out.stderr
    assert out.stdout.count("next: `fedrema submit`") == 1 and "next: next:" not in out.stdout


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


def test_approve_twice_changes_nothing_and_naming_fewer_sites_removes_none(
    tmp_path: Path,
) -> None:
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland", "hungary", "va"), approve=False)
    assert run("approve", "-s", fed.coordinator, "--all").exit_code == 0
    before = snapshot(fed.workspace), snapshot(fed.coordinator)
    out = run("approve", "-s", fed.coordinator, "--all")  # safe to re-run, like every command
    assert out.exit_code == 0, out.stderr
    assert "nothing changed" in out.stdout
    out = run("approve", "-s", fed.coordinator, "va", "hungary", "cleveland", "--json")
    assert out.exit_code == 0 and out.json()["unchanged"] and not out.json()["approved_now"]
    # Naming fewer sites adds none and removes none: removal is explicit (`--remove`).
    out = run("approve", "-s", fed.coordinator, "cleveland", "hungary")
    assert out.exit_code == 0, out.stderr
    assert "already signed for cleveland, hungary, va" in out.stdout
    assert "nothing changed" in out.stdout
    assert (snapshot(fed.workspace), snapshot(fed.coordinator)) == before


def test_aggregate_clears_what_killed_writes_left_in_a_local_workspace(federation: Fed) -> None:
    """A site's `submit` killed mid-write leaves `.NAME.<hex>.tmp` in the shared folder, which
    no reader sees; the coordinator's next `aggregate` removes it once stale (60 s), never a
    write in flight."""
    import time

    fed = federation
    key_exchange(fed)
    submissions = fed.workspace / "rounds" / "0001" / "submissions"
    submissions.mkdir(parents=True, exist_ok=True)
    stale = submissions / ".va.json.b489c0309675.tmp"
    fresh = submissions / ".hungary.json.0123456789ab.tmp"
    for path in (stale, fresh):
        path.write_bytes(b"half a file")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert run("aggregate", "-s", fed.coordinator).exit_code in (0, 75)
    assert not stale.exists() and fresh.exists()
