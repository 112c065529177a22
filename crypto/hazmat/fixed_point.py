"""HAZMAT: fixed-point encoding of float vectors into Z_{2^k} for secure aggregation.

SecAgg sums integers mod M = 2^k (k = 24, 32 or 64), so each site maps its float update to
integers first: clip to [-C, C], scale by 2^f, round *stochastically* (round up with
probability equal to the fractional part, so E[q] = x * 2^f exactly: unbiased, unlike
round-to-nearest), and store negatives in two's complement mod M. Decoding the sum reads it
as a signed k-bit integer and divides by 2^f.

This is only correct if the true integer sum stays inside (-M/2, M/2). With n parties, at
most weight W each and values bounded by C, that is ``n * W * C * 2^f < M/2``;
:func:`check_headroom` enforces it before a round starts instead of hoping (pitfall 5 in the
project's SecAgg research notes). Each site's rounding error is below 2^-f per coordinate,
so a decoded sum of n sites is within n * 2^-f of the exact sum of the clipped values.

The rounding randomness is not secret; it comes from an injected numpy ``Generator``.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt

from crypto.errors import HeadroomError, ParameterError
from crypto.hazmat.prg import UIntArray, reduce, uint_dtype

__all__ = ["check_headroom", "decode", "encode", "largest_frac_bits"]

FloatArray = npt.NDArray[np.float64]


def _check_frac_bits(frac_bits: int, modulus_bits: int) -> None:
    if not (isinstance(frac_bits, int) and 0 <= frac_bits < modulus_bits):
        raise ParameterError("frac_bits must be an integer in [0, modulus_bits)")


def check_headroom(
    n_parties: int, clip: float, frac_bits: int, modulus_bits: int, max_weight: float = 1.0
) -> None:
    """Raise :class:`HeadroomError` unless n * ceil(W * C * 2^f) < M/2 (exact arithmetic).

    ``ceil(W*C*2^f)`` is the largest magnitude one site's encoded coordinate can take after
    stochastic rounding, so the check is the documented rule ``n*W*C*2^f < M/2`` made exact.

    >>> check_headroom(50, 1.0, 25, 32)
    >>> check_headroom(50, 1.0, 26, 32)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    crypto.errors.HeadroomError: 50 parties * W=1.0 * C=1.0 * 2^26 >= 2^31: ...
    """
    uint_dtype(modulus_bits)
    _check_frac_bits(frac_bits, modulus_bits)
    if n_parties < 1:
        raise ParameterError("n_parties must be positive")
    for name, value in (("clip", clip), ("max_weight", max_weight)):
        if not (math.isfinite(value) and value > 0):
            raise ParameterError(f"{name} must be positive and finite")
    per_site = math.ceil(Fraction(max_weight) * Fraction(clip) * 2**frac_bits)
    if n_parties * per_site >= 2 ** (modulus_bits - 1):
        raise HeadroomError(
            f"{n_parties} parties * W={max_weight} * C={clip} * 2^{frac_bits} >= "
            f"2^{modulus_bits - 1}: lower frac_bits or use modulus_bits=64"
        )


def largest_frac_bits(
    n_parties: int, clip: float, modulus_bits: int, max_weight: float = 1.0
) -> int | None:
    """The largest f that passes :func:`check_headroom`, or None if not even f = 0 does.

    >>> largest_frac_bits(50, 1.0, 32)
    25
    >>> largest_frac_bits(4, 64.0, 32, max_weight=100_000)
    6
    """
    for f in range(modulus_bits - 1, -1, -1):
        try:
            check_headroom(n_parties, clip, f, modulus_bits, max_weight)
        except HeadroomError:
            continue
        return f
    return None


def encode(
    values: npt.ArrayLike,
    *,
    clip: float,
    frac_bits: int,
    modulus_bits: int,
    rng: np.random.Generator,
) -> UIntArray:
    """Clip to [-clip, clip], scale by 2^f, round stochastically, wrap mod 2^modulus_bits.

    >>> q = encode([0.5, -0.25], clip=1.0, frac_bits=2, modulus_bits=32,
    ...            rng=np.random.default_rng(0))
    >>> q.tolist()
    [2, 4294967295]
    """
    dtype = uint_dtype(modulus_bits)
    _check_frac_bits(frac_bits, modulus_bits)
    x = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ParameterError("values must be finite")
    if not (math.isfinite(clip) and clip > 0):
        raise ParameterError("clip must be positive and finite")
    if math.ceil(clip * 2**frac_bits) >= 2 ** (modulus_bits - 1):
        raise HeadroomError("clip * 2^frac_bits does not fit in the signed range")
    scaled = np.clip(x, -clip, clip) * float(2**frac_bits)  # exact: a power-of-two scale
    low = np.floor(scaled)
    rounded = low + (rng.random(scaled.shape) < (scaled - low))
    return reduce(rounded.astype(np.int64).astype(dtype), modulus_bits)


def decode(total: UIntArray, *, frac_bits: int, modulus_bits: int) -> FloatArray:
    """Read a sum mod 2^modulus_bits as signed two's complement and divide by 2^f.

    >>> decode(np.array([2, 4294967295], dtype=np.uint32), frac_bits=2, modulus_bits=32)
    array([ 0.5 , -0.25])
    """
    dtype: np.dtype[Any] = uint_dtype(modulus_bits)
    _check_frac_bits(frac_bits, modulus_bits)
    arr = np.asarray(total)
    if arr.dtype != dtype:
        raise ParameterError(f"expected a {dtype} array")
    if modulus_bits == 24:  # sign-extend the low 24 bits of each uint32
        low = np.bitwise_and(arr.astype(np.int64), (1 << 24) - 1)
        signed = np.bitwise_xor(low, 1 << 23) - (1 << 23)
    else:
        signed = arr.view(np.int32 if modulus_bits == 32 else np.int64)
    return signed.astype(np.float64) / float(2**frac_bits)
