"""HAZMAT: X25519 key agreement (RFC 7748) over raw 32-byte keys.

Each site makes two fresh key pairs per round (Bonawitz et al. 2017 Round 0): ``c`` to
agree the share-encryption keys and ``s`` to agree the pairwise mask seeds. The raw shared
secret is never used directly as a key; callers pass it through
:func:`crypto.hazmat.kdf.derive_key` (RFC 7748 §6.1 advice, and the cryptography docs').
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from crypto.errors import ParameterError
from crypto.hazmat.randomness import RandomSource, random_bytes

__all__ = ["KEY_LEN", "check_public_key", "exchange", "generate_private_key", "public_key"]

KEY_LEN = 32


def generate_private_key(rng: RandomSource = os.urandom) -> bytes:
    """Return a fresh raw private key: 32 random bytes (RFC 7748 §5 clamps them on use)."""
    return random_bytes(rng, KEY_LEN)


def _private(private_key: bytes) -> X25519PrivateKey:
    if len(private_key) != KEY_LEN:
        raise ParameterError("X25519 private key must be 32 bytes")
    return X25519PrivateKey.from_private_bytes(private_key)


def public_key(private_key: bytes) -> bytes:
    """The raw 32-byte public key of a raw private key.

    >>> len(public_key(bytes(range(32))))
    32
    """
    return _private(private_key).public_key().public_bytes_raw()


def exchange(private_key: bytes, peer_public_key: bytes) -> bytes:
    """The 32-byte X25519 shared secret; raises :class:`ParameterError` for an invalid peer key.

    A peer key of small order (which would give the all-zero secret) is rejected by the
    underlying library, so a malicious advert cannot force a known mask seed.
    """
    if len(peer_public_key) != KEY_LEN:
        raise ParameterError("X25519 public key must be 32 bytes")
    try:
        return _private(private_key).exchange(X25519PublicKey.from_public_bytes(peer_public_key))
    except ValueError as exc:
        raise ParameterError(f"X25519 exchange failed: {exc}") from None


_CHECKER = bytes(range(1, KEY_LEN + 1))  # any scalar: a small-order point gives 0 for all


def check_public_key(peer_public_key: bytes) -> None:
    """Raise :class:`ParameterError` unless ``peer_public_key`` can be agreed with.

    A point of small order gives the all-zero secret with every private key, so one exchange
    with a fixed scalar tells; a coordinator refuses such an advert before any site uses it.

    >>> check_public_key(public_key(bytes(32)))
    >>> check_public_key(bytes(32))
    Traceback (most recent call last):
    ...
    crypto.errors.ParameterError: X25519 exchange failed: Error computing shared key.
    """
    exchange(_CHECKER, peer_public_key)
