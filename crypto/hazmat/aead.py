"""HAZMAT: AES-256-GCM with a random 96-bit nonce and mandatory associated data.

Used for the Shamir shares a site sends to each peer in Bonawitz et al. 2017 Round 1
(ShareKeys). The associated data must carry the context (session id, sender, recipient),
so a ciphertext replayed into another session, round or pair fails authentication.
The nonce comes from the injected :data:`~crypto.hazmat.randomness.RandomSource`; keys are
single-purpose (derived per session and ordered pair), so random nonces never collide in
practice (NIST SP 800-38D §8.3 allows 2^32 random-nonce messages per key).

Wire format: ``nonce (12 bytes) || ciphertext || tag (16 bytes)``.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from crypto.errors import DecryptionError, ParameterError
from crypto.hazmat.randomness import RandomSource, random_bytes

__all__ = ["KEY_LEN", "NONCE_LEN", "OVERHEAD", "TAG_LEN", "decrypt", "encrypt"]

KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
#: Bytes added to a plaintext by :func:`encrypt`.
OVERHEAD = NONCE_LEN + TAG_LEN


def _cipher(key: bytes) -> AESGCM:
    if len(key) != KEY_LEN:
        raise ParameterError("AES-256-GCM key must be 32 bytes")
    return AESGCM(key)


def _check_aad(aad: bytes) -> None:
    if not isinstance(aad, bytes) or not aad:
        raise ParameterError("associated data is mandatory and must be non-empty bytes")


def encrypt(key: bytes, plaintext: bytes, *, aad: bytes, rng: RandomSource = os.urandom) -> bytes:
    """Encrypt and authenticate ``plaintext`` and ``aad``; returns nonce || ciphertext || tag.

    >>> blob = encrypt(bytes(32), b"share", aad=b"ctx")
    >>> decrypt(bytes(32), blob, aad=b"ctx")
    b'share'
    """
    _check_aad(aad)
    nonce = random_bytes(rng, NONCE_LEN)
    return nonce + _cipher(key).encrypt(nonce, plaintext, aad)


def decrypt(key: bytes, blob: bytes, *, aad: bytes) -> bytes:
    """Verify and decrypt a blob from :func:`encrypt`; raises :class:`DecryptionError` if not."""
    _check_aad(aad)
    cipher = _cipher(key)
    if len(blob) < OVERHEAD:
        raise DecryptionError("ciphertext too short")
    try:
        return cipher.decrypt(blob[:NONCE_LEN], blob[NONCE_LEN:], aad)
    except InvalidTag:
        raise DecryptionError(
            "authentication failed (tampered, wrong key or wrong context)"
        ) from None
