"""Wire messages: canonical round trips, strict parsing, efficient vector framing."""

from __future__ import annotations

import contextlib
import json
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from secagg_harness import make_ctx, random_inputs, run_round

from crypto.errors import MalformedMessage
from crypto.hazmat.shamir import Share
from crypto.secagg import (
    SUITE,
    KeyAdvert,
    KeyRoster,
    MaskedInput,
    MaskingRoster,
    ShareKeysMsg,
    UnmaskRequest,
    UnmaskShares,
    parse_message,
)

CTX = make_ctx(4, 3, 6)
ROUND = run_round(CTX, random_inputs(CTX, 0), {4: "after_share_keys"})
SAMPLES = [
    ROUND.key_roster.adverts[0],
    ROUND.key_roster,
    ROUND.share_msgs[0],
    ROUND.masking_roster,
    ROUND.masked_inputs[0],
    ROUND.request,
    ROUND.answers[0],
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_is_canonical(msg) -> None:  # type: ignore[no-untyped-def]
    raw = msg.to_bytes()
    assert type(msg).from_bytes(raw) == msg
    assert parse_message(raw) == msg
    assert type(msg).from_bytes(raw).to_bytes() == raw


@pytest.mark.parametrize("msg", [m for m in SAMPLES if not isinstance(m, MaskedInput)])
def test_header_carries_suite_and_type(msg) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads(msg.to_bytes())
    assert doc["suite"] == SUITE
    assert doc["type"] == msg.TYPE


def _mutations(raw: bytes) -> list[bytes]:
    doc = json.loads(raw)
    pretty = json.dumps(doc, indent=1).encode()
    wrong_suite = json.dumps({**doc, "suite": "fedrema-secagg/0"}, sort_keys=True)
    extra = json.dumps({**doc, "extra": 1}, sort_keys=True, separators=(",", ":"))
    missing = {k: v for k, v in doc.items() if k != "round"}
    return [
        pretty,
        wrong_suite.replace(", ", ",").replace(": ", ":").encode(),
        extra.encode(),
        json.dumps(missing, sort_keys=True, separators=(",", ":")).encode(),
        raw[:-1],
        b"[]",
        b"\xff",
        raw.replace(b'"round":1', b'"round":true'),
        raw.replace(b'"round":1', b'"round":1.0'),
        raw.replace(b'"round":1', b'"round":-1'),
    ]


@pytest.mark.parametrize("msg", [m for m in SAMPLES if not isinstance(m, MaskedInput)])
def test_non_canonical_or_altered_encodings_are_refused(msg) -> None:  # type: ignore[no-untyped-def]
    for bad in _mutations(msg.to_bytes()):
        with pytest.raises(MalformedMessage):
            type(msg).from_bytes(bad)


def test_a_message_of_another_type_is_refused() -> None:
    with pytest.raises(MalformedMessage):
        KeyRoster.from_bytes(ROUND.key_roster.adverts[0].to_bytes())
    with pytest.raises(MalformedMessage):
        parse_message(b'{"type":"Nope"}')


def test_bad_base64_and_lengths() -> None:
    raw = ROUND.key_roster.adverts[0].to_bytes().decode()
    doc = json.loads(raw)
    for field, value in [("c_pk", "!!!!"), ("c_pk", "AAAA"), ("s_pk", doc["s_pk"][:-4])]:
        bad = json.dumps({**doc, field: value}, sort_keys=True, separators=(",", ":"))
        with pytest.raises(MalformedMessage):
            KeyAdvert.from_bytes(bad.encode())


def test_constructor_shape_checks() -> None:
    with pytest.raises(MalformedMessage):
        KeyAdvert(0, 1, bytes(32), bytes(32))
    with pytest.raises(MalformedMessage):
        KeyAdvert(1, 1, bytes(31), bytes(32))
    with pytest.raises(MalformedMessage):
        KeyRoster(1, (KeyAdvert(2, 1, bytes(32), bytes(32)), KeyAdvert(1, 1, b"1" * 32, bytes(32))))
    with pytest.raises(MalformedMessage):
        KeyRoster(1, (KeyAdvert(1, 2, bytes(32), bytes(32)),))
    with pytest.raises(MalformedMessage):
        MaskingRoster(1, (1, 2), {1: bytes(32)})
    with pytest.raises(MalformedMessage):
        UnmaskRequest(1, (2, 1), ())
    with pytest.raises(MalformedMessage):
        UnmaskShares(1, 1, {2: Share(2, 5)}, {})  # a share not at the sender's index
    with pytest.raises(MalformedMessage):
        UnmaskShares(1, 1, {2: Share(1, 5)}, {2: Share(1, 6)})  # both secrets of peer 2
    with pytest.raises(MalformedMessage):
        ShareKeysMsg(1, 1, {2: b"x"}, bytes(31))
    with pytest.raises(MalformedMessage):
        MaskedInput(1, 1, np.zeros(3, dtype=np.int32))
    with pytest.raises(MalformedMessage):
        MaskedInput(1, 1, np.zeros((2, 2), dtype=np.uint32))


def test_masked_input_framing_and_payload_checks() -> None:
    msg = ROUND.masked_inputs[0]
    raw = msg.to_bytes()
    header, payload = raw.split(b"\n", 1)
    assert json.loads(header)["length"] == CTX.params.dim
    assert payload == msg.vector.astype("<u4").tobytes()
    for bad in [raw[:-1], raw + b"\x00", header, header + b"\n" + payload[:-4]]:
        with pytest.raises(MalformedMessage):
            MaskedInput.from_bytes(bad)
    with pytest.raises(MalformedMessage):
        MaskedInput.from_bytes(header.replace(b"uint32", b"int32") + b"\n" + payload)


def test_masked_input_of_a_million_words_is_raw_binary() -> None:
    vector = np.arange(1_000_000, dtype=np.uint64)
    start = time.perf_counter()
    raw = MaskedInput(3, 7, vector).to_bytes()
    back = MaskedInput.from_bytes(raw)
    elapsed = time.perf_counter() - start
    assert len(raw) < 8_000_000 + 200
    np.testing.assert_array_equal(back.vector, vector)
    assert elapsed < 1.0


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_malformed(data: bytes) -> None:
    with contextlib.suppress(MalformedMessage):
        parse_message(data)


@settings(deadline=None, max_examples=200)
@given(st.sampled_from(SAMPLES), st.data())
def test_single_byte_corruptions_never_crash(msg, data) -> None:  # type: ignore[no-untyped-def]
    raw = bytearray(msg.to_bytes())
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(MalformedMessage):
        parse_message(bytes(raw))


def _with(msg, **fields: object) -> bytes:  # type: ignore[no-untyped-def]
    """``msg``'s canonical JSON with some fields replaced by raw JSON text."""
    doc = json.loads(msg.to_bytes())
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for key, raw in fields.items():
        text = text.replace(json.dumps({key: doc[key]})[1:-1].replace(": ", ":"), f'"{key}":{raw}')
    return text.encode()


@pytest.mark.parametrize(
    "msg", [m for m in SAMPLES if not isinstance(m, MaskedInput)], ids=lambda m: type(m).__name__
)
@pytest.mark.parametrize(
    "raw",
    ["1" * 5000, "1e999", "-1e999", '"\\ud800"', "[1]", "{}"],
    ids=["huge-int", "inf", "-inf", "lone-surrogate", "list", "object"],
)
def test_hostile_json_values_only_ever_raise_malformed(msg, raw: str) -> None:  # type: ignore[no-untyped-def]
    for key in ("round", "type"):
        bad = _with(msg, **{key: raw})
        assert bad != msg.to_bytes()
        with pytest.raises(MalformedMessage):
            parse_message(bad)
        with pytest.raises(MalformedMessage):
            type(msg).from_bytes(bad)


def test_a_party_id_of_thousands_of_digits_is_malformed() -> None:
    doc = json.loads(ROUND.answers[0].to_bytes())
    share = next(iter(doc["self_seed_shares"].values()))
    doc["self_seed_shares"] = {"9" * 5000: share}
    bad = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(MalformedMessage):
        UnmaskShares.from_bytes(bad)
