"""Payload bytes: DEFLATE size, STC and its byte format, fused smoothing, lower-bit floats."""

from __future__ import annotations

import struct
import zlib

import cvxpy as cp
import numpy as np
import pytest
import torch

from fedrema_cli.merging import compress as c

RNG = np.random.default_rng(0)
STEPS = np.repeat(RNG.normal(size=40), 100)  # piecewise constant, 4000 coordinates
NOISY_STEPS = STEPS + 0.3 * RNG.normal(size=STEPS.size)
RANDOM = RNG.normal(size=4000)


# --- DEFLATE ---------------------------------------------------------------------------------


def test_deflate_shrinks_piecewise_constant_payloads_and_not_random_ones():
    raw = 4 * STEPS.size
    assert c.deflate_size(STEPS) < 0.1 * raw
    assert c.deflate_size(RANDOM) > 0.85 * raw
    assert c.deflate_size(RANDOM) == len(zlib.compress(RANDOM.astype("<f4").tobytes(), 6))
    with pytest.raises(ValueError):
        c.deflate_size(np.ones((2, 2)))
    with pytest.raises(ValueError):
        c.deflate_size(np.array([1.0, np.inf]))


# --- STC -------------------------------------------------------------------------------------


def test_stc_replaces_each_top_p_tail_by_its_mean():
    x = np.array([5.0, 4, 3, 2, 1, 0, -1, -2, -3, -10])
    # positive side [5,4,3,2,1,0,...]: 0.8 quantile 3.2 -> {5, 4}; negative: 2.2 -> {-3, -10}
    np.testing.assert_array_equal(c.stc(x, p=0.2), [4.5, 4.5, 0, 0, 0, 0, 0, 0, -6.5, -6.5])
    assert c.stc(x, p=0.2).dtype == np.float32


def test_stc_never_puts_an_exact_zero_in_a_tail():
    # the positive quantile is 0 here; the official code would give every 0 both tails' means
    np.testing.assert_array_equal(c.stc(np.array([0.0, 0, 0, 0, 1]), p=0.5), [0, 0, 0, 0, 1])
    with pytest.raises(ValueError):
        c.stc(np.ones(3), p=0.0)


@pytest.mark.parametrize("n", [0, 1, 5, 4000])
def test_stc_bytes_round_trip_exactly(n):
    x = RNG.normal(size=n)
    blob = c.stc_encode(x)
    assert blob[:4] == c.STC_MAGIC
    np.testing.assert_array_equal(c.stc_decode(blob), c.stc(x))
    assert c.stc_decode(blob).shape == (n,)


def test_stc_bytes_shrink_on_smoothed_steps_and_stay_near_the_entropy_on_random_ones():
    smoothed = c.smooth_update(NOISY_STEPS, c.SmoothingParams(gamma=1.0))
    assert len(c.stc_encode(smoothed)) < 0.3 * len(c.stc_encode(NOISY_STEPS))
    # random ternary symbols (0.6 / 0.2 / 0.2) carry ~1.37 bits each: no format beats that
    assert len(c.stc_encode(RANDOM)) > 1.3 * RANDOM.size / 8
    assert len(c.stc_encode(RANDOM)) < 2.0 * RANDOM.size / 8  # but no worse than 2 bits


def _blob(n: int, symbols: bytes, mu=(1.0, -1.0), magic=c.STC_MAGIC) -> bytes:
    return struct.pack("<4sQff", magic, n, *mu) + zlib.compress(symbols)


def test_stc_decode_refuses_malformed_payloads():
    good = c.stc_encode(RANDOM[:10])
    bad = [
        good[:10],  # shorter than the header
        b"XXXX" + good[4:],  # wrong magic
        good[:-3],  # truncated stream
        good + b"\x00",  # trailing bytes
        _blob(10**12, b"\x00" * 3),  # a forged length
        _blob(4, b"\x03"),  # symbol 3
        _blob(3, b"\x40"),  # a non-zero padding symbol
        _blob(4, b"\x00", mu=(float("nan"), 0.0)),
        struct.pack("<4sQff", c.STC_MAGIC, 4, 1.0, -1.0) + b"not deflate",
    ]
    for blob in bad:
        with pytest.raises(ValueError):
            c.stc_decode(blob)


# --- fused smoothing -------------------------------------------------------------------------


def test_tv_prox_on_known_vectors():
    y = np.array([0.0, 0.0, 10.0, 10.0])
    np.testing.assert_allclose(c.tv_prox(y, 1.0), [0.5, 0.5, 9.5, 9.5])
    np.testing.assert_array_equal(c.tv_prox(y, 0.0), y)
    np.testing.assert_allclose(c.tv_prox(y, 100.0), [5.0, 5.0, 5.0, 5.0])
    np.testing.assert_allclose(c.tv_prox(y, 100.0, pin_end=True), 0.0, atol=1e-12)
    np.testing.assert_allclose(c.tv_prox(np.array([3.0]), 1.0, pin_end=True), [2.0])  # soft
    assert c.tv_prox(np.array([]), 1.0).size == 0


@pytest.mark.parametrize("pin", [False, True])
def test_tv_prox_matches_a_convex_solver(pin):
    rng = np.random.default_rng(1)
    for n, lam in ((1, 0.5), (2, 0.3), (17, 0.5), (40, 2.0)):
        y = np.repeat(rng.normal(size=4) * 3, -(-n // 4))[:n] + rng.normal(size=n)
        v = cp.Variable(n)
        penalty = cp.norm1(cp.diff(v)) if n > 1 else 0
        if pin:
            penalty = penalty + cp.abs(v[n - 1])
        cp.Problem(cp.Minimize(0.5 * cp.sum_squares(v - y) + lam * penalty)).solve(
            solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12
        )
        np.testing.assert_allclose(c.tv_prox(y, lam, pin_end=pin), v.value, atol=1e-6)


def test_chunks_follow_the_official_layout():
    assert c.chunk_bounds(7500) == [(0, 3000), (3000, 6000), (6000, 7000), (7000, 7500)]
    assert c.chunk_bounds(500) == [(0, 500)]
    assert c.chunk_bounds(0) == []
    assert c.chunk_bounds(10, c.SmoothingParams(chunk=None)) == [(0, 10)]


def _official_problem(g, w, s, gamma, pin):
    """The official chunk problem: argmin_y gamma ||Lambda (y - w)||_1 + 1/(2s) ||y - (w - s g)||^2,
    Lambda = I - shift (square: its last row is e_last) or the pure first differences."""
    n = g.size
    lam = np.eye(n) - np.eye(n, k=1)
    if not pin:
        lam = lam[:-1]
    y = cp.Variable(n)
    objective = gamma * cp.norm1(lam @ (y - w)) + cp.sum_squares(y - (w - s * g)) / (2 * s)
    cp.Problem(cp.Minimize(objective)).solve(
        solver="CLARABEL", tol_gap_abs=1e-13, tol_gap_rel=1e-13, tol_feas=1e-13
    )
    return (w - y.value) / s


@pytest.mark.parametrize("pin", [False, True])
def test_smoothing_matches_a_direct_convex_solve_of_the_official_problem(pin):
    rng = np.random.default_rng(2)
    n, gamma, s = 25, 0.4, 0.05
    g = np.repeat(rng.normal(size=5), 5) + 0.3 * rng.normal(size=n)
    w = rng.normal(size=n)  # the weights cancel: any w gives the same clustered gradient
    params = c.SmoothingParams(gamma=gamma, chunk=10, tail_chunk=4, pin_chunk_end=pin)
    expected = np.concatenate(
        [_official_problem(g[a:b], w[a:b], s, gamma, pin) for a, b in c.chunk_bounds(n, params)]
    )
    expected = np.clip(expected, g.min(), g.max())
    np.testing.assert_allclose(c.smooth_update(g, params), expected, atol=1e-5)


def test_smoothing_stays_in_the_range_of_g_and_leaves_g_alone():
    g = np.array([5.0, 5.0, 5.0, 6.0])
    out = c.smooth_update(g, c.SmoothingParams(gamma=10.0))  # the pinned end pulls toward 0
    assert out.min() >= 5.0 and out.max() <= 6.0
    assert c.tv_prox(g, 10.0, pin_end=True).min() < 5.0  # so the clamp did act
    np.testing.assert_array_equal(g, [5.0, 5.0, 5.0, 6.0])
    with pytest.raises(ValueError):
        c.smooth_update(np.array([1.0, np.nan]))
    with pytest.raises(ValueError):
        c.SmoothingParams(chunk=0)


def test_smoothing_makes_noisy_steps_compress_and_random_vectors_barely():
    params = c.SmoothingParams(gamma=1.0)
    assert c.deflate_size(c.smooth_update(NOISY_STEPS, params)) < 0.2 * c.deflate_size(NOISY_STEPS)
    # and it recovers the steps better than the noisy vector was
    assert np.abs(c.smooth_update(NOISY_STEPS, params) - STEPS).mean() < 0.5 * 0.3
    assert c.deflate_size(c.smooth_update(RANDOM, c.SmoothingParams(gamma=1e-4))) > 0.8 * (
        c.deflate_size(RANDOM)
    )


# --- lower-bit floats ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "width", "bound"),
    [("float32", 4, 0.0), ("float16", 2, 2**-11), ("bfloat16", 2, 2**-8)],
)
def test_lower_bit_floats_round_trip_within_their_precision(kind, width, bound):
    x = RNG.normal(size=1000) * 3
    err = c.float_error(x, kind)
    assert err.bytes == width * x.size
    back = c.decode_floats(c.encode_floats(x, kind), kind)
    rel = np.abs(back - x.astype(np.float32)) / np.abs(x.astype(np.float32))
    assert rel.max() <= bound
    assert err.relative_l2_error <= bound and err.max_abs_error == pytest.approx(
        np.abs(back - x.astype(np.float32)).max()
    )


def test_bfloat16_rounds_to_nearest_even_like_torch():
    x = np.concatenate([RNG.normal(size=2000) * 10.0 ** RNG.integers(-6, 6, 2000), [0.0, -0.0]])
    ours = c.decode_floats(c.encode_floats(x, "bfloat16"), "bfloat16")
    theirs = torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(ours, theirs)
    ties = np.array([1 + 2**-8, 1 + 3 * 2**-8], dtype=np.float32)  # halfway: to the even one
    assert c.encode_floats(ties, "bfloat16") == np.array([0x3F80, 0x3F82], "<u2").tobytes()


def test_lower_bit_floats_refuse_what_they_cannot_hold():
    with pytest.raises(ValueError):
        c.encode_floats(np.array([70000.0]), "float16")
    with pytest.raises(ValueError):
        c.encode_floats(np.array([3.4e38]), "bfloat16")  # rounds up past the largest bfloat16
    with pytest.raises(ValueError):
        c.encode_floats(np.ones(2), "int8")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        c.decode_floats(b"\x00\x00\x00", "float16")
    with pytest.raises(ValueError):
        c.decode_floats(np.array([0x7F80], "<u2").tobytes(), "bfloat16")  # inf
