"""SIGKILL every command of a round at sampled points of its writes, re-run it, finish the study.

test_crash_resume.py raises out of the store in-process before each write; here the process
really dies: the command runs as ``python -m fedrema_cli`` with FEDREMA_TEST_KILL_AT=N, and the
store kills it (SIGKILL: no finally, no flush, no atexit) at the N-th step of a local write:
before its temporary file, written but not synced, synced but not renamed, renamed; after a
delete. Killed mid-read is the state of killed before the next write (reads change nothing),
so these steps stand for those too.

Each swept command first runs unkilled in-process from a saved copy of every party's folder,
counting its steps and which file each belongs to. Then, from the same copy each time: kill a
real child process at step N, re-run the command normally, and check that every party holds
the same files and ledger entries as after the unkilled run. The federation goes on from one
of those killed-and-re-run copies (a different step each command), so later commands and the
final checks (one ledger entry per trained round, a clean audit, every result verifying) run
on what a real crash left behind.

Every kill point is a process of its own, so the steps are sampled deterministically: every
step of a write to the privacy ledger in round 1 (the thing that must not be lost or doubled),
and every STRIDE-th step elsewhere, with an offset that rotates from command to command so each
kind of step gets hit. The first kill point is a fresh ``python -m fedrema_cli`` with the
switch in its environment, as a user would start it; the others are forked from a server that
has imported the CLI, torch and Opacus once (multiprocessing's forkserver; it runs no torch op,
so no thread crosses a fork) and set the same switch: each still runs the whole command in a
process of its own and dies by a real SIGKILL, but no longer pays 3-10 s of imports per point.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fedrema_cli.store import storage
from fedrema_cli.store.federation import COORDINATOR, Federation, read_federation
from fedrema_cli.store.state import PartyState
from fedrema_cli.store.workspace import Workspace
from tests.cli.conftest import Fed, make_federation, run
from tests.signed_files import read_signed

ROOT = Path(__file__).resolve().parents[2]
SITES = ("cleveland", "hungary", "switzerland")
KILLED = -signal.SIGKILL
#: Every STRIDE-th step of a command outside the ledger writes (5: prime to the 4 steps of a
#: write, so one command's points fall on different kinds of step).
STRIDE = {"submit": 5, "aggregate": 5, "train-local": 11, "personalize": 3}


def fedrema_killed_at(n: int, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """The command in a child process that the store SIGKILLs at its n-th write step."""
    env = {**os.environ, "FEDREMA_TEST_KILL_AT": str(n)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "fedrema_cli", *map(str, args)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


#: Forks each kill point from a process that imported these once (see the module docstring).
FORKS = multiprocessing.get_context("forkserver")
FORKS.set_forkserver_preload(["fedrema_cli.app", "torch", "opacus", __name__])


def _die_at(n: int, args: list[str], log: str) -> None:
    """In the forked process: arm the store's kill switch at step n and run the command."""
    err = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(err, 2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.chdir(ROOT)
    storage._TEST_KILL_AT, storage._test_kill_steps = n, 0  # what FEDREMA_TEST_KILL_AT=n sets
    sys.argv = ["fedrema", *args]
    from fedrema_cli.app import main

    main()


def forked_killed_at(n: int, log: Path, *args: str | Path) -> tuple[int | None, str]:
    """The command in a process forked from the preloaded server, SIGKILLed at step n:
    its exit code and its stderr."""
    child = FORKS.Process(target=_die_at, args=(n, [str(a) for a in args], str(log)))
    child.start()
    child.join(timeout=300)
    if child.exitcode is None:
        child.kill()
        child.join()
    return child.exitcode, log.read_text() if log.exists() else ""


@contextmanager
def counting_steps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, str]]]:
    """Count the store's write steps in this process (never killing); yields, per write, the
    step count before it and the file written."""
    writes: list[tuple[int, str]] = []

    def tracing(name: str):  # type: ignore[no-untyped-def]
        original = getattr(storage.LocalStorage, name)

        def traced(self: storage.LocalStorage, path: str, *a: object) -> object:
            writes.append((storage._test_kill_steps, f"{self.root.name}/{path}"))
            return original(self, path, *a)

        return traced

    with monkeypatch.context() as m:
        m.setattr(storage, "_TEST_KILL_AT", 1 << 60)
        m.setattr(storage, "_test_kill_steps", 0)
        for name in ("write_once", "replace", "delete"):
            m.setattr(storage.LocalStorage, name, tracing(name))
        yield writes
        writes.append((storage._test_kill_steps, ""))  # the end: the total


def visible_files(folder: Path) -> set[str]:
    """What the parties see: every file but the store's temporary ones (dot-named)."""
    return {
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


def ledger_rounds(fed: Fed, site: str) -> list[int]:
    path = fed.site(site) / "ledger.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["round"] for line in path.read_text().splitlines()]


@dataclass
class Sweep:
    """Runs commands under the kill switch from saved copies of every party's folder."""

    fed: Fed
    saved: Path
    monkeypatch: pytest.MonkeyPatch
    tried: dict[str, list[int]] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    leftovers: int = 0  # temporary files kills left behind (invisible to every reader)
    fresh: bool = True  # the next kill point runs in a fresh Python, not a fork

    def _parties(self) -> list[Path]:
        return [self.fed.workspace, self.fed.coordinator, *map(self.fed.site, SITES)]

    def _save(self, to: Path) -> None:
        shutil.rmtree(to, ignore_errors=True)
        for p in self._parties():
            shutil.copytree(p, to / p.name, symlinks=True)

    def _restore(self, src: Path) -> None:
        for p in self._parties():
            shutil.rmtree(p)
            shutil.copytree(src / p.name, p, symlinks=True)

    def _seen(self) -> tuple[dict[str, set[str]], dict[str, list[int]]]:
        files = {p.name: visible_files(p) for p in self._parties()}
        return files, {s: ledger_rounds(self.fed, s) for s in SITES}

    def plain(self, name: str, state: Path) -> None:
        out = run(name, "-s", state)
        assert out.exit_code in (0, 75), (name, state, out.stderr)

    def run(self, label: str, name: str, state: Path, *, every_ledger_step: bool = True) -> None:
        """Kill ``fedrema name -s state`` at sampled steps, each time from the same start
        (``every_ledger_step``: also at each step of each write to a privacy ledger)."""
        args = (name, "-s", state)
        self._save(self.saved / "before")
        with counting_steps(self.monkeypatch) as writes:
            out = run(*args)
        assert out.exit_code == 0, (label, out.stderr)
        clean = self._seen()
        total = writes[-1][0]
        stride = min(STRIDE[name], total)
        offset = len(self.tried) % stride
        points = sorted(
            {n for n in range(1, total + 1) if n % stride == offset}
            | {  # every step of every write to a ledger
                n
                for (begin, path), (end, _) in itertools.pairwise(writes)
                if every_ledger_step and "ledger" in path
                for n in range(begin + 1, end + 1)
            }
        )
        assert points, f"{label}: not one write to kill"
        forward = points[len(self.tried) * 7 % len(points)]
        for n in points:
            self._restore(self.saved / "before")
            if self.fresh:  # the first point: a fresh process, the switch from its environment
                self.fresh = False
                fresh = fedrema_killed_at(n, *args)
                code, stderr = fresh.returncode, fresh.stderr
            else:
                code, stderr = forked_killed_at(n, self.saved / "stderr.txt", *args)
            assert code == KILLED, (label, n, code, stderr[-2000:])
            again = run(*args)  # re-run, as the operator (or cron) would
            assert again.exit_code in (0, 75), (label, n, again.stderr)
            self.leftovers += sum(1 for p in self._parties() for _ in p.rglob(".*.tmp"))
            files, rounds = self._seen()
            for party, names in files.items():
                assert names == clean[0][party], (label, n, party, names ^ clean[0][party])
            assert rounds == clean[1], (label, n, rounds, clean[1])
            if n == forward:
                self._save(self.saved / "forward")
        # Go on from state a kill left behind and a re-run repaired, not from the clean run.
        self._restore(self.saved / "forward")
        self.tried[label], self.steps[label] = points, total


def verify_results(fed: Fed, rounds: int) -> None:
    """Every round's result and next model is there, signed by the coordinator, intact."""
    ws = Workspace.open(str(fed.workspace))
    config, _ = read_federation(ws)
    identity = PartyState(fed.coordinator).identity()
    federation = Federation(ws, config, me=COORDINATOR, identity=identity)
    assert federation.load_roster() is not None
    for r in range(1, rounds + 1):
        for kind, at in (("result", r), ("model", r + 1)):
            base = f"rounds/{at:04d}/{kind}"
            header = read_signed(fed.workspace / f"{base}.json")["header"]
            federation.get(kind, at, attachments=tuple(header["attachments"]))
        body = federation.get("result", r).body
        assert body["survivors"] == list(SITES), body


@pytest.mark.slow
def test_every_command_survives_sigkill_at_its_write_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = make_federation(tmp_path, "--epsilon", "3", sites=SITES)
    sweep = Sweep(fed, tmp_path / "saved", monkeypatch)
    coord = fed.coordinator
    turn = itertools.cycle(SITES)  # the site whose command is swept this time

    def each_site(label: str, name: str) -> None:
        swept = next(turn)
        for s in SITES:
            if s == swept:
                # every ledger step once (round 1); sampled like any write after that
                sweep.run(f"{label} {s}", name, fed.site(s), every_ledger_step=label[:2] != "r2")
            else:
                sweep.plain(name, fed.site(s))

    # round 1's key exchange: advertise keys, fix U1, share keys, fix U2
    each_site("r0 submit advertise", "submit")
    sweep.run("r0 aggregate fix-U1", "aggregate", coord)
    each_site("r0 submit share-keys", "submit")
    sweep.run("r0 aggregate fix-U2", "aggregate", coord)
    for r in (1, 2):
        each_site(f"r{r} train-local", "train-local")
        each_site(f"r{r} submit masked", "submit")  # and round r+1's key advert
        sweep.run(f"r{r} aggregate close", "aggregate", coord)
        each_site(f"r{r} submit reveal", "submit")  # and round r+1's key shares
        sweep.run(f"r{r} aggregate finalize", "aggregate", coord)
        each_site(f"r{r} personalize", "personalize")

    tried = sum(map(len, sweep.tried.values()))
    print(f"\nkill points tried: {tried} of {sum(sweep.steps.values())} steps")
    for label, points in sweep.tried.items():
        print(f"  {label}: {len(points)} of {sweep.steps[label]}: {points}")
    print(f"temporary files left behind by kills: {sweep.leftovers}")
    assert tried >= 50

    for s in SITES:
        assert ledger_rounds(fed, s) == [1, 2], s
    audit = run("audit", "-w", fed.workspace)
    assert audit.exit_code == 0, audit.stdout[-2000:] + audit.stderr[-2000:]
    verify_results(fed, 2)
