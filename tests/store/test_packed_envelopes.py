"""Round files stored gzip'd (`envelope.pack` / `unpack`): what a reader accepts and refuses,
and that the workspace packs round artifacts and leaves the bootstrap files plain."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrema_cli.errors import IntegrityError
from fedrema_cli.identity import Identity
from fedrema_cli.store import envelope as env
from fedrema_cli.store.storage import open_storage
from fedrema_cli.store.workspace import Workspace

RAW = b'{"body":{"round":1},"header":{"kind":"result"},"signature":"' + b"A" * 88 + b'"}\n'
LIMIT = 4096


def test_packing_is_deterministic_lossless_and_smaller() -> None:
    packed = env.pack(RAW)
    assert packed.startswith(env.GZIP_MAGIC) and packed == env.pack(RAW)  # write-once safe
    assert len(packed) < len(RAW)
    assert env.unpack(packed, where="f", limit=LIMIT) == RAW
    assert gzip.decompress(packed) == RAW  # `zcat FILE` reads it
    assert env.unpack(RAW, where="f", limit=LIMIT) == RAW  # plain files pass unchanged


@pytest.mark.parametrize(
    ("stored", "message"),
    [
        (env.pack(b" " * (LIMIT + 1)), "unpacks to more than 4096 bytes"),
        (env.pack(b"x" * (64 << 20)), "unpacks to more than 4096 bytes"),  # a gzip bomb
        (env.pack(RAW)[:-6], "truncated or trailing"),
        (env.pack(RAW) + b"junk", "truncated or trailing"),
        (env.pack(RAW) + env.pack(RAW), "truncated or trailing"),  # a second member
        (env.GZIP_MAGIC + b"\x08\x00not deflate at all", "bad gzip"),
    ],
    ids=["over-limit", "bomb", "truncated", "trailing", "two-members", "corrupt"],
)
def test_a_packed_file_that_is_not_one_envelope_is_one_integrity_error(
    stored: bytes, message: str
) -> None:
    with pytest.raises(IntegrityError, match=message) as err:
        env.unpack(stored, where="rounds/0001/result.json", limit=LIMIT)
    assert "rounds/0001/result.json" in str(err.value)


def test_a_flipped_bit_in_a_packed_file_never_unpacks_to_other_bytes() -> None:
    packed = env.pack(RAW)
    for i in range(10, len(packed)):  # past the header: the deflate stream and the CRC
        for bit in (1, 16, 128):
            bad = packed[:i] + bytes([packed[i] ^ bit]) + packed[i + 1 :]
            try:
                out = env.unpack(bad, where="f", limit=LIMIT)
            except IntegrityError:
                continue
            assert out == RAW, (i, bit)  # only an unused bit may flip without notice


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_after_the_magic_unpack_within_the_limit_or_are_refused(tail: bytes) -> None:
    try:
        out = env.unpack(env.GZIP_MAGIC + tail, where="f", limit=LIMIT)
    except IntegrityError:
        return
    assert len(out) <= LIMIT


def test_the_workspace_packs_round_files_and_reads_both(tmp_path: Path) -> None:
    ws = Workspace(open_storage(str(tmp_path)))
    me = Identity.generate()
    common = {"federation": "f", "author": "coordinator", "identity": me}
    ws.put("rounds/0001/result", kind="result", round=1, body={"a": 1}, packed=True, **common)
    ws.put("roster", kind="roster", round=0, body={"b": 2}, **common)
    assert (tmp_path / "rounds/0001/result.json").read_bytes().startswith(env.GZIP_MAGIC)
    assert (tmp_path / "roster.json").read_bytes().startswith(b"{")
    for base, kind, r in (("rounds/0001/result", "result", 1), ("roster", "roster", 0)):
        art = ws.get(base, kind=kind, federation="f", round=r, author="coordinator", key=me.public)
        assert art.body in ({"a": 1}, {"b": 2})
    # a re-run writes the same bytes: write-once sees the identical artifact
    again = ws.put(
        "rounds/0001/result", kind="result", round=1, body={"a": 1}, packed=True, **common
    )
    assert again is False
