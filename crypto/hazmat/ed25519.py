"""HAZMAT: Ed25519 signatures (RFC 8032) over raw 32-byte keys.

Sites and the coordinator sign every artifact they publish (the envelope in
``docs/architecture.md``); these helpers are the primitive underneath. Following pyca's
API rule, :func:`verify` raises :class:`~crypto.errors.IntegrityError` and returns nothing:
a result that must not be ignored is never a boolean.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from crypto.errors import IntegrityError, ParameterError
from crypto.hazmat.randomness import RandomSource, random_bytes

__all__ = [
    "KEY_LEN",
    "SIGNATURE_LEN",
    "generate_private_key",
    "public_key",
    "sign",
    "verify",
]

KEY_LEN = 32
SIGNATURE_LEN = 64


def generate_private_key(rng: RandomSource = os.urandom) -> bytes:
    """Return a fresh raw 32-byte Ed25519 private key (the RFC 8032 seed)."""
    return random_bytes(rng, KEY_LEN)


def _private(private_key: bytes) -> Ed25519PrivateKey:
    if len(private_key) != KEY_LEN:
        raise ParameterError("Ed25519 private key must be 32 bytes")
    return Ed25519PrivateKey.from_private_bytes(private_key)


def public_key(private_key: bytes) -> bytes:
    """The raw 32-byte public key of a raw private key."""
    return _private(private_key).public_key().public_bytes_raw()


def sign(private_key: bytes, message: bytes) -> bytes:
    """Sign ``message``; returns a 64-byte signature.

    >>> sk = bytes(32)
    >>> verify(public_key(sk), sign(sk, b"m"), b"m")
    """
    return _private(private_key).sign(message)


#: Signatures this process has already seen verify: (key, signature, SHA-256 of the message).
#: A party re-reads the same signed files many times (its ledger before every round, the
#: results behind every round number); a success is a pure function of these bytes, so it is
#: remembered. Failures are never cached. Forging a hit needs a SHA-256 collision.
_VERIFIED: OrderedDict[tuple[bytes, bytes, bytes], None] = OrderedDict()
_VERIFIED_MAX = 1 << 16


def verify(public_key: bytes, signature: bytes, message: bytes) -> None:
    """Check ``signature`` over ``message``; raises :class:`IntegrityError` if it fails."""
    if len(public_key) != KEY_LEN:
        raise IntegrityError("Ed25519 public key must be 32 bytes")
    seen = (bytes(public_key), bytes(signature), hashlib.sha256(message).digest())
    if seen in _VERIFIED:
        _VERIFIED.move_to_end(seen)
        return
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key)
        key.verify(signature, message)
    except (InvalidSignature, ValueError):
        raise IntegrityError("signature does not verify") from None
    _VERIFIED[seen] = None
    if len(_VERIFIED) > _VERIFIED_MAX:
        _VERIFIED.popitem(last=False)
