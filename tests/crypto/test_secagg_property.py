"""End-to-end properties: exact sums under any dropout pattern; fixed point through the protocol."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from secagg_harness import (
    AFTER_MASKED_INPUT,
    DROP_STAGES,
    expected_sum,
    make_ctx,
    random_inputs,
    run_round,
)

from crypto.secagg import decode_aggregate, encode_update


def _survivors(n: int, drops: dict[int, str]) -> list[int]:
    """U3: everyone who sent a masked input (silent at unmasking still counts)."""
    return [u for u in range(1, n + 1) if drops.get(u, AFTER_MASKED_INPUT) == AFTER_MASKED_INPUT]


@st.composite
def rounds(draw):  # type: ignore[no-untyped-def]
    n = draw(st.integers(3, 8))
    t = draw(st.integers(2, n))
    dropped = draw(st.lists(st.integers(1, n), unique=True, max_size=n - t))
    drops = {u: draw(st.sampled_from(DROP_STAGES)) for u in dropped}
    return n, t, drops


@settings(deadline=None, max_examples=150)
@given(
    spec=rounds(),
    d=st.integers(1, 64),
    modulus_bits=st.sampled_from([32, 64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_unmasked_sum_is_exact_for_any_dropout_pattern(
    spec: tuple[int, int, dict[int, str]], d: int, modulus_bits: int, seed: int
) -> None:
    n, t, drops = spec
    ctx = make_ctx(n, t, d, modulus_bits=modulus_bits)
    inputs = random_inputs(ctx, seed)
    result = run_round(ctx, inputs, drops, seed=seed)
    survivors = _survivors(n, drops)
    assert result.request.survivors == tuple(survivors)
    assert result.total.dtype == ctx.params.dtype
    np.testing.assert_array_equal(result.total, expected_sum(ctx, inputs, survivors))


@pytest.mark.parametrize("stage", DROP_STAGES)
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_zero_to_n_minus_t_dropouts_at_each_stage(stage: str, k: int) -> None:
    n, t = 6, 3
    ctx = make_ctx(n, t, 17)
    inputs = random_inputs(ctx, k)
    drops = {u: stage for u in range(n, n - k, -1)}
    result = run_round(ctx, inputs, drops, seed=k)
    np.testing.assert_array_equal(result.total, expected_sum(ctx, inputs, _survivors(n, drops)))


@settings(deadline=None, max_examples=60)
@given(
    spec=rounds(),
    d=st.integers(1, 32),
    frac_bits=st.integers(8, 20),
    seed=st.integers(0, 2**32 - 1),
)
def test_fixed_point_through_the_protocol(
    spec: tuple[int, int, dict[int, str]], d: int, frac_bits: int, seed: int
) -> None:
    n, t, drops = spec
    ctx = make_ctx(n, t, d + 1, modulus_bits=64, frac_bits=frac_bits, clip=1.0, max_weight=500.0)
    gen = np.random.default_rng(seed)
    values = {u: gen.uniform(-2.0, 2.0, size=d) for u in ctx.parties}
    weights = {u: int(gen.integers(0, 501)) for u in ctx.parties}
    encoded = {
        u: encode_update(ctx.params, values[u], weight=weights[u], rng=gen) for u in ctx.parties
    }
    result = run_round(ctx, encoded, drops, seed=seed)
    survivors = _survivors(n, drops)
    total_values, total_weight = decode_aggregate(ctx.params, result.total)
    exact = sum(np.clip(values[u], -1.0, 1.0) * weights[u] for u in survivors)
    assert total_weight == sum(weights[u] for u in survivors)
    assert np.all(np.abs(total_values - exact) <= n * 2.0**-frac_bits + 1e-9)
