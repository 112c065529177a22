"""X25519 agreement and Ed25519 signatures over raw 32-byte keys."""

from __future__ import annotations

import pytest
from secagg_harness import DeterministicRandom

from crypto.errors import IntegrityError, ParameterError
from crypto.hazmat import ed25519, x25519


def test_x25519_agreement_is_symmetric_and_replayable() -> None:
    a = x25519.generate_private_key(DeterministicRandom(1))
    b = x25519.generate_private_key(DeterministicRandom(2))
    assert x25519.exchange(a, x25519.public_key(b)) == x25519.exchange(b, x25519.public_key(a))
    assert a == x25519.generate_private_key(DeterministicRandom(1))


def test_x25519_rejects_small_order_and_bad_lengths() -> None:
    a = x25519.generate_private_key()
    with pytest.raises(ParameterError):
        x25519.exchange(a, bytes(32))  # the all-zero (small-order) point
    with pytest.raises(ParameterError):
        x25519.exchange(a, bytes(31))
    with pytest.raises(ParameterError):
        x25519.public_key(bytes(16))


def test_ed25519_sign_and_verify_raises() -> None:
    sk = ed25519.generate_private_key()
    pk = ed25519.public_key(sk)
    sig = ed25519.sign(sk, b"message")
    assert len(sig) == ed25519.SIGNATURE_LEN
    assert ed25519.verify(pk, sig, b"message") is None
    with pytest.raises(IntegrityError):
        ed25519.verify(pk, sig, b"messagE")
    with pytest.raises(IntegrityError):
        ed25519.verify(pk, bytes(64), b"message")
    with pytest.raises(IntegrityError):
        ed25519.verify(ed25519.public_key(ed25519.generate_private_key()), sig, b"message")
    with pytest.raises(IntegrityError):
        ed25519.verify(pk[:31], sig, b"message")


def test_ed25519_remembers_only_successes_and_only_for_the_same_bytes() -> None:
    sk = ed25519.generate_private_key(DeterministicRandom(b"memo"))
    pk = ed25519.public_key(sk)
    sig = ed25519.sign(sk, b"ledger entry 1")
    for _ in range(2):  # the second check is answered from memory, with the same result
        ed25519.verify(pk, sig, b"ledger entry 1")
    for bad in (
        (pk, sig, b"ledger entry 2"),  # another message under a remembered signature
        (pk, bytes(64), b"ledger entry 1"),  # another signature
        (ed25519.public_key(bytes(32)), sig, b"ledger entry 1"),  # another key
    ):
        for _ in range(2):  # a failure is never remembered as anything else
            with pytest.raises(IntegrityError):
                ed25519.verify(*bad)
