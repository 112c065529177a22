"""Key, mask and commitment derivations shared by the client and the server.

One place defines how each secret is turned into a key or a mask, so the client (which adds
masks) and the server (which removes them) cannot drift apart. References are to
Bonawitz et al. 2017 (eprint 2017/281), §4 "Practical Secure Aggregation" / Figure 4.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

import numpy as np

from crypto.errors import ParameterError
from crypto.hazmat import aead, kdf, prg, x25519
from crypto.hazmat.shamir import SHARE_LEN, Share
from crypto.secagg.params import SecAggParams

__all__ = [
    "SHARE_CIPHERTEXT_LEN",
    "SHARE_PLAINTEXT_LEN",
    "add_pair_mask",
    "apply_masks",
    "commitment",
    "commitment_matches",
    "pack_shares",
    "pair_mask",
    "pair_mask_key",
    "pair_sign",
    "self_mask",
    "self_mask_key",
    "share_aad",
    "share_key",
    "unpack_shares",
]

_COMMIT_LABEL = b"fedrema-secagg/1 commitment"
_AAD_LABEL = b"fedrema-secagg/1 share-ciphertext"
#: Plaintext of one share ciphertext: u32 sender, u32 recipient, b-share, s_sk-share.
SHARE_PLAINTEXT_LEN = 8 + 2 * SHARE_LEN
#: Exact length of one share ciphertext on the wire.
SHARE_CIPHERTEXT_LEN = SHARE_PLAINTEXT_LEN + aead.OVERHEAD


def share_key(own_c_sk: bytes, peer_c_pk: bytes, sid: bytes, sender: int, recipient: int) -> bytes:
    """AES-GCM key for shares sent ``sender -> recipient``: HKDF(X25519(c), sid, "enc", u, v).

    The ordered pair is in ``info``, so the two directions of one pair use different keys.
    Raises :class:`ParameterError` if the peer key is invalid (small order).
    """
    secret = x25519.exchange(own_c_sk, peer_c_pk)
    return kdf.derive_key(secret, purpose=b"enc", session_id=sid, parties=(sender, recipient))


def share_aad(sid: bytes, sender: int, recipient: int) -> bytes:
    """Associated data of a share ciphertext: binds session and direction."""
    return kdf.encode_fields([_AAD_LABEL, sid, kdf.u32(sender), kdf.u32(recipient)])


def pack_shares(sender: int, recipient: int, b_share: Share, sk_share: Share) -> bytes:
    """The share plaintext (u, v, share_v(b_u), share_v(s_u^SK)) of Bonawitz Round 1."""
    return kdf.u32(sender) + kdf.u32(recipient) + b_share.to_bytes() + sk_share.to_bytes()


def unpack_shares(plaintext: bytes, sender: int, recipient: int) -> tuple[Share, Share]:
    """Parse and check a share plaintext; raises :class:`ParameterError` if it does not fit."""
    if len(plaintext) != SHARE_PLAINTEXT_LEN:
        raise ParameterError("share plaintext has the wrong length")
    if plaintext[:8] != kdf.u32(sender) + kdf.u32(recipient):
        raise ParameterError("share plaintext names another sender or recipient")
    b_share = Share.from_bytes(plaintext[8 : 8 + SHARE_LEN])
    sk_share = Share.from_bytes(plaintext[8 + SHARE_LEN :])
    if b_share.x != recipient or sk_share.x != recipient:
        raise ParameterError("shares are not at the recipient's index")
    return b_share, sk_share


def commitment(sid: bytes, b_u: bytes) -> bytes:
    """SHA-256 commitment to the self-mask seed, so a reconstructed b_u can be checked."""
    return hashlib.sha256(kdf.encode_fields([_COMMIT_LABEL, sid, b_u])).digest()


def commitment_matches(sid: bytes, b_u: bytes, expected: bytes) -> bool:
    """Constant-time comparison of ``commitment(sid, b_u)`` with ``expected``."""
    return hmac.compare_digest(commitment(sid, b_u), expected)


def self_mask_key(b_u: bytes, sid: bytes) -> bytes:
    """The AES key of PRG(b_u), the self mask: HKDF(b_u, sid, "self")."""
    return kdf.derive_key(b_u, purpose=b"self", session_id=sid)


def pair_mask_key(own_s_sk: bytes, peer_s_pk: bytes, sid: bytes, u: int, v: int) -> bytes:
    """The AES key of PRG(s_{u,v}), the pair mask: HKDF(X25519(s), sid, "pair", min, max).

    Symmetric in (u, v): both ends derive the same key from the unordered pair. Raises
    :class:`ParameterError` if the peer key is invalid (small order).
    """
    secret = x25519.exchange(own_s_sk, peer_s_pk)
    return kdf.derive_key(secret, purpose=b"pair", session_id=sid, parties=(min(u, v), max(u, v)))


def pair_sign(u: int, v: int) -> int:
    """Bonawitz's Δ_{u,v}: +1 if u > v, -1 if u < v, so the two ends of a pair cancel."""
    return 1 if u > v else -1


def apply_masks(
    acc: prg.UIntArray,
    masks: Sequence[tuple[bytes, int]],
    modulus_bits: int,
    *,
    chunk_bytes: int = prg.CHUNK_BYTES,
) -> None:
    """Add ``sign * PRG(key)`` for every ``(key, sign)`` to ``acc`` in place, mod 2^k.

    Streaming: one AES context per mask is opened, then ``acc`` is walked one chunk of
    ``chunk_bytes`` at a time and every mask's next piece is added to that chunk while it
    is still in cache. At 256 KiB this runs as fast as adding whole masks one after the
    other (``benchmarks/scale.py --chunk-sweep``; smaller chunks pay per-call overhead).
    Extra memory is one chunk plus the contexts, never a whole mask; the result equals
    adding whole masks one after the other, bit for bit.
    """
    if acc.dtype != prg.uint_dtype(modulus_bits) or acc.ndim != 1 or not acc.flags.c_contiguous:
        raise ParameterError("the accumulator must be a contiguous vector of the modulus dtype")
    chunk_words = max(1, chunk_bytes // acc.itemsize)
    streams = [(prg.MaskStream(key, modulus_bits), sign) for key, sign in masks]
    scratch = np.empty(min(chunk_words, acc.shape[0]), dtype=acc.dtype)
    for start in range(0, acc.shape[0], chunk_words):
        part = acc[start : start + chunk_words]
        piece = scratch[: part.shape[0]]
        for stream, sign in streams:
            stream.fill(piece)
            if sign > 0:
                np.add(part, piece, out=part)
            else:
                np.subtract(part, piece, out=part)
    prg.reduce(acc, modulus_bits)  # sums mod 2^32 reduce to sums mod 2^24


def self_mask(
    b_u: bytes, sid: bytes, params: SecAggParams, *, out: prg.UIntArray | None = None
) -> prg.UIntArray:
    """PRG(b_u) as a whole vector (for tests and inspection; the protocol streams it)."""
    return prg.mask(self_mask_key(b_u, sid), params.dim, params.modulus_bits, out=out)


def pair_mask(
    own_s_sk: bytes,
    peer_s_pk: bytes,
    sid: bytes,
    u: int,
    v: int,
    params: SecAggParams,
    *,
    out: prg.UIntArray | None = None,
) -> prg.UIntArray:
    """PRG(s_{u,v}) as a whole vector (for tests and inspection; the protocol streams it)."""
    key = pair_mask_key(own_s_sk, peer_s_pk, sid, u, v)
    return prg.mask(key, params.dim, params.modulus_bits, out=out)


def add_pair_mask(acc: prg.UIntArray, mask: prg.UIntArray, u: int, v: int) -> None:
    """Add u's share of a whole pair mask in place: Δ_{u,v} · mask (mod 2^k)."""
    if pair_sign(u, v) > 0:
        np.add(acc, mask, out=acc)
    else:
        np.subtract(acc, mask, out=acc)
