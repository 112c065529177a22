"""HAZMAT: the injectable randomness source used by every key, seed and nonce in :mod:`crypto`.

Randomness is an argument, never a global (Google fcp's ``SecurePrng``): production code
passes :func:`os.urandom` (the default everywhere), tests pass a deterministic source so a
whole round replays byte for byte. Only a source of cryptographic quality may be used for
keys, masks seeds and Shamir coefficients; a numpy ``Generator`` is accepted only for
stochastic rounding in :mod:`crypto.hazmat.fixed_point`, where it is not a secret.
"""

from __future__ import annotations

from collections.abc import Callable

from crypto.errors import ParameterError

__all__ = ["RandomSource", "random_below", "random_bytes"]

#: A function returning ``n`` uniformly random bytes, like :func:`os.urandom`.
RandomSource = Callable[[int], bytes]


def random_bytes(rng: RandomSource, n: int) -> bytes:
    """Draw ``n`` bytes from ``rng`` and check the source kept its contract."""
    out = rng(n)
    if not isinstance(out, bytes | bytearray) or len(out) != n:
        raise ParameterError(f"randomness source returned {type(out).__name__} of wrong length")
    return bytes(out)


def random_below(rng: RandomSource, bound: int) -> int:
    """A uniform integer in ``[0, bound)`` by rejection sampling (no modulo bias).

    >>> import os
    >>> 0 <= random_below(os.urandom, 10) < 10
    True
    """
    if bound < 1:
        raise ParameterError("bound must be positive")
    nbits = (bound - 1).bit_length()
    nbytes = max(1, (nbits + 7) // 8)
    excess = 8 * nbytes - nbits
    while True:
        candidate = int.from_bytes(random_bytes(rng, nbytes), "big") >> excess
        if candidate < bound:
            return candidate
