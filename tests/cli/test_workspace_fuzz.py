"""Fuzz every workspace file kind with hostile content, through the real commands (issue 14).

A federation is stopped in round 1's unmasking phase (DP on, FedReMa heads, secure
aggregation): every kind of file a party reads is in the workspace then. Hypothesis puts
random bytes, deep nesting, huge numbers, forged envelopes, odd names, symlinks and special
files in place of one of them, runs the commands that read it, and checks each answers in
clean lines with a meaningful exit code, fast, in bounded memory, deleting no secret; then
the file is put back and round 1 must still finish.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cli.conftest import Fed, key_exchange, make_federation, run, submit_all, train_and_submit
from tests.cli.test_hostile_workspace import clean

KINDS = (
    "federation.json",
    "roster.json",
    "enrollments/va.json",
    "rounds/0001/model.json",
    "rounds/0001/model.params.safetensors",
    "rounds/0001/keys/va.json",
    "rounds/0001/key-roster.json",
    "rounds/0001/shares/va.json",
    "rounds/0001/shares/va.to-1.bin",  # its ciphertext for cleveland (party 1)
    "rounds/0001/masking-roster.json",
    "rounds/0001/submissions/va.json",
    "rounds/0001/submissions/va.masked.bin",
    "rounds/0001/unmask-request.json",
    "rounds/0002/keys/va.json",
    "ledger/va/0001.json",
)

HOSTILE = (
    "random",
    "empty",
    "nested",
    "huge-number",
    "infinite",
    "forged",
    "truncated",
    "flipped",
    "dev-zero",
    "dev-urandom",
    "link-to-other",
    "fifo",
    "folder",
    "sparse",
)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Fed:
    fed = make_federation(tmp_path_factory.mktemp("fuzz"), "--epsilon", "3")
    key_exchange(fed)
    train_and_submit(fed)
    assert run("aggregate", "-s", fed.coordinator).exit_code == 0
    for kind in KINDS:
        assert (fed.workspace / kind).is_file(), kind
    return fed


def copy_of(fed: Fed, dest: Path) -> Fed:
    shutil.copytree(fed.root, dest, symlinks=True)
    moved = Fed(dest, dest / "hospitals", dest / "ws", dest / "coord")
    for p in (dest / "coord", *[dest / s for s in ("cleveland", "hungary", "switzerland", "va")]):
        meta = p / ("coordinator.json" if p.name == "coord" else "site.json")
        data = json.loads(meta.read_text())
        data["workspace"] = str(moved.workspace)
        if "data" in data:
            data["data"] = {
                k: v and v.replace(str(fed.root), str(dest)) for k, v in data["data"].items()
            }
        meta.write_text(json.dumps(data))
    return moved


def plant(path: Path, how: str, original: bytes, data: st.DataObject, other: Path) -> None:
    path.unlink()
    if how == "random":
        path.write_bytes(data.draw(st.binary(max_size=512), label="bytes"))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "nested":
        depth = data.draw(st.sampled_from([40, 5_000, 300_000]), label="depth")
        path.write_bytes(b'{"header":' + b"[" * depth + b"]" * depth + b"}")
    elif how == "huge-number":
        path.write_bytes(b'{"header": {"round": ' + b"7" * 100_000 + b'}, "body": {}}')
    elif how == "infinite":
        path.write_bytes(original.replace(b'"round": 1', b'"round": 1e999', 1))
    elif how == "forged":  # a well-formed envelope with a signature nobody made
        envelope = json.loads(original) if original.startswith(b"{") else {"header": {}}
        envelope["signature"] = "A" * 86 + "=="
        path.write_text(json.dumps(envelope))
    elif how == "truncated":
        path.write_bytes(original[: data.draw(st.integers(0, max(0, len(original) - 1)))])
    elif how == "flipped":
        i = data.draw(st.integers(0, len(original) - 1), label="byte")
        path.write_bytes(original[:i] + bytes([original[i] ^ 0x20]) + original[i + 1 :])
    elif how == "dev-zero":
        path.symlink_to("/dev/zero")
    elif how == "dev-urandom":
        path.symlink_to("/dev/urandom")
    elif how == "link-to-other":
        path.symlink_to(other)
    elif how == "fifo":
        os.mkfifo(path)
    elif how == "folder":
        path.mkdir()
    elif how == "sparse":
        with open(path, "wb") as f:
            f.truncate(6 * 1024**3)


def secrets(fed: Fed) -> set[str]:
    return {str(p.relative_to(fed.root)) for p in fed.root.glob("*/secagg/*.json")}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(kind=st.sampled_from(KINDS), how=st.sampled_from(HOSTILE), data=st.data())
def test_hostile_file_in_place_of_any_kind(
    snapshot: Fed,
    tmp_path_factory: pytest.TempPathFactory,
    kind: str,
    how: str,
    data: st.DataObject,
) -> None:
    fed = copy_of(snapshot, tmp_path_factory.mktemp("case") / "fed")
    target = fed.workspace / kind
    original = target.read_bytes()
    plant(target, how, original, data, fed.workspace / "federation.json")
    kept = secrets(fed)
    rss = peak_rss_mib()
    for args in (
        ("status", "-w", fed.workspace),
        ("submit", "-s", fed.site("va")),
        ("submit", "-s", fed.site("hungary")),
        ("aggregate", "-s", fed.coordinator),
        ("audit", "-w", fed.workspace),
    ):
        started = time.monotonic()
        out = run(*args)
        assert time.monotonic() - started < 20, (kind, how, args)
        assert out.exit_code in (0, 1, 3, 75), (kind, how, args, out.stderr)
        assert clean(out.stderr), (kind, how, args, out.stderr)
    assert kept <= secrets(fed), (kind, how)  # no secret deleted
    assert peak_rss_mib() - rss < 512, (kind, how)

    if target.is_symlink() or target.exists():
        if target.is_dir() and not target.is_symlink():
            target.rmdir()
        else:
            target.unlink()
    target.write_bytes(original)
    submit_all(fed)
    out = run("aggregate", "-s", fed.coordinator)
    assert out.exit_code in (0, 75), (kind, how, out.stderr)
    status = run("status", "-w", fed.workspace, "--json")
    assert status.exit_code == 0, (kind, how, status.stderr)
    assert status.json()["round"] == 2, (kind, how, status.json())
