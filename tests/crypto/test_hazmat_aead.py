"""AES-256-GCM: round trip, tampering anywhere, wrong context, injected nonce randomness."""

from __future__ import annotations

import pytest
from secagg_harness import DeterministicRandom

from crypto.errors import DecryptionError, ParameterError
from crypto.hazmat import aead

KEY = bytes(range(32))


def test_round_trip_and_layout() -> None:
    blob = aead.encrypt(KEY, b"payload", aad=b"ctx")
    assert len(blob) == len(b"payload") + aead.OVERHEAD
    assert aead.decrypt(KEY, blob, aad=b"ctx") == b"payload"


@pytest.mark.parametrize("position", [0, aead.NONCE_LEN, aead.NONCE_LEN + 3, -1])
def test_any_flipped_bit_is_rejected(position: int) -> None:
    blob = bytearray(aead.encrypt(KEY, b"payload", aad=b"ctx"))
    blob[position] ^= 0x01
    with pytest.raises(DecryptionError):
        aead.decrypt(KEY, bytes(blob), aad=b"ctx")


def test_wrong_aad_wrong_key_truncated() -> None:
    blob = aead.encrypt(KEY, b"payload", aad=b"ctx")
    with pytest.raises(DecryptionError):
        aead.decrypt(KEY, blob, aad=b"other")
    with pytest.raises(DecryptionError):
        aead.decrypt(bytes(32), blob, aad=b"ctx")
    with pytest.raises(DecryptionError):
        aead.decrypt(KEY, blob[: aead.OVERHEAD - 1], aad=b"ctx")


def test_associated_data_is_mandatory() -> None:
    with pytest.raises(ParameterError):
        aead.encrypt(KEY, b"x", aad=b"")
    with pytest.raises(ParameterError):
        aead.decrypt(KEY, bytes(40), aad=b"")
    with pytest.raises(ParameterError):
        aead.encrypt(KEY[:16], b"x", aad=b"a")


def test_nonce_comes_from_the_injected_source() -> None:
    a = aead.encrypt(KEY, b"x", aad=b"a", rng=DeterministicRandom(1))
    b = aead.encrypt(KEY, b"x", aad=b"a", rng=DeterministicRandom(1))
    c = aead.encrypt(KEY, b"x", aad=b"a", rng=DeterministicRandom(2))
    assert a == b != c
    assert a[: aead.NONCE_LEN] == DeterministicRandom(1)(aead.NONCE_LEN)


def test_broken_randomness_source_is_refused() -> None:
    with pytest.raises(ParameterError):
        aead.encrypt(KEY, b"x", aad=b"a", rng=lambda n: bytes(n - 1))
