"""Crash any command at any write, run it again: nothing is lost, duplicated or contradicted.

Every write of every party goes through the store; here the store "crashes" (raises out of
the command, like a killed process) at the k-th write of a command, for k = 0, 1, 2, ...
until the command completes. The federation must then finish as if nothing had happened:
one ledger entry per trained round, every ledger verifying, every site in the result.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fedrema_cli.store import storage
from tests.cli.conftest import SITES, Fed, make_federation, run
from tests.signed_files import read_signed


class Crash(BaseException):
    """A process dying mid-command (not an error the CLI would report)."""


@contextmanager
def crash_at(k: int) -> Iterator[list[str]]:
    """Make the store fail on its (k+1)-th write; yields the paths written before it."""
    written: list[str] = []
    originals = {name: getattr(storage.LocalStorage, name) for name in ("write_once", "replace")}

    def wrap(name: str):
        def write(self: storage.LocalStorage, path: str, data: bytes) -> object:
            if len(written) == k:
                raise Crash(path)
            written.append(path)
            return originals[name](self, path, data)

        return write

    for name in originals:
        setattr(storage.LocalStorage, name, wrap(name))
    try:
        yield written
    finally:
        for name, fn in originals.items():
            setattr(storage.LocalStorage, name, fn)


def crash_everywhere(*args: str | Path) -> int:
    """Run a command, crashing at every write in turn until it completes; return the crashes."""
    crashes = 0
    for k in range(200):
        with crash_at(k):
            try:
                out = run(*args)
            except Crash:
                crashes += 1
                continue
        assert out.exit_code in (0, 75), (args, k, out.stderr)
        return crashes
    raise AssertionError(f"{args} never completed")


@pytest.fixture
def private_fed(tmp_path: Path) -> Fed:
    return make_federation(tmp_path, "--epsilon", "3", "--rounds", "1")


@pytest.mark.slow
def test_every_command_survives_a_crash_at_every_write(private_fed: Fed) -> None:
    fed = private_fed
    crashes = 0
    for _ in range(2):  # round 1's key exchange
        for s in SITES:
            crashes += crash_everywhere("submit", "-s", fed.site(s))
        crashes += crash_everywhere("aggregate", "-s", fed.coordinator)
    for s in SITES:
        crashes += crash_everywhere("train-local", "-s", fed.site(s))
        crashes += crash_everywhere("submit", "-s", fed.site(s))
    crashes += crash_everywhere("aggregate", "-s", fed.coordinator)
    for s in SITES:
        crashes += crash_everywhere("submit", "-s", fed.site(s))
    crashes += crash_everywhere("aggregate", "-s", fed.coordinator)
    assert crashes > 50  # every command was interrupted at least once, most many times

    status = run("status", "-s", fed.coordinator, "--json").json()
    assert status["complete"]
    result = read_signed(fed.workspace / "rounds/0001/result.json")["body"]
    assert result["survivors"] == list(SITES)
    for s in SITES:
        lines = (fed.site(s) / "ledger.jsonl").read_text().splitlines()
        assert len(lines) == 1 and json.loads(lines[0])["round"] == 1
    assert run("audit", "-w", fed.workspace).exit_code == 0
    for s in SITES:
        assert run("personalize", "-s", fed.site(s)).exit_code == 0


def test_a_crash_right_after_the_result_keeps_the_merge_state(tmp_path: Path, monkeypatch) -> None:
    """Killed between publishing round 1's result and saving the merge state, the coordinator
    used to lose FedReMa's state and merge log for good (the round counts as finished once its
    result is out): found by test_kill_sweep.py. The state is now saved first."""
    from fedrema_cli.store.federation import Federation
    from tests.cli.conftest import key_exchange, train_and_submit

    fed = make_federation(tmp_path, "--no-dp")
    key_exchange(fed)
    train_and_submit(fed)
    assert run("aggregate", "-s", fed.coordinator).exit_code == 0
    for s in SITES:
        assert run("submit", "-s", fed.site(s)).exit_code == 0
    put = Federation.put

    def dies_after_the_result(self: Federation, kind: str, r: int, *a, **kw) -> bool:
        written = put(self, kind, r, *a, **kw)
        if kind == "result":
            raise Crash(kind)
        return written

    monkeypatch.setattr(Federation, "put", dies_after_the_result)
    with pytest.raises(Crash):
        run("aggregate", "-s", fed.coordinator)
    monkeypatch.undo()
    assert run("aggregate", "-s", fed.coordinator).exit_code in (0, 75)
    assert (fed.workspace / "rounds/0001/result.json").exists()
    log = json.loads((fed.coordinator / "merge-log.json").read_text())
    assert [e["round"] for e in log] == [1]
    assert (fed.coordinator / "method-state.json").exists()
