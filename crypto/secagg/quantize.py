"""Weighted fixed-point inputs for SecAgg: values times weight, plus the weight itself.

For weighted FedAvg the coordinator needs sum_u w_u * x_u and sum_u w_u, and must see
neither an individual update nor an individual weight (sample counts can be sensitive).
So a site clips its update to [-C, C] per coordinate, multiplies it by its weight w_u
(0 <= w_u <= W), and appends w_u as the last coordinate; both go through the same masked
sum. :class:`~crypto.secagg.params.RoundContext` checks the headroom for this layout.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from crypto.errors import ParameterError
from crypto.hazmat import fixed_point
from crypto.hazmat.prg import UIntArray
from crypto.secagg.params import SecAggParams

__all__ = ["choose_width", "decode_aggregate", "encode_update"]


#: Values are encoded this many at a time (float64 temporaries of 512 KiB each).
ENCODE_CHUNK = 1 << 16


def choose_width(
    n_parties: int,
    clip: float,
    max_weight: float,
    *,
    min_frac_bits: int,
    frac_bits_64: int,
    widths: tuple[int, ...] = (24, 32),
) -> tuple[int, int]:
    """(modulus_bits, frac_bits) for n parties: the narrowest of ``widths`` (2^24, then 2^32)
    whose finest f under the headroom rule ``n * W * max(C, 1) * 2^f < 2^(k-1)`` is at least
    ``min_frac_bits``; otherwise 2^64 with ``frac_bits_64``. A 2^24 word costs 3 bytes on the
    wire, a 2^32 word 4, a 2^64 word 8; a pure function of public, signed values, so every
    party agrees.

    Precision depends on f alone, not on the width: a decoded sum of n sites is within
    n * 2^-f of the exact sum of clipped, weighted values, so the weighted mean is within
    n * 2^-f / (sum of weights). The width only bounds how large f can be.

    >>> choose_width(4, 64.0, 100_000, min_frac_bits=4, frac_bits_64=24)
    (32, 6)
    >>> choose_width(4, 64.0, 100_000, min_frac_bits=8, frac_bits_64=24)
    (64, 24)
    >>> choose_width(10, 1.0, 4096, min_frac_bits=4, frac_bits_64=24)
    (24, 7)
    """
    for bits in widths:
        f = fixed_point.largest_frac_bits(n_parties, max(clip, 1.0), bits, max_weight)
        if f is not None and f >= min_frac_bits:
            return bits, f
    fixed_point.check_headroom(n_parties, max(clip, 1.0), frac_bits_64, 64, max_weight)
    return 64, frac_bits_64


def encode_update(
    params: SecAggParams,
    values: npt.ArrayLike,
    *,
    weight: float,
    rng: np.random.Generator,
    chunk: int = ENCODE_CHUNK,
) -> UIntArray:
    """Encode ``clip(values, C) * weight`` followed by ``weight``: a vector of ``params.dim``.

    ``values`` has ``params.dim - 1`` coordinates (any float dtype: float32 is read as is,
    never copied whole). The rounding randomness (not secret) comes from ``rng``; encoding
    is unbiased (stochastic rounding). Peak extra memory is the output plus a few
    ``chunk``-sized temporaries.

    >>> p = SecAggParams(threshold=2, modulus_bits=32, dim=3, frac_bits=8, clip=1.0,
    ...                  max_weight=10.0)
    >>> q = encode_update(p, [0.5, -2.0], weight=4, rng=np.random.default_rng(0))
    >>> decode_aggregate(p, q)
    (array([ 2., -4.]), 4.0)
    """
    if chunk < 1:
        raise ParameterError("chunk must be positive")
    x = np.asarray(values)
    if x.shape != (params.dim - 1,):
        raise ParameterError(f"expected {params.dim - 1} values, got shape {x.shape}")
    if not (math.isfinite(weight) and 0 <= weight <= params.max_weight):
        raise ParameterError(f"weight must be in [0, max_weight={params.max_weight}]")
    f, k = params.frac_bits, params.modulus_bits
    clip = params.clip * params.max_weight
    out = np.empty(params.dim, dtype=params.dtype)
    # Chunk by chunk, so the float temporaries stay O(chunk) instead of ~50 bytes per value;
    # the rounding draws come from ``rng`` in the same order, so the result does not depend
    # on the chunk size.
    for start in range(0, x.shape[0], chunk):
        part = np.asarray(x[start : start + chunk], dtype=np.float64)
        if not np.all(np.isfinite(part)):
            raise ParameterError("values must be finite")
        weighted = np.clip(part, -params.clip, params.clip) * weight
        out[start : start + part.shape[0]] = fixed_point.encode(
            weighted, clip=clip, frac_bits=f, modulus_bits=k, rng=rng
        )
    out[-1:] = fixed_point.encode(
        [weight], clip=params.max_weight, frac_bits=f, modulus_bits=k, rng=rng
    )
    return out


def decode_aggregate(
    params: SecAggParams, total: UIntArray
) -> tuple[npt.NDArray[np.float64], float]:
    """Split a SecAgg sum into (sum of weighted values, sum of weights), as floats.

    The weighted mean is ``values / weight`` (guard against a zero total weight).
    """
    if total.shape != (params.dim,):
        raise ParameterError(f"expected a sum of length {params.dim}")
    decoded = fixed_point.decode(
        total, frac_bits=params.frac_bits, modulus_bits=params.modulus_bits
    )
    return decoded[:-1], float(decoded[-1])
