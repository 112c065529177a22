"""Seal a small payload (e.g. a classifier head) to one recipient's X25519 public key.

A safe recipe, not hazmat: HPKE (RFC 9180) base mode with DHKEM(X25519, HKDF-SHA256),
HKDF-SHA256 and AES-256-GCM, from pyca ``cryptography``. The HPKE ``info`` binds the
federation, round, sender, recipient and purpose, so a sealed blob moved to another round,
sender, recipient or purpose fails to open. Base mode does not authenticate the sender by
itself: fedrema relies on the Ed25519-signed envelope around the blob for that, and the
sender field in ``info`` stops a valid blob from being re-labelled as someone else's.

Output: ``SEAL_MAGIC || HPKE ciphertext`` (encapsulated key, then AEAD ciphertext and tag).
The HPKE ephemeral key is drawn by OpenSSL's CSPRNG; it cannot be injected.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from crypto.errors import DecryptionError, ParameterError
from crypto.hazmat.kdf import encode_fields, u32

__all__ = ["SEAL_MAGIC", "SealContext", "open_sealed", "seal"]

#: Version and algorithm marker at the start of every sealed blob.
SEAL_MAGIC = b"fedrema-seal/1\x00"
_SUITE_LABEL = b"fedrema-seal/1 DHKEM(X25519,HKDF-SHA256) HKDF-SHA256 AES-256-GCM"
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


@dataclass(frozen=True)
class SealContext:
    """Who sealed what for whom, when: bound into the HPKE ``info``."""

    federation_id: str
    round: int
    sender: str
    recipient: str
    purpose: str

    def info(self) -> bytes:
        """Canonical, length-prefixed encoding of the context (injective)."""
        if not isinstance(self.round, int) or self.round < 0:
            raise ParameterError("round must be a non-negative integer")
        return encode_fields(
            [
                _SUITE_LABEL,
                self.federation_id.encode(),
                u32(self.round),
                self.sender.encode(),
                self.recipient.encode(),
                self.purpose.encode(),
            ]
        )


def seal(plaintext: bytes, recipient_public_key: bytes, context: SealContext) -> bytes:
    """Encrypt ``plaintext`` so only the holder of the recipient's private key can open it.

    >>> from crypto.hazmat import x25519
    >>> sk = x25519.generate_private_key()
    >>> ctx = SealContext("fed", 3, "site-a", "coordinator", "head")
    >>> open_sealed(seal(b"head", x25519.public_key(sk), ctx), sk, ctx)
    b'head'
    """
    if len(recipient_public_key) != 32:
        raise ParameterError("recipient public key must be a raw 32-byte X25519 key")
    try:
        public = X25519PublicKey.from_public_bytes(recipient_public_key)
        return SEAL_MAGIC + _SUITE.encrypt(plaintext, public, info=context.info())
    except ValueError as exc:
        raise ParameterError(f"cannot seal to this key: {exc}") from None


def open_sealed(sealed: bytes, recipient_private_key: bytes, context: SealContext) -> bytes:
    """Open a blob from :func:`seal`; raises :class:`DecryptionError` on any mismatch."""
    if len(recipient_private_key) != 32:
        raise ParameterError("recipient private key must be a raw 32-byte X25519 key")
    if not sealed.startswith(SEAL_MAGIC):
        raise DecryptionError("not a fedrema-seal/1 blob")
    private = X25519PrivateKey.from_private_bytes(recipient_private_key)
    try:
        return _SUITE.decrypt(sealed[len(SEAL_MAGIC) :], private, info=context.info())
    except (InvalidTag, ValueError):
        raise DecryptionError(
            "sealed payload does not open: tampered, wrong recipient or wrong context"
        ) from None
