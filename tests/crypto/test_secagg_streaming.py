"""Streaming masking and unmasking: chunked equals unchunked bit for bit; memory stays bounded.

The peak-memory tests measure with ``tracemalloc`` (numpy reports its buffers to it) and
also measure the whole-vector way of doing the same step (what the code did before
streaming), asserting that the reference breaks the bound: the bound can fail.
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from secagg_harness import expected_sum, make_ctx, random_inputs, run_round

from crypto.errors import MalformedMessage, ParameterError
from crypto.hazmat import fixed_point, prg
from crypto.secagg import (
    MaskedInput,
    _derive,
    encode_update,
    finalize,
    fix_key_roster,
    fix_masking_roster,
    fix_survivors,
    route_ciphertexts,
    start_round,
)

MiB = 1 << 20


def _peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    """``fn()`` and the peak bytes it allocated beyond what was live before."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        return result, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


# --- the stream equals the whole mask ------------------------------------------------------


@settings(deadline=None, max_examples=40)
@given(
    bits=st.sampled_from([32, 64]),
    pieces=st.lists(st.integers(0, 70_000), min_size=1, max_size=6),
    key=st.binary(min_size=32, max_size=32),
)
def test_mask_stream_pieces_concatenate_to_the_mask(
    bits: int, pieces: list[int], key: bytes
) -> None:
    stream = prg.MaskStream(key, bits)
    got = np.concatenate([stream.take(n) for n in pieces])
    np.testing.assert_array_equal(got, prg.mask(key, sum(pieces), bits))


def test_mask_stream_refuses_bad_buffers() -> None:
    stream = prg.MaskStream(bytes(32), 32)
    for bad in (np.empty(4, np.uint64), np.empty(8, np.uint32)[::2], np.empty((2, 2), np.uint32)):
        with pytest.raises(ParameterError):
            stream.fill(bad)
    with pytest.raises(ParameterError):
        prg.MaskStream(bytes(31), 32)


def _whole_masks(acc: np.ndarray, masks: list[tuple[bytes, int]], bits: int) -> np.ndarray:
    """The unchunked reference: add each whole mask in turn."""
    out = acc.copy()
    for key, sign in masks:
        m = prg.mask(key, out.shape[0], bits)
        out = out + m if sign > 0 else out - m
    return out


@settings(deadline=None, max_examples=60)
@given(
    bits=st.sampled_from([32, 64]),
    dim=st.integers(1, 5000),
    chunk_bytes=st.integers(1, 1 << 15),
    signs=st.lists(st.sampled_from([1, -1]), min_size=0, max_size=5),
    seed=st.integers(0, 2**32 - 1),
)
def test_apply_masks_any_chunk_equals_whole_masks(
    bits: int, dim: int, chunk_bytes: int, signs: list[int], seed: int
) -> None:
    gen = np.random.default_rng(seed)
    dtype = prg.uint_dtype(bits)
    acc = gen.integers(0, 2**bits, size=dim, dtype=dtype)
    masks = [(gen.bytes(32), s) for s in signs]
    expected = _whole_masks(acc, masks, bits)
    _derive.apply_masks(acc, masks, bits, chunk_bytes=chunk_bytes)
    np.testing.assert_array_equal(acc, expected)


def test_apply_masks_refuses_a_wrong_accumulator() -> None:
    with pytest.raises(ParameterError):
        _derive.apply_masks(np.zeros(8, np.uint64), [(bytes(32), 1)], 32)
    with pytest.raises(ParameterError):
        _derive.apply_masks(np.zeros(8, np.uint32)[::2], [(bytes(32), 1)], 32)


# --- chunked encoding equals whole-vector encoding -----------------------------------------


def _encode_whole(params: Any, values: np.ndarray, weight: float, seed: int) -> np.ndarray:
    """The unchunked reference: one fixed-point encode of the whole weighted vector."""
    rng = np.random.default_rng(seed)
    f, k = params.frac_bits, params.modulus_bits
    weighted = np.clip(values.astype(np.float64), -params.clip, params.clip) * weight
    body = fixed_point.encode(
        weighted, clip=params.clip * params.max_weight, frac_bits=f, modulus_bits=k, rng=rng
    )
    tail = fixed_point.encode(
        [weight], clip=params.max_weight, frac_bits=f, modulus_bits=k, rng=rng
    )
    return np.concatenate([body, tail])


@settings(deadline=None, max_examples=60)
@given(
    dim=st.integers(2, 3000),
    chunk=st.integers(1, 4000),
    bits=st.sampled_from([32, 64]),
    float32=st.booleans(),
    weight=st.floats(0, 50),
    seed=st.integers(0, 2**32 - 1),
)
def test_chunked_encoding_equals_whole_encoding(
    dim: int, chunk: int, bits: int, float32: bool, weight: float, seed: int
) -> None:
    ctx = make_ctx(4, 2, dim, modulus_bits=bits, frac_bits=12, clip=1.5, max_weight=50.0)
    values = np.random.default_rng(seed).normal(0, 2, size=dim - 1)
    values = values.astype(np.float32) if float32 else values
    got = encode_update(
        ctx.params, values, weight=weight, rng=np.random.default_rng(seed), chunk=chunk
    )
    np.testing.assert_array_equal(got, _encode_whole(ctx.params, values, weight, seed))


def test_chunked_encoding_refuses_non_finite_values_in_any_chunk() -> None:
    ctx = make_ctx(4, 2, 101)
    values = np.zeros(100)
    values[77] = np.nan
    with pytest.raises(ParameterError, match="finite"):
        encode_update(ctx.params, values, weight=1.0, rng=np.random.default_rng(0), chunk=16)
    with pytest.raises(ParameterError, match="chunk"):
        encode_update(ctx.params, values, weight=1.0, rng=np.random.default_rng(0), chunk=0)


# --- whole rounds across chunk boundaries, and a streamed coordinator ----------------------

_LONG = 2 * (prg.CHUNK_BYTES // 4) + 3  # three chunks for uint32, two for uint64


@pytest.mark.parametrize("bits", [32, 64])
def test_round_across_chunk_boundaries_is_exact_with_dropouts(bits: int) -> None:
    ctx = make_ctx(5, 3, _LONG, modulus_bits=bits)
    inputs = random_inputs(ctx, bits)
    r = run_round(ctx, inputs, {5: "after_share_keys", 4: "after_masked_input"}, seed=bits)
    np.testing.assert_array_equal(r.total, expected_sum(ctx, inputs, [1, 2, 3, 4]))


def test_finalize_reads_a_one_shot_stream_and_refuses_a_repeated_party() -> None:
    ctx = make_ctx(5, 3, 1000)
    inputs = random_inputs(ctx, 3)
    r = run_round(ctx, inputs, {5: "after_share_keys"})
    blobs = [m.to_bytes() for m in r.masked_inputs]

    def stream() -> Iterator[MaskedInput]:
        return (MaskedInput.from_bytes(b) for b in blobs)

    args = (ctx, r.key_roster, r.masking_roster, r.request)
    np.testing.assert_array_equal(finalize(*args, stream(), r.answers), r.total)
    with pytest.raises(MalformedMessage) as info:
        finalize(*args, [*stream(), MaskedInput.from_bytes(blobs[1])], r.answers)
    assert info.value.party == r.masked_inputs[1].party


# --- peak memory: bounded by the vectors themselves plus O(chunk) --------------------------

_D = 1 << 20  # 4 MiB of uint32 words per vector
_N = 4


def _open_round() -> tuple[Any, dict[int, Any], Any, list[Any]]:
    ctx = make_ctx(_N, 3, _D + 1)
    started = {u: start_round(ctx, u, rng=os.urandom) for u in ctx.parties}
    roster = fix_key_roster(ctx, [a for _, a in started.values()])
    shared = {u: s.handle(roster) for u, (s, _) in started.items()}
    share_msgs = [m for _, m in shared.values()]
    masking = fix_masking_roster(ctx, roster, share_msgs)
    return ctx, {u: s for u, (s, _) in shared.items()}, (roster, masking), share_msgs


def test_site_peak_memory_is_the_vectors_plus_o_chunk() -> None:
    ctx, states, (_, masking), share_msgs = _open_round()
    values = np.random.default_rng(0).normal(0, 0.1, size=_D).astype(np.float32)
    inbox = route_ciphertexts(masking, share_msgs, 1)

    def site() -> bytes:
        x = encode_update(ctx.params, values, weight=1.0, rng=np.random.default_rng(1))
        _, msg = states[1].handle(masking, inbox=inbox, x=x)
        return msg.to_bytes()

    def whole_vector_way() -> bytes:  # encoding and masking without chunks, as before
        x = _encode_whole(ctx.params, values, 1.0, 1)
        y, scratch = x.copy(), np.empty_like(x)
        for _ in range(_N):
            np.add(y, prg.mask(os.urandom(32), x.shape[0], 32, out=scratch), out=y)
        return MaskedInput(1, ctx.round, y).to_bytes()

    _, peak = _peak(site)
    _, reference = _peak(whole_vector_way)
    vectors = 3 * 4 * _D  # encoded input, masked output, its wire bytes
    bound = vectors + 4 * MiB
    assert peak < bound, f"site peak {peak / MiB:.1f} MiB >= {bound / MiB:.1f} MiB"
    assert reference > bound, "the bound does not separate streaming from whole vectors"


def test_coordinator_peak_memory_is_the_sum_plus_one_input() -> None:
    ctx, states, (roster, masking), share_msgs = _open_round()
    blobs, after = [], {}
    for u, state in states.items():
        x = np.full(ctx.params.dim, u, dtype=np.uint32)
        after[u], msg = state.handle(masking, inbox=route_ciphertexts(masking, share_msgs, u), x=x)
        blobs.append(msg.to_bytes())

    def from_files() -> Iterator[MaskedInput]:  # each input loaded as it is reached
        return (MaskedInput.from_bytes(memoryview(b).tobytes()) for b in blobs[:-1])

    request, barrier_peak = _peak(lambda: fix_survivors(ctx, masking, from_files()))
    assert request.dropped == (_N,)  # party _N's input never arrived
    assert barrier_peak < 4 * _D + 2 * MiB  # one loaded input at a time
    answers = [after[u].handle(request)[1] for u in request.survivors]

    total, peak = _peak(lambda: finalize(ctx, roster, masking, request, from_files(), answers))
    expected = np.full(ctx.params.dim, sum(range(1, _N)), dtype=np.uint32)
    np.testing.assert_array_equal(total, expected)
    loaded, reference = _peak(lambda: [*from_files(), np.empty_like(total), total.copy()])
    del loaded
    bound = 2 * 4 * _D + 2 * MiB  # the sum and one loaded input
    assert peak < bound, f"coordinator peak {peak / MiB:.1f} MiB >= {bound / MiB:.1f} MiB"
    assert reference > bound, "the bound does not separate streaming from holding every input"
