"""HAZMAT: the mask PRG, AES-256-CTR keystream read as uniform unsigned integers.

Bonawitz et al. 2017 §3 expand every mask seed with a PRG; like Google fcp
(``aes_ctr_prng``) we use AES-256-CTR. The IV is all zeros, which is safe only because
every key is used for exactly one vector: keys come from :func:`crypto.hazmat.kdf.derive_key`
bound to (session, purpose, pair), and a fresh session exists per round. Never call
:func:`mask` twice with the same key for different purposes.

Because the modulus is a power of two (2^24, 2^32 or 2^64), raw keystream words are already
uniform: no rejection sampling is needed (contrast Flower's 32-bit-seeded Mersenne Twister).
A 2^24 ring is held in 32-bit words: a mask word is the low 24 bits of a 32-bit keystream
word (uniform mod 2^24, because 2^24 divides 2^32), and since 2^24 divides 2^32, sums taken
mod 2^32 and then :func:`reduce` d are the sums mod 2^24.
The keystream is produced in cache-sized chunks straight into the output array, which keeps
the throughput close to ``openssl speed -evp aes-256-ctr``.

:class:`MaskStream` reads one mask front to back in pieces of any length, so a caller can
add many masks to a long vector one cache-sized chunk at a time without ever holding a
whole mask: CTR mode makes the pieces concatenate to exactly :func:`mask`'s output.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from crypto.errors import ParameterError

__all__ = ["CHUNK_BYTES", "MaskStream", "UIntArray", "mask", "reduce", "uint_dtype"]

#: An unsigned-integer numpy array (uint32 or uint64).
UIntArray = npt.NDArray[np.unsignedinteger[Any]]

#: Keystream is produced this many bytes at a time (stays in L2; measured best on x86-64).
CHUNK_BYTES = 1 << 18
_ZEROS = bytes(CHUNK_BYTES)
_ZERO_IV = bytes(16)


def uint_dtype(modulus_bits: int) -> np.dtype[Any]:
    """The little-endian unsigned dtype holding words mod ``2**modulus_bits`` (24, 32 or 64;
    a 24-bit word lives in a uint32 whose top byte is zero)."""
    if modulus_bits in (24, 32):
        return np.dtype("<u4")
    if modulus_bits == 64:
        return np.dtype("<u8")
    raise ParameterError("modulus_bits must be 24, 32 or 64")


def reduce(words: UIntArray, modulus_bits: int) -> UIntArray:
    """Reduce words mod ``2**modulus_bits`` in place (a no-op unless the ring is narrower
    than its dtype, i.e. 2^24 in uint32), and return them.

    >>> reduce(np.array([0x12345678], dtype=np.uint32), 24).tolist() == [0x345678]
    True
    """
    if modulus_bits < words.dtype.itemsize * 8:
        np.bitwise_and(words, words.dtype.type((1 << modulus_bits) - 1), out=words)
    return words


class MaskStream:
    """The words of ``mask(key, ...)`` in order, delivered piece by piece into caller buffers.

    Word ``i`` of the stream is word ``i`` of :func:`mask` whatever the piece lengths, so
    chunked masking equals unchunked masking bit for bit. The stream holds one AES context
    (a few hundred bytes), not the mask.

    >>> s = MaskStream(bytes(32), 32)
    >>> [int(w) for piece in (s.take(1), s.take(1)) for w in piece]
    [2025887196, 2307473570]
    """

    __slots__ = ("_encryptor", "dtype", "modulus_bits")

    def __init__(self, key: bytes, modulus_bits: int) -> None:
        if len(key) != 32:
            raise ParameterError("mask key must be 32 bytes")
        self.dtype = uint_dtype(modulus_bits)
        self.modulus_bits = modulus_bits
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(_ZERO_IV)).encryptor()

    def fill(self, out: UIntArray) -> UIntArray:
        """Write the next ``len(out)`` words into ``out`` (contiguous, of :attr:`dtype`)."""
        if out.dtype != self.dtype or out.ndim != 1 or not out.flags.c_contiguous:
            raise ParameterError(f"out must be a contiguous 1-D {self.dtype} array")
        view = out.data.cast("B")
        total = len(view)
        for offset in range(0, total, CHUNK_BYTES):
            size = min(CHUNK_BYTES, total - offset)
            source = _ZEROS if size == CHUNK_BYTES else _ZEROS[:size]
            self._encryptor.update_into(source, view[offset : offset + size])
        return reduce(out, self.modulus_bits)

    def take(self, count: int) -> UIntArray:
        """The next ``count`` words as a new array."""
        if count < 0:
            raise ParameterError("count must be non-negative")
        return self.fill(np.empty(count, dtype=self.dtype))


def mask(key: bytes, dim: int, modulus_bits: int, *, out: UIntArray | None = None) -> UIntArray:
    """Return ``dim`` uniform words mod ``2**modulus_bits``: AES-256-CTR(key, IV=0) of zeros.

    Word ``i`` is bytes ``[i*w, (i+1)*w)`` of the keystream read little-endian (``w`` = 4 or
    8; for 2^24 its low 24 bits), so the output equals ``openssl enc -aes-256-ctr -K <key>
    -iv 00..00`` over zero bytes.
    Pass ``out`` (a C-contiguous array of the right dtype and length) to reuse a buffer
    across masks instead of allocating one each time.

    >>> mask(bytes(32), 2, 32).tolist()
    [2025887196, 2307473570]
    """
    if dim < 0:
        raise ParameterError("dim must be non-negative")
    stream = MaskStream(key, modulus_bits)
    if out is None:
        out = np.empty(dim, dtype=stream.dtype)
    elif out.dtype != stream.dtype or out.shape != (dim,) or not out.flags.c_contiguous:
        raise ParameterError(f"out must be a contiguous {stream.dtype} array of length {dim}")
    return stream.fill(out)
