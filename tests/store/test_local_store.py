"""The store: atomic write-once files, signed envelopes, private state permissions."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from fedrema_cli.errors import IntegrityError, StoreError, WriteOnceError
from fedrema_cli.identity import Identity
from fedrema_cli.store import envelope as env
from fedrema_cli.store.state import PartyState
from fedrema_cli.store.storage import LocalStorage
from fedrema_cli.store.workspace import Workspace


def test_write_once_is_idempotent_and_refuses_different_bytes(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    assert store.write_once("a/b.json", b"x")
    assert not store.write_once("a/b.json", b"x")
    with pytest.raises(WriteOnceError, match="different content"):
        store.write_once("a/b.json", b"y")
    assert (tmp_path / "a/b.json").read_bytes() == b"x"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]  # no temp files left


def test_paths_cannot_escape_the_store(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "root")
    for bad in ("../x", "/etc/passwd", "a/../../x"):
        with pytest.raises(StoreError, match="escapes"):
            store.write_once(bad, b"x")


def test_private_state_is_owner_only(tmp_path: Path) -> None:
    state = PartyState(tmp_path / "state")
    state.create_identity()
    mode = stat.S_IMODE(os.stat(tmp_path / "state" / "identity.json").st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700


def _signed(tmp_path: Path) -> tuple[Workspace, Identity]:
    ws = Workspace(LocalStorage(tmp_path / "ws"))
    me = Identity.generate()
    ws.put(
        "rounds/0001/x",
        kind="result",
        federation="f",
        round=1,
        author="coordinator",
        identity=me,
        body={"n": 1},
        attachments={"blob.bin": b"\x00\x01"},
    )
    return ws, me


def test_a_signed_artifact_reads_back(tmp_path: Path) -> None:
    ws, me = _signed(tmp_path)
    art = ws.get(
        "rounds/0001/x",
        kind="result",
        federation="f",
        round=1,
        author="coordinator",
        key=me.public,
        attachments=("blob.bin",),
    )
    assert art.body == {"n": 1} and art.attachments["blob.bin"] == b"\x00\x01"


@pytest.mark.parametrize(
    ("expect", "message"),
    [
        ({"kind": "model"}, "kind"),
        ({"round": 2}, "round"),
        ({"federation": "g"}, "federation"),
        ({"author": "site:va"}, "author"),
    ],
)
def test_a_misplaced_or_replayed_artifact_is_refused(
    tmp_path: Path, expect: dict, message: str
) -> None:
    ws, me = _signed(tmp_path)
    args = {"kind": "result", "federation": "f", "round": 1, "author": "coordinator", **expect}
    with pytest.raises(IntegrityError, match=message):
        ws.get("rounds/0001/x", key=me.public, **args)


def test_a_forged_or_tampered_artifact_is_refused(tmp_path: Path) -> None:
    ws, me = _signed(tmp_path)
    path = tmp_path / "ws/rounds/0001/x.json"
    doc = json.loads(path.read_text())
    doc["body"]["n"] = 2
    path.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="does not verify"):
        ws.get(
            "rounds/0001/x",
            kind="result",
            federation="f",
            round=1,
            author="coordinator",
            key=me.public,
        )
    other = Identity.generate()
    raw = env.seal(
        kind="result", federation="f", round=1, author="coordinator", body={"n": 1}, identity=other
    )
    path.write_bytes(raw)  # well-formed, but signed by someone else
    with pytest.raises(IntegrityError, match="does not verify"):
        ws.get(
            "rounds/0001/x",
            kind="result",
            federation="f",
            round=1,
            author="coordinator",
            key=me.public,
        )


def test_a_tampered_or_missing_attachment_is_refused(tmp_path: Path) -> None:
    ws, me = _signed(tmp_path)
    blob = tmp_path / "ws/rounds/0001/x.blob.bin"
    blob.write_bytes(b"\x00\x02")
    args = {"kind": "result", "federation": "f", "round": 1, "author": "coordinator"}
    with pytest.raises(IntegrityError, match="signed hash"):
        ws.get("rounds/0001/x", key=me.public, attachments=("blob.bin",), **args)
    blob.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        ws.get("rounds/0001/x", key=me.public, attachments=("blob.bin",), **args)


def test_garbage_is_not_a_signed_file(tmp_path: Path) -> None:
    ws, me = _signed(tmp_path)
    (tmp_path / "ws/rounds/0001/x.json").write_bytes(b"\x80not json")
    with pytest.raises(IntegrityError, match="not a fedrema signed file"):
        ws.get(
            "rounds/0001/x",
            kind="result",
            federation="f",
            round=1,
            author="coordinator",
            key=me.public,
        )


def test_holding_a_state_folder_clears_what_a_killed_write_left(tmp_path: Path) -> None:
    state = PartyState(tmp_path / "state")
    state.write_json("site.json", {"name": "va"})
    rounds = tmp_path / "state" / "rounds" / "0001"
    rounds.mkdir(parents=True)
    stale = rounds / ".update.safetensors.0123456789ab.tmp"
    fresh = tmp_path / "state" / ".site.json.abcdefabcdef.tmp"  # a write in flight
    other = rounds / ".notes.tmp"  # not a name our writes make
    for p in (stale, fresh, other):
        p.write_bytes(b"partial")
    old = os.stat(stale).st_mtime - 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    outside = tmp_path / "outside"
    outside.mkdir()
    planted = outside / ".x.0123456789ab.tmp"
    planted.write_bytes(b"not ours")
    os.utime(planted, (old, old))
    (tmp_path / "state" / "linked").symlink_to(outside)  # never followed
    with state.exclusive():
        pass
    assert not stale.exists()
    assert fresh.exists() and other.exists() and planted.exists()
    assert state.read_json("site.json") == {"name": "va"}
