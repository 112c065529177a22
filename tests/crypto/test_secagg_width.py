"""The masked sum's width: 2^24 or 2^32 when the headroom rule leaves enough fractional bits
(#11)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from secagg_harness import AFTER_SHARE_KEYS, make_ctx, run_round

from crypto.errors import HeadroomError, MalformedMessage
from crypto.hazmat import prg
from crypto.hazmat.fixed_point import check_headroom, largest_frac_bits
from crypto.secagg import MaskedInput, choose_width, decode_aggregate, encode_update, parse_message


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
    assert choose_width(4, 0.01, 1.0, min_frac_bits=4, frac_bits_64=24) == (24, 20)
    assert choose_width(4, 0.01, 1.0, min_frac_bits=4, frac_bits_64=24, widths=(32,)) == (32, 28)
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


def test_choose_width_takes_24_bits_when_the_bounds_are_tight() -> None:
    # 10 sites, C = 1, W = 4096: 10 * 4096 * 2^7 < 2^23 <= 10 * 4096 * 2^8
    assert choose_width(10, 1.0, 4096, min_frac_bits=4, frac_bits_64=24) == (24, 7)
    # at the precision floor exactly: still 24 bits; one bit short: 32 bits
    assert choose_width(10, 1.0, 4096, min_frac_bits=7, frac_bits_64=24) == (24, 7)
    assert choose_width(10, 1.0, 4096, min_frac_bits=8, frac_bits_64=24) == (32, 15)
    # the defaults of federations made before tight bounds never get 24 bits
    assert choose_width(4, 64.0, 100_000, min_frac_bits=4, frac_bits_64=24)[0] == 32


def test_mask_words_mod_2_24_are_the_low_bits_of_the_32_bit_stream() -> None:
    key = bytes(range(32))
    wide, narrow = prg.mask(key, 1000, 32), prg.mask(key, 1000, 24)
    assert narrow.dtype == np.uint32
    assert np.array_equal(narrow, wide & 0xFFFFFF)
    assert int(narrow.max()) >= 1 << 23  # the top bit of the ring is used (uniform words)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 12),
    w_max=st.integers(1, 2048),
    clip=st.sampled_from([0.25, 1.0, 8.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_sum_of_24_bit_encodings_decodes_within_the_bound(
    n: int, w_max: int, clip: float, seed: int
) -> None:
    """Whatever the inputs (beyond the clip too) and weights within W: the sum mod 2^24 of n
    encodings decodes within n * 2^-f of the exact sum of clipped, weighted values."""
    f = largest_frac_bits(n, max(clip, 1.0), 24, w_max)
    if f is None:  # not even whole numbers fit: choose_width would not pick 24 bits
        return
    ctx = make_ctx(n, 2, 9, modulus_bits=24, frac_bits=f, clip=clip, max_weight=w_max)
    gen = np.random.default_rng(seed)
    total = np.zeros(ctx.params.dim, dtype=np.uint32)
    expected = np.zeros(ctx.params.dim - 1)
    weights = 0.0
    for _ in range(n):
        values = gen.normal(0, 2 * clip, ctx.params.dim - 1)
        values[0] = gen.choice([-1, 1]) * 10 * clip  # at least one value beyond the clip
        w = float(gen.choice([0.0, float(w_max), float(gen.integers(0, w_max + 1))]))
        q = encode_update(ctx.params, values, weight=w, rng=gen)
        assert int(q.max()) < 1 << 24
        total = prg.reduce(total + q, 24)
        expected += np.clip(values, -clip, clip) * w
        weights += w
    summed, weight = decode_aggregate(ctx.params, total)
    assert abs(weight - weights) <= n * 2.0**-f
    assert np.all(np.abs(summed - expected) <= n * 2.0**-f)


def test_a_24_bit_round_unmasks_the_exact_sum_mod_2_24_with_a_dropout() -> None:
    """Masks cancel mod 2^24 (pairwise for survivors, reconstructed for a dropped site), and
    every masked vector travels packed in 3 bytes a word."""
    n, clip, w_max = 5, 1.0, 1024.0
    bits, f = choose_width(n, clip, w_max, min_frac_bits=4, frac_bits_64=24)
    assert (bits, f) == (24, 10)
    ctx = make_ctx(n, 3, 301, modulus_bits=bits, frac_bits=f, clip=clip, max_weight=w_max)
    gen = np.random.default_rng(3)
    values = {u: gen.normal(0, 0.1, 300) for u in ctx.parties}
    weights = {1: w_max, 2: 300.0, 3: 17.0, 4: 1.0, 5: 80.0}
    encoded = {u: encode_update(ctx.params, values[u], weight=weights[u], rng=gen) for u in values}
    result = run_round(ctx, encoded, {4: AFTER_SHARE_KEYS}, seed=9)
    assert result.survivors == (1, 2, 3, 5)
    exact = sum(encoded[u].astype(np.int64) for u in result.survivors) % 2**24
    assert result.total.dtype == np.uint32
    assert np.array_equal(result.total, exact.astype(np.uint32))
    summed, weight = decode_aggregate(ctx.params, result.total)
    assert weight == sum(weights[u] for u in result.survivors)
    want = sum(np.clip(values[u], -clip, clip) * weights[u] for u in result.survivors)
    assert np.all(np.abs(summed - want) <= n * 2.0**-f)
    for m in result.masked_inputs:
        assert m.modulus_bits == 24
        header, _ = m.to_bytes().split(b"\n", 1)
        assert len(m.to_bytes()) == len(header) + 1 + 3 * ctx.params.dim


def test_24_bit_masked_input_wire_round_trip_and_refusals() -> None:
    words = np.array([0, 1, 0xFFFFFF, 0x800000, 0x123456], dtype=np.uint32)
    m = MaskedInput(7, 2, words, 24)
    raw = m.to_bytes()
    header, payload = raw.split(b"\n", 1)
    assert b'"dtype":"uint24"' in header
    assert payload == bytes.fromhex("000000010000ffffff000080563412")
    back = parse_message(raw)
    assert back == m and back.vector.dtype == np.uint32 and back.modulus_bits == 24
    assert back != MaskedInput(7, 2, words)  # the same words as a 2^32 vector differ
    with pytest.raises(MalformedMessage, match="below 2\\^24"):
        MaskedInput(7, 2, np.array([1 << 24], dtype=np.uint32), 24)
    with pytest.raises(MalformedMessage, match="payload length"):
        parse_message(raw[:-1])
