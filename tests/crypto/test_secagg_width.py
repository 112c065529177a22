"""The masked sum's width: 2^32 when the headroom rule leaves enough fractional bits (#11)."""

from __future__ import annotations

import numpy as np
import pytest
from secagg_harness import make_ctx, run_round

from crypto.errors import HeadroomError
from crypto.hazmat.fixed_point import check_headroom, largest_frac_bits
from crypto.secagg import choose_width, decode_aggregate, encode_update


@pytest.mark.parametrize(
    ("n", "clip", "weight", "expected"),
    [
        (4, 64.0, 100_000, 6),  # the defaults, heart disease: 4 * 6.4e6 * 2^6 < 2^31
        (10, 64.0, 100_000, 5),  # label skew
        (2, 1.0, 1.0, 29),  # 2 * 2^29 = 2^30 < 2^31
        (4, 1.0, 1.0, 28),
        (5, 1.0, 1.0, 28),  # 5 * 2^28 > 2^30 still below 2^31
        (3, 2**31, 1.0, None),  # not even whole numbers fit
    ],
)
def test_largest_frac_bits_is_the_edge_of_the_headroom_rule(
    n: int, clip: float, weight: float, expected: int | None
) -> None:
    f = largest_frac_bits(n, clip, 32, weight)
    assert f == expected
    if f is not None:
        check_headroom(n, clip, f, 32, weight)  # fits ...
        with pytest.raises(HeadroomError):  # ... and one more bit does not
            check_headroom(n, clip, f + 1, 32, weight)


def test_choose_width_takes_32_bits_only_above_the_precision_floor() -> None:
    assert choose_width(4, 64.0, 100_000, min_frac_bits=4, frac_bits_64=24) == (32, 6)
    assert choose_width(10, 64.0, 100_000, min_frac_bits=4, frac_bits_64=24) == (32, 5)
    assert choose_width(10, 64.0, 100_000, min_frac_bits=6, frac_bits_64=24) == (64, 24)
    assert choose_width(1000, 64.0, 100_000, min_frac_bits=4, frac_bits_64=24) == (64, 24)
    # the weight coordinate is encoded with clip max(C, 1): a small C does not buy more bits
    assert choose_width(4, 0.01, 1.0, min_frac_bits=4, frac_bits_64=24) == (32, 28)
    with pytest.raises(HeadroomError):  # even 2^64 has no room: refused, not wrapped
        choose_width(10, 64.0, 100_000, min_frac_bits=6, frac_bits_64=40)


def test_sums_at_the_chosen_width_are_exact_and_decode_within_the_bound() -> None:
    """A full protocol round at (32, f) from choose_width: the unmasked sum is exactly the sum
    of the encoded inputs mod 2^32, and decodes within n * 2^-f of the float sum."""
    n, clip, w_max = 4, 64.0, 100_000.0
    bits, f = choose_width(n, clip, w_max, min_frac_bits=4, frac_bits_64=24)
    assert (bits, f) == (32, 6)
    ctx = make_ctx(n, 3, 51, modulus_bits=bits, frac_bits=f, clip=clip, max_weight=w_max)
    gen = np.random.default_rng(11)
    values = {u: gen.normal(0, 0.3, 50) for u in ctx.parties}
    values[1][:3] = [clip, -clip, 200.0]  # at and beyond the clip: the extremes must not wrap
    weights = {1: w_max, 2: 250.0, 3: 17.0, 4: 1.0}
    encoded = {
        u: encode_update(ctx.params, values[u], weight=weights[u], rng=gen) for u in ctx.parties
    }
    result = run_round(ctx, encoded, seed=5)
    exact_int = sum(encoded[u].astype(np.int64).view(np.int64) for u in ctx.parties)
    assert result.total.dtype == np.uint32
    assert np.array_equal(result.total, (exact_int % 2**32).astype(np.uint32))
    summed, weight = decode_aggregate(ctx.params, result.total)
    assert weight == sum(weights.values())
    expected = sum(np.clip(values[u], -clip, clip) * weights[u] for u in ctx.parties)
    assert np.all(np.abs(summed - expected) <= n * 2.0**-f)
