"""HAZMAT: t-of-n Shamir secret sharing of a 32-byte secret over GF(2^521 - 1).

Bonawitz et al. 2017 Round 1 shares each site's self-mask seed ``b_u`` and its mask private
key ``s_u^SK``. The Mersenne prime 2^521 - 1 holds a 256-bit secret in one field element, so
no chunking or padding is needed (contrast fcp's 31-bit sub-secrets and Flower's GF(2^128)
blocks). Share x-coordinates are the parties' 1-based indices. Coefficients come from the
injected randomness source, uniformly by rejection sampling.

Shamir alone does not detect a wrong share: any t points interpolate *some* polynomial.
:func:`combine` rejects results that are not 256-bit values (a random wrong result passes
with probability 2^-265); callers must still verify the secret against a commitment or an
advertised public key, as ``crypto.secagg.server`` does.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from crypto.errors import InvalidShare, ParameterError
from crypto.hazmat.randomness import RandomSource, random_below

__all__ = ["PRIME", "SECRET_LEN", "SHARE_LEN", "Share", "combine", "split"]

#: The field modulus, the Mersenne prime 2^521 - 1.
PRIME = 2**521 - 1
#: Length of a shared secret in bytes.
SECRET_LEN = 32
_X_LEN = 2
_Y_LEN = (PRIME.bit_length() + 7) // 8  # 66
#: Length of a serialized share: 2-byte x, 66-byte y, both big-endian.
SHARE_LEN = _X_LEN + _Y_LEN
_MAX_X = 2 ** (8 * _X_LEN) - 1


@dataclass(frozen=True)
class Share:
    """One point ``(x, y)`` of a sharing polynomial; ``x`` is the holder's party index."""

    x: int
    y: int

    def __post_init__(self) -> None:
        if not (isinstance(self.x, int) and 1 <= self.x <= _MAX_X):
            raise InvalidShare("share x-coordinate out of range")
        if not (isinstance(self.y, int) and 0 <= self.y < PRIME):
            raise InvalidShare("share value out of the field")

    def to_bytes(self) -> bytes:
        """Fixed-length encoding: 2-byte x then 66-byte y (big-endian)."""
        return self.x.to_bytes(_X_LEN, "big") + self.y.to_bytes(_Y_LEN, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        """Parse :meth:`to_bytes` output; raises :class:`InvalidShare` on anything else."""
        if not isinstance(data, bytes) or len(data) != SHARE_LEN:
            raise InvalidShare(f"a share is exactly {SHARE_LEN} bytes")
        return cls(int.from_bytes(data[:_X_LEN], "big"), int.from_bytes(data[_X_LEN:], "big"))


def split(
    secret: bytes, *, threshold: int, xs: Sequence[int], rng: RandomSource = os.urandom
) -> dict[int, Share]:
    """Share ``secret`` so that any ``threshold`` of the shares at ``xs`` recover it.

    >>> shares = split(bytes(range(32)), threshold=2, xs=[1, 2, 3])
    >>> combine([shares[1], shares[3]]) == bytes(range(32))
    True
    """
    if len(secret) != SECRET_LEN:
        raise ParameterError(f"secret must be {SECRET_LEN} bytes")
    if len(set(xs)) != len(xs) or any(not 1 <= x <= _MAX_X for x in xs):
        raise ParameterError("x-coordinates must be distinct integers in 1..65535")
    if not 1 <= threshold <= len(xs):
        raise ParameterError("threshold must be between 1 and the number of shares")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [random_below(rng, PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in xs:
        y = 0
        for c in reversed(coefficients):  # Horner's rule
            y = (y * x + c) % PRIME
        shares[x] = Share(x, y)
    return shares


@functools.lru_cache(maxsize=64)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Lagrange basis values L_i(0) = prod_{j != i} x_j / (x_j - x_i) mod PRIME.

    They depend only on the (public) x-coordinates, so a coordinator recovering many
    secrets from the same holders computes them once.
    """
    coefficients = []
    for i, x_i in enumerate(xs):
        numerator = denominator = 1
        for j, x_j in enumerate(xs):
            if j != i:
                numerator = numerator * x_j % PRIME
                denominator = denominator * (x_j - x_i) % PRIME
        coefficients.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(coefficients)


def combine(shares: Iterable[Share] | Mapping[int, Share]) -> bytes:
    """Lagrange-interpolate the given shares at 0 and return the 32-byte secret.

    All shares given are used, so pass exactly ``threshold`` of them (more consistent
    shares give the same result). Raises :class:`InvalidShare` for duplicate x-coordinates
    or a result that cannot be a 32-byte secret (evidence of a wrong share).
    """
    points = list(shares.values()) if isinstance(shares, Mapping) else list(shares)
    if not points:
        raise InvalidShare("no shares")
    xs = tuple(p.x for p in points)
    if len(set(xs)) != len(xs):
        raise InvalidShare("duplicate share x-coordinates")
    lagrange = _lagrange_at_zero(xs)
    secret = sum(p.y * c for p, c in zip(points, lagrange, strict=True)) % PRIME
    if secret.bit_length() > 8 * SECRET_LEN:
        raise InvalidShare("shares are inconsistent: the result is not a 32-byte secret")
    return secret.to_bytes(SECRET_LEN, "big")
