"""HPKE sealing of a head to the coordinator: round trip and every way it must fail."""

from __future__ import annotations

import dataclasses

import pytest

from crypto.errors import DecryptionError, ParameterError
from crypto.hazmat import x25519
from crypto.seal import SEAL_MAGIC, SealContext, open_sealed, seal

CTX = SealContext("fed", 4, "site-a", "coordinator", "classifier-head")
SK = x25519.generate_private_key()
PK = x25519.public_key(SK)


def test_round_trip_and_fresh_randomness() -> None:
    a, b = seal(b"head bytes", PK, CTX), seal(b"head bytes", PK, CTX)
    assert a != b
    assert a.startswith(SEAL_MAGIC)
    assert open_sealed(a, SK, CTX) == open_sealed(b, SK, CTX) == b"head bytes"


def test_wrong_recipient_key() -> None:
    with pytest.raises(DecryptionError):
        open_sealed(seal(b"head", PK, CTX), x25519.generate_private_key(), CTX)


@pytest.mark.parametrize("position", [len(SEAL_MAGIC), len(SEAL_MAGIC) + 40, -1])
def test_tampered_blob(position: int) -> None:
    blob = bytearray(seal(b"head", PK, CTX))
    blob[position] ^= 0x80
    with pytest.raises(DecryptionError):
        open_sealed(bytes(blob), SK, CTX)


@pytest.mark.parametrize(
    "change",
    [
        {"federation_id": "fed2"},
        {"round": 5},
        {"sender": "site-b"},
        {"recipient": "someone"},
        {"purpose": "other"},
    ],
)
def test_any_context_change_fails(change: dict) -> None:
    blob = seal(b"head", PK, CTX)
    with pytest.raises(DecryptionError):
        open_sealed(blob, SK, dataclasses.replace(CTX, **change))


def test_not_a_sealed_blob_and_bad_keys() -> None:
    with pytest.raises(DecryptionError):
        open_sealed(b"garbage", SK, CTX)
    with pytest.raises(DecryptionError):
        open_sealed(SEAL_MAGIC, SK, CTX)
    with pytest.raises(ParameterError):
        seal(b"head", PK[:31], CTX)
    with pytest.raises(ParameterError):
        seal(b"head", bytes(32), CTX)  # small-order point
