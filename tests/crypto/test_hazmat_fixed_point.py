"""Fixed point: unbiased stochastic rounding, exact headroom rule, decode(sum) error bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from secagg_harness import make_ctx

from crypto.errors import HeadroomError, ParameterError
from crypto.hazmat import fixed_point
from crypto.secagg import SecAggParams, decode_aggregate, encode_update


def test_stochastic_rounding_is_unbiased() -> None:
    # 0.3 * 2^4 = 4.8: round-to-nearest would always give 5 (bias 0.2 units).
    n = 200_000
    q = fixed_point.encode(
        np.full(n, 0.3), clip=1.0, frac_bits=4, modulus_bits=32, rng=np.random.default_rng(7)
    )
    units = q.view(np.int32).astype(np.float64)
    assert set(np.unique(units)) == {4.0, 5.0}
    standard_error = np.sqrt(0.8 * 0.2 / n)
    assert abs(units.mean() - 4.8) < 5 * standard_error


@pytest.mark.parametrize("value", [-0.7, -0.3125, 0.01, 0.99])
def test_unbiased_for_negative_and_small_values(value: float) -> None:
    n = 100_000
    q = fixed_point.encode(
        np.full(n, value), clip=1.0, frac_bits=3, modulus_bits=64, rng=np.random.default_rng(1)
    )
    decoded = fixed_point.decode(q, frac_bits=3, modulus_bits=64)
    # Each decoded value is within one unit (2^-3); the mean within 5 standard errors.
    assert np.all(np.abs(decoded - value) < 2**-3)
    assert abs(decoded.mean() - value) < 5 * 0.5 * 2**-3 / np.sqrt(n)


def test_clipping_and_twos_complement() -> None:
    q = fixed_point.encode(
        [5.0, -5.0, -1.0, 0.0],
        clip=2.0,
        frac_bits=8,
        modulus_bits=32,
        rng=np.random.default_rng(0),
    )
    assert q.dtype == np.uint32
    assert q.tolist() == [512, 2**32 - 512, 2**32 - 256, 0]
    np.testing.assert_array_equal(
        fixed_point.decode(q, frac_bits=8, modulus_bits=32), [2.0, -2.0, -1.0, 0.0]
    )


def test_headroom_rule_is_exact_at_the_boundary() -> None:
    # n * W * C * 2^f == M/2 must raise; one step below must pass.
    with pytest.raises(HeadroomError):
        fixed_point.check_headroom(2, 1.0, 30, 32, 1.0)
    fixed_point.check_headroom(2, 1.0, 29, 32, 1.0)
    with pytest.raises(HeadroomError):
        fixed_point.check_headroom(4, 0.5, 31, 64, 2**31)  # 4 * 2^31 * 0.5 * 2^31 = 2^63
    fixed_point.check_headroom(3, 0.5, 31, 64, 2**31)
    with pytest.raises(HeadroomError):
        fixed_point.check_headroom(50, 1.0, 16, 32, 1000.0)
    fixed_point.check_headroom(50, 1.0, 16, 64, 1000.0)


def test_round_context_refuses_an_unsafe_configuration() -> None:
    with pytest.raises(HeadroomError):
        make_ctx(10, 5, 8, modulus_bits=32, frac_bits=24, clip=13.0)
    with pytest.raises(HeadroomError):  # the weight coordinate alone: 10 * 2^4 * 2^24 > 2^31
        make_ctx(10, 5, 8, modulus_bits=32, frac_bits=24, clip=0.01, max_weight=16.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"values": [np.nan]},
        {"values": [np.inf]},
        {"values": [1.0], "clip": 0.0},
        {"values": [1.0], "frac_bits": 32},
        {"values": [1.0], "modulus_bits": 16},
    ],
)
def test_encode_rejects_bad_input(kwargs: dict) -> None:
    args = {"clip": 1.0, "frac_bits": 8, "modulus_bits": 32, "rng": np.random.default_rng(0)}
    args.update(kwargs)
    with pytest.raises(ParameterError):
        fixed_point.encode(**args)


@settings(deadline=None, max_examples=60)
@given(
    n=st.integers(1, 10),
    d=st.integers(1, 40),
    frac_bits=st.integers(0, 20),
    modulus_bits=st.sampled_from([32, 64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_decode_of_sum_is_within_n_units(
    n: int, d: int, frac_bits: int, modulus_bits: int, seed: int
) -> None:
    fixed_point.check_headroom(n, 1.0, frac_bits, modulus_bits)
    gen = np.random.default_rng(seed)
    xs = gen.uniform(-3.0, 3.0, size=(n, d))
    total = np.zeros(d, dtype=np.uint32 if modulus_bits == 32 else np.uint64)
    for x in xs:
        total += fixed_point.encode(
            x, clip=1.0, frac_bits=frac_bits, modulus_bits=modulus_bits, rng=gen
        )
    decoded = fixed_point.decode(total, frac_bits=frac_bits, modulus_bits=modulus_bits)
    exact = np.clip(xs, -1.0, 1.0).sum(axis=0)
    assert np.all(np.abs(decoded - exact) <= n * 2.0**-frac_bits + 1e-9)


def test_weighted_update_layout() -> None:
    params = SecAggParams(
        threshold=2, modulus_bits=64, dim=4, frac_bits=20, clip=1.0, max_weight=100.0
    )
    rng = np.random.default_rng(3)
    a = encode_update(params, [0.5, -3.0, 0.25], weight=10, rng=rng)
    b = encode_update(params, [-0.5, 1.0, 0.75], weight=30, rng=rng)
    values, weight = decode_aggregate(params, a + b)
    assert weight == 40.0  # integer weights are exact
    np.testing.assert_allclose(values, [5 - 15, -10 + 30, 2.5 + 22.5], atol=2 * 2**-20)
    with pytest.raises(ParameterError):
        encode_update(params, [0.0, 0.0, 0.0], weight=101, rng=rng)
    with pytest.raises(ParameterError):
        encode_update(params, [0.0, 0.0], weight=1, rng=rng)
