"""HAZMAT: HKDF-SHA256 (RFC 5869) with an unambiguous, structured ``info``.

Every symmetric key in fedrema's secure aggregation is derived here, bound to a purpose,
the session id (which itself binds federation, round, roster and all advertised keys) and
the ordered party ids. The ``info`` is a sequence of length-prefixed fields
(:func:`encode_fields`), so no two different (purpose, session, parties) tuples can give the
same ``info`` — plain concatenation such as ``sid + b"pair" + ids`` would allow that.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto.errors import ParameterError

__all__ = ["KDF_LABEL", "KEY_LEN", "derive_key", "encode_fields", "hkdf_sha256", "u32"]

#: Domain-separation label, the first field of every ``info`` built by :func:`derive_key`.
KDF_LABEL = b"fedrema-secagg/1 hkdf-sha256"
KEY_LEN = 32
_MAX_U32 = 2**32 - 1


def u32(value: int) -> bytes:
    """Encode a non-negative integer below 2^32 as 4 big-endian bytes."""
    if not 0 <= value <= _MAX_U32:
        raise ParameterError(f"{value} does not fit in an unsigned 32-bit field")
    return value.to_bytes(4, "big")


def encode_fields(fields: Iterable[bytes]) -> bytes:
    """Concatenate ``fields``, each preceded by its 4-byte big-endian length.

    The encoding is injective (prefix-free per field, and the field count is implied by
    the total length), which is what makes it safe as HKDF ``info`` or AEAD associated data.

    >>> encode_fields([b"ab", b""]).hex()
    '00000002616200000000'
    """
    out = bytearray()
    for field in fields:
        if not isinstance(field, bytes | bytearray):
            raise ParameterError("fields must be bytes")
        out += u32(len(field))
        out += field
    return bytes(out)


def hkdf_sha256(ikm: bytes, *, salt: bytes | None, info: bytes, length: int) -> bytes:
    """Plain RFC 5869 HKDF-SHA256 (extract then expand); exposed for the RFC test vectors."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def derive_key(
    ikm: bytes,
    *,
    purpose: bytes,
    session_id: bytes,
    parties: Sequence[int] = (),
    length: int = KEY_LEN,
) -> bytes:
    """Derive a ``length``-byte key from ``ikm`` bound to purpose, session and ordered parties.

    ``info = encode_fields([KDF_LABEL, purpose, session_id, u32(#parties), u32(p1), ...])``.
    The salt is left empty (RFC 5869 §3.1: optional); all context lives in ``info``.

    >>> derive_key(bytes(32), purpose=b"self", session_id=bytes(32)).hex()[:16]
    'ce3e24f490ece9a7'
    """
    if not purpose:
        raise ParameterError("a key needs a purpose")
    if len(session_id) != 32:
        raise ParameterError("session id must be 32 bytes")
    info = encode_fields(
        [KDF_LABEL, purpose, session_id, u32(len(parties)), *(u32(p) for p in parties)]
    )
    return hkdf_sha256(ikm, salt=None, info=info, length=length)
