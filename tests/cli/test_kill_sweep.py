"""SIGKILL every command of a round at many points of its writes, re-run it, finish the study.

test_crash_resume.py raises out of the store in-process before a write; here the process
really dies: each command runs as ``python -m fedrema_cli`` with FEDREMA_TEST_KILL_AT=N, and
the store kills it (SIGKILL, nothing runs after it: no finally, no flush) at the N-th step of
a local write: before the temporary file, after writing it but before its fsync, after the
fsync but before the rename, after the rename, after a delete. Killed mid-read is the same
state as killed before the next write (reads change nothing), so the steps cover those too.

For every command, from one saved copy of all parties' folders: kill at step N, re-run it
normally, check the result looks like an unkilled run's; N = 1, 1 + k, 1 + 2k, ... until a
run is not killed (k = STRIDE[command]; 1 for the cheap commands). The federation then goes
on from one of the killed-and-re-run copies (a different step each command), so the later
commands and the final checks run on state a real crash left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fedrema_cli.store.federation import COORDINATOR, Federation, read_federation
from fedrema_cli.store.state import PartyState
from fedrema_cli.store.workspace import Workspace
from tests.cli.conftest import Fed, make_federation

ROOT = Path(__file__).resolve().parents[2]
SITES = ("cleveland", "hungary", "switzerland")
KILLED = -signal.SIGKILL
#: Every k-th kill point per command (all of them where k = 1). The costly commands load
#: torch and Opacus on every start; their first round is swept at this stride, the second
#: at twice it. The counts tried are printed (pytest -s) and asserted below.
STRIDE = {"submit": 1, "train-local": 3, "personalize": 3}


def fedrema(*args: str | Path, kill_at: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FEDREMA_TEST_KILL_AT"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if kill_at is not None:
        env["FEDREMA_TEST_KILL_AT"] = str(kill_at)
    return subprocess.run(
        [sys.executable, "-m", "fedrema_cli", *map(str, args)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


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
    tried: dict[str, int] = field(default_factory=dict)
    commands: int = 0
    leftovers: int = 0  # temporary files a kill left behind (invisible to every reader)

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

    def _snapshot(self) -> dict[str, set[str]]:
        return {p.name: visible_files(p) for p in self._parties()}

    def run(self, label: str, name: str, state: Path, *, stride: int) -> None:
        """Kill ``fedrema name -s state`` at steps 1, 1 + stride, ... until it is not killed."""
        args = (name, "-s", state)
        self._save(self.saved / "before")
        recovered: list[tuple[int, dict[str, set[str]], dict[str, list[int]]]] = []
        n = 1
        while True:
            self._restore(self.saved / "before")
            out = fedrema(*args, kill_at=n)
            if out.returncode != KILLED:
                break  # no step n: the command ran to its end
            again = fedrema(*args)
            assert again.returncode == 0, (label, n, again.stdout[-800:], again.stderr[-800:])
            self.leftovers += sum(
                1 for p in self._parties() for f in p.rglob(".*.tmp") if f.is_file()
            )
            recovered.append((n, self._snapshot(), {s: ledger_rounds(self.fed, s) for s in SITES}))
            self._save(self.saved / f"after-{n}")
            n += stride
        assert out.returncode == 0, (label, n, out.stdout[-800:], out.stderr[-800:])
        print(f"{label}: {len(recovered)} kill points, up to step {n - stride}", flush=True)
        assert recovered, f"{label}: not one write to kill"
        clean = self._snapshot()
        ledgers = {s: ledger_rounds(self.fed, s) for s in SITES}
        for k, files, rounds in recovered:
            for party, names in files.items():
                assert names == clean[party], (label, k, party, names ^ clean[party])
            assert rounds == ledgers, (label, k, rounds, ledgers)
        # Go on from state a kill left behind and a re-run repaired, not from the clean run;
        # the kill point rotates from one command to the next.
        forward = recovered[(self.commands * 7) % len(recovered)][0]
        self._restore(self.saved / f"after-{forward}")
        for k, *_ in recovered:
            shutil.rmtree(self.saved / f"after-{k}")
        self.tried[label] = len(recovered)
        self.commands += 1


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
            header = json.loads((fed.workspace / f"{base}.json").read_text())["header"]
            federation.get(kind, at, attachments=tuple(header["attachments"]))
        body = federation.get("result", r).body
        assert body["survivors"] == list(SITES), body


def test_every_command_survives_sigkill_at_its_write_steps(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, "--epsilon", "3", sites=SITES)
    sweep = Sweep(fed, tmp_path / "saved")
    coordinator = fed.coordinator
    # round 1's key exchange: advertise keys, fix U1, share keys, fix U2
    for phase, closing in (("advertise", "fix-U1"), ("share-keys", "fix-U2")):
        for s in SITES:
            sweep.run(f"r0 submit {phase} {s}", "submit", fed.site(s), stride=STRIDE["submit"])
        sweep.run(f"r0 aggregate {closing}", "aggregate", coordinator, stride=1)
    for r in (1, 2):
        scale = r  # round 2: every other point of round 1's stride, for the costly commands
        for s in SITES:
            stride = STRIDE["train-local"] * scale
            sweep.run(f"r{r} train-local {s}", "train-local", fed.site(s), stride=stride)
        for s in SITES:  # masked update (and round r+1's key advert)
            sweep.run(f"r{r} submit masked {s}", "submit", fed.site(s), stride=STRIDE["submit"])
        sweep.run(f"r{r} aggregate close", "aggregate", coordinator, stride=1)
        for s in SITES:  # unmasking shares (and round r+1's key shares)
            sweep.run(f"r{r} submit reveal {s}", "submit", fed.site(s), stride=STRIDE["submit"])
        sweep.run(f"r{r} aggregate finalize", "aggregate", coordinator, stride=1)
        for s in SITES:
            stride = STRIDE["personalize"] * scale
            sweep.run(f"r{r} personalize {s}", "personalize", fed.site(s), stride=stride)

    print(f"\nkill points tried: {sum(sweep.tried.values())} {sweep.tried}")
    print(f"temporary files left behind by kills: {sweep.leftovers}")
    assert sum(sweep.tried.values()) >= 100

    for s in SITES:
        assert ledger_rounds(fed, s) == [1, 2], s
    audit = fedrema("audit", "-w", fed.workspace)
    assert audit.returncode == 0, audit.stdout[-2000:] + audit.stderr[-2000:]
    verify_results(fed, 2)
