"""Every hostile file in place of every workspace file kind, through the real commands (#14).

One federation (DP on, FedReMa heads, secure aggregation, 4 sites, 2 rounds) is stopped in
round 2's unmasking phase, cleveland and hungary having revealed: every kind of file a party
reads is in the workspace then, round 1's result and the published ledgers included. For
EVERY pair (file kind x attack) a test plants the attack in place of that file, with
hypothesis drawing the bytes (random bytes, nesting depth, truncation point, flipped byte),
runs the command that reads that kind, and asserts:

- one clean error line and no traceback; exit 1 or 3, or, where the reader rightly carries
  on without the file (a peer's file that then counts as never sent), 0 or 75 with a clean
  line naming the file;
- a per-command time-out (SIGALRM) and a memory bound: the address space is capped at what
  the process has plus 1 GiB while the command runs, and its own peak RSS growth (VmHWM,
  reset before the command) must stay under 256 MiB;
- nothing else changed: every file of every party (secrets included) hashes as before;
- the federation finishes once the file is removed.

Speed: the cases share one working copy of the federation. A case that changes nothing but
the planted file (checked by hashing every party's files) leaves exactly "snapshot minus the
file" once the file is removed, and `test_the_federation_finishes_without_the_file` finishes
the federation from that very state once per kind; a case that did change something runs
the finish itself, from its own state, and the working copy is refreshed.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import resource
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.main import get_command

from fedrema_cli.app import app
from tests.cli.conftest import (
    SITES,
    Fed,
    Result,
    full_round,
    key_exchange,
    make_federation,
    run,
    train_and_submit,
)
from tests.cli.test_hostile_workspace import clean
from tests.signed_files import plain

R = "rounds/0002"
#: file kind -> the command that reads it at this point of the protocol, and whether the
#: reader rightly carries on without it (0 or 75, naming it) instead of stopping (1 or 3).
KINDS: dict[str, tuple[tuple[str, ...], bool]] = {
    "federation.json": (("status", "-w", "WS"), False),
    "roster.json": (("aggregate", "-s", "COORD"), False),
    # Approved already: listing enrollments, the coordinator names the one it refuses.
    "enrollments/va.json": (("approve", "-s", "COORD"), True),
    f"{R}/model.json": (("submit", "-s", "SWITZERLAND"), False),
    f"{R}/model.params.safetensors": (("submit", "-s", "SWITZERLAND"), False),
    # A head that does not verify is passed over (named): the site personalizes from the
    # last head that does.
    f"{R}/heads/va.json": (("personalize", "-s", "VA"), True),
    # A site's own files are read back by their author, who moves what does not verify to
    # quarantine/ (named) and carries on: the coordinator has what it needs already.
    f"{R}/keys/va.json": (("submit", "-s", "VA"), True),
    f"{R}/shares/va.json": (("submit", "-s", "VA"), True),
    f"{R}/shares/va.to-1.bin": (("submit", "-s", "VA"), True),  # its ciphertext for party 1
    f"{R}/submissions/va.json": (("submit", "-s", "VA"), True),
    f"{R}/submissions/va.masked.bin": (("submit", "-s", "VA"), True),
    # Pinned by each site when it acted on it: a later bad copy is named and not used.
    f"{R}/key-roster.json": (("submit", "-s", "VA"), True),
    f"{R}/masking-roster.json": (("submit", "-s", "VA"), True),
    f"{R}/unmask-request.json": (("status", "-w", "WS"), False),
    # A reveal that does not verify counts as never sent: the coordinator waits (75).
    f"{R}/reveals/hungary.json": (("aggregate", "-s", "COORD"), True),
    f"{R}/reveals/hungary.msg.bin": (("aggregate", "-s", "COORD"), True),
    "rounds/0001/result.json": (("status", "-w", "WS"), False),
    "ledger/va/0002.json": (("audit", "-w", "WS"), False),
}

ATTACKS = (
    "random",
    "empty",
    "nested",
    "huge-number",
    "infinite",
    "forged",
    "truncated",
    "flipped",
    "odd-name",
    "dev-zero",
    "dev-urandom",
    "link-to-other",
    "fifo",
    "folder",
    "sparse",
    "gzip-bomb",
)

#: Coordinator files the parties need verbatim: without them nobody can act, and only the
#: coordinator re-publishing the same signed bytes (write-once) brings the federation back.
RESTORE = {
    "federation.json",
    "roster.json",
    f"{R}/model.json",
    f"{R}/model.params.safetensors",
    f"{R}/key-roster.json",
    f"{R}/masking-roster.json",
    # Still fails when removed (see test_a_removed_past_result_is_republished).
    "rounds/0001/result.json",
}

SECONDS = 20  # per command
MEMORY = 256 * 1024 * 1024  # peak RSS growth per command
HEADROOM = 1 << 30  # address space a command may add before allocation fails

_CLI = get_command(app)  # built once: typer rebuilds it on every CliRunner call otherwise


def invoke(*args: str | Path) -> Result:
    out = CliRunner().invoke(_CLI, [str(a) for a in args], catch_exceptions=False)
    return Result(out.exit_code, out.stdout, out.stderr)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Fed:
    fed = make_federation(tmp_path_factory.mktemp("fuzz"), "--epsilon", "3")
    key_exchange(fed)
    full_round(fed)
    train_and_submit(fed)
    assert run("aggregate", "-s", fed.coordinator).exit_code == 0
    for s in ("cleveland", "hungary"):
        assert run("submit", "-s", fed.site(s)).exit_code == 0
    for kind in KINDS:
        assert (fed.workspace / kind).is_file(), kind
    return fed


def copy_of(fed: Fed, dest: Path) -> Fed:
    """The federation in another folder, every party's recorded paths moved with it."""
    shutil.copytree(fed.root, dest, symlinks=True)
    moved = Fed(dest, dest / "hospitals", dest / "ws", dest / "coord")
    for p in (dest / "coord", *[dest / s for s in SITES]):
        meta = p / ("coordinator.json" if p.name == "coord" else "site.json")
        data = json.loads(meta.read_text())
        data["workspace"] = str(moved.workspace)
        if "data" in data:
            data["data"] = {
                k: v and v.replace(str(fed.root), str(dest)) for k, v in data["data"].items()
            }
        meta.write_text(json.dumps(data))
    return moved


def state(fed: Fed, skip: str) -> dict[str, str]:
    """Every party's files (workspace, sites, coordinator) and their hashes, but ``skip``."""
    out = {}
    for p in sorted(fed.root.rglob("*")):
        rel = str(p.relative_to(fed.root))
        # quarantine/ is where an author moves its own file that did not verify: nothing
        # ever reads it, so it cannot change how the federation goes on.
        if rel.startswith(("hospitals", "ws/quarantine")) or rel == f"ws/{skip}":
            continue
        if not p.is_file():
            continue
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def secrets(fed: Fed) -> set[str]:
    return {str(p.relative_to(fed.root)) for p in fed.root.glob("*/secagg/*.json")}


LOOKALIKE = str.maketrans({"a": "а", "e": "е", "o": "о", "i": "і", "2": "²", "1": "¹"})


def plant(path: Path, how: str, original: bytes, data: st.DataObject, other: Path) -> Path:
    """Put the attack in place of ``path``; returns what to remove afterwards."""
    path.unlink()
    if how == "random":
        path.write_bytes(data.draw(st.binary(max_size=2048), label="bytes"))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "nested":
        depth = data.draw(st.sampled_from([33, 1_000, 100_000, 1_000_000]), label="depth")
        opener, closer = data.draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        path.write_bytes(b'{"header":' + opener * depth + b"1" + closer * depth + b"}")
    elif how == "huge-number":
        digits = data.draw(st.integers(400, 200_000), label="digits")
        path.write_bytes(b'{"header": {"round": ' + b"7" * digits + b'}, "body": {}}')
    elif how == "infinite":
        number = data.draw(st.sampled_from([b"1e999", b"-1e999", b"NaN", b"Infinity"]))
        swapped, n = re.subn(rb'"round": ?\d+', b'"round": ' + number, plain(original), count=1)
        path.write_bytes(swapped if n else b'{"header": {"round": ' + number + b"}}")
    elif how == "forged":  # well-formed, a signature nobody made
        try:
            envelope = json.loads(plain(original))
        except ValueError:
            envelope = {"header": {}, "body": {}}
        envelope["signature"] = "A" * 86 + "=="
        path.write_text(json.dumps(envelope))
    elif how == "truncated":
        path.write_bytes(original[: data.draw(st.integers(0, len(original) - 1), label="cut")])
    elif how == "flipped":
        i = data.draw(st.integers(0, len(original) - 1), label="byte")
        bit = data.draw(st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128]), label="bit")
        path.write_bytes(original[:i] + bytes([original[i] ^ bit]) + original[i + 1 :])
    elif how == "odd-name":  # the real name gone, a lookalike (non-ASCII) name in its place
        odd = path.with_name(path.name.translate(LOOKALIKE))
        if odd == path:
            odd = path.with_name(path.name + "\u200b")
        odd.write_bytes(original)
        return odd
    elif how in ("dev-zero", "dev-urandom"):
        path.symlink_to("/dev/" + how.removeprefix("dev-"))
    elif how == "link-to-other":
        path.symlink_to(other)
    elif how == "fifo":
        os.mkfifo(path)
    elif how == "folder":
        path.mkdir()
        (path / "0001.json").write_bytes(original)
    elif how == "gzip-bomb":  # a small packed file that inflates far past any file limit
        size = data.draw(st.sampled_from([8 << 20, 64 << 20]), label="inflated")
        path.write_bytes(gzip.compress(b'{"header":' + b" " * size + b"}", mtime=0))
    elif how == "sparse":
        with open(path, "wb") as f:
            f.truncate(6 * 1024**3)
    return path


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def republished(path: Path, original: bytes) -> bool:
    if path.is_symlink() or not path.is_file() or path.stat().st_size != len(original):
        return False  # never read a planted 6 GB sparse file to find out
    return path.read_bytes() == original


class TimedOut(BaseException):  # not an Exception: the CLI's error translation must not eat it
    pass


def _status() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {k: int(v.split()[0]) * 1024 for k, v in re.findall(r"(Vm\w+):\s+(.+)", text)}


@contextlib.contextmanager
def bounded(label: str) -> Iterator[dict[str, int]]:
    """Run a block with a hard time-out and a hard address-space cap; report its RSS peak."""
    before = _status()
    with contextlib.suppress(OSError):  # resets VmHWM to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (before["VmSize"] + HEADROOM, hard))

    def expire(*_: object) -> None:
        raise TimedOut(f"{label}: still running after {SECONDS} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(SECONDS)
    usage: dict[str, int] = {}
    try:
        yield usage
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        usage["peak_growth"] = _status()["VmHWM"] - before["VmRSS"]


def args_for(fed: Fed, template: tuple[str, ...]) -> list[str | Path]:
    where = {"WS": fed.workspace, "COORD": fed.coordinator}
    return [where.get(a) or (fed.site(a.lower()) if a.isupper() else a) for a in template]


def finish(fed: Fed) -> dict:
    """Every party acts until the federation is complete (3 passes at most)."""
    for _ in range(3):
        for s in SITES:
            out = invoke("submit", "-s", fed.site(s))
            assert out.exit_code in (0, 75), (s, out.stderr)
            assert clean(out.stderr), out.stderr
        out = invoke("aggregate", "-s", fed.coordinator)
        assert out.exit_code in (0, 75), out.stderr
        status = invoke("status", "-w", fed.workspace, "--json")
        if status.exit_code == 0 and status.json()["complete"]:
            return status.json()
    raise AssertionError(f"the federation did not finish: {status.stdout} {status.stderr}")


@pytest.fixture(scope="module")
def work(snapshot: Fed, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One working copy every case plants into, and the hashes it must keep."""
    fed = copy_of(snapshot, tmp_path_factory.mktemp("work") / "fed")
    return {"fed": fed, "snapshot": snapshot, "tmp": tmp_path_factory}


@pytest.mark.parametrize("how", ATTACKS)
@pytest.mark.parametrize("kind", list(KINDS))
@settings(
    max_examples=1,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_hostile_file_in_place_of_each_kind(
    work: dict, kind: str, how: str, data: st.DataObject
) -> None:
    fed: Fed = work["fed"]
    template, carries_on = KINDS[kind]
    target = fed.workspace / kind
    original = target.read_bytes()
    before = state(fed, skip=kind)
    kept = secrets(fed)
    other = fed.workspace / ("roster.json" if kind == "federation.json" else "federation.json")
    planted = plant(target, how, original, data, other)
    try:
        with bounded(f"{kind} / {how}") as usage:
            out = invoke(*args_for(fed, template))
    finally:
        # The author may have moved its planted copy to quarantine/ and published its own
        # file again (the same signed bytes): that is the real file, not the attack.
        if not (planted == target and republished(target, original)):
            remove(planted)
        changed = state(fed, skip=kind) != before
        if not changed:
            target.write_bytes(original)
    assert "Traceback" not in out.stderr + out.stdout, (kind, how, out.stderr)
    assert clean(out.stderr), (kind, how, out.stderr)
    assert usage["peak_growth"] < MEMORY, (kind, how, usage)
    if out.exit_code in (0, 75):
        # Only a reader that rightly goes on without this file may succeed or wait, and then
        # it must say which file it passed over (by name, in a clean line). An odd name is
        # not the file: it is passed over, and the real one is simply missing.
        assert carries_on or how == "odd-name", (kind, how, out.exit_code, out.stderr)
        if how != "odd-name":
            assert Path(kind).name in out.stderr, (kind, how, out.stderr)
    else:
        assert out.exit_code in (1, 3), (kind, how, out.exit_code, out.stderr)
        assert out.stderr.count("fedrema: error:") == 1, (kind, how, out.stderr)
    assert kept <= secrets(fed), (kind, how)  # no secret deleted
    if changed:  # the reader wrote something: finish from exactly this state, then refresh
        try:
            if kind not in RESTORE:
                finish(fed)
        finally:
            shutil.rmtree(fed.root)
            work["fed"] = copy_of(work["snapshot"], fed.root)


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in RESTORE])
def test_the_federation_finishes_without_the_file(snapshot: Fed, tmp_path: Path, kind: str) -> None:
    """The state every unchanged case leaves, the file removed: the round completes."""
    fed = copy_of(snapshot, tmp_path / "fed")
    (fed.workspace / kind).unlink()
    with bounded(f"finish without {kind}"):
        status = finish(fed)
    assert status["round"] == 2 and status["complete"], status


@pytest.mark.parametrize("kind", sorted(RESTORE - {"rounds/0001/result.json"}))
def test_a_missing_coordinator_file_stops_parties_cleanly_until_it_is_back(
    snapshot: Fed, tmp_path: Path, kind: str
) -> None:
    fed = copy_of(snapshot, tmp_path / "fed")
    target = fed.workspace / kind
    original = target.read_bytes()
    target.unlink()
    # Sites pinned the rosters when they acted on them: whoever needs the file next stops.
    outs = [invoke(*args_for(fed, KINDS[kind][0]))]
    outs += [invoke("submit", "-s", fed.site(s)) for s in SITES]
    outs.append(invoke("aggregate", "-s", fed.coordinator))
    assert all(clean(o.stderr) for o in outs), [o.stderr for o in outs]
    assert all(o.exit_code in (0, 1, 3, 75) for o in outs), [o.exit_code for o in outs]
    stem = Path(kind).name.split(".")[0]  # "roster", "model" (its params), "key-roster"
    assert any(o.exit_code in (1, 3) and stem in o.stderr for o in outs), (
        kind,
        [(o.exit_code, o.stderr) for o in outs],
    )
    target.write_bytes(original)  # the coordinator publishes the same signed bytes again
    assert finish(fed)["complete"]


def test_a_removed_past_result_is_republished(snapshot: Fed, tmp_path: Path) -> None:
    fed = copy_of(snapshot, tmp_path / "fed")
    (fed.workspace / "rounds/0001/result.json").unlink()
    assert finish(fed)["complete"]
