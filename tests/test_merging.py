"""FedReMa's rules pinned on small hand-made matrices (docs/fedrema.md; algorithms.md §1.2-1.4)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrema_cli.merging import fedrema as fr
from fedrema_cli.merging.mean import weighted_mean


def test_weighted_mean_is_sample_weighted_and_leaves_inputs_alone():
    a, b = np.array([1.0, 1.0]), np.array([3.0, 5.0])
    out = weighted_mean([a, b], [1, 3])
    np.testing.assert_allclose(out, [2.5, 4.0])
    np.testing.assert_array_equal(a, [1.0, 1.0])
    with pytest.raises(ValueError):
        weighted_mean([a, b], [0, 0])
    with pytest.raises(ValueError):
        weighted_mean([a], [1, 2])


def test_maxdiff_selects_peers_above_the_largest_gap_and_always_self():
    # peers sorted: 0.10 (j=1), 0.20 (j=2), 0.80 (j=3), 0.85 (j=4); largest gap 0.2 -> 0.8
    row = np.array([1.0, 0.10, 0.20, 0.80, 0.85])
    mask, gap = fr.maxdiff_select(row, 0)
    assert mask.tolist() == [True, False, False, True, True]
    assert gap == pytest.approx(0.6)


def test_maxdiff_ties_go_to_the_first_gap_so_more_peers_are_kept():
    row = np.array([0.1, 0.4, 1.0, 0.7])  # self is index 2; peers 0.1, 0.4, 0.7 -> gaps 0.3, 0.3
    mask, gap = fr.maxdiff_select(row, 2)
    assert mask.tolist() == [False, True, True, True]
    assert gap == pytest.approx(0.3)


def test_maxdiff_ignores_self_even_when_a_peer_ties_with_it():
    row = np.array([1.0, 1.0, 0.2])  # peer 1 identical to self
    mask, _ = fr.maxdiff_select(row, 0)
    assert mask.tolist() == [True, True, False]


def test_maxdiff_with_one_peer_selects_it_and_two_sites_do_not_crash():
    mask, gap = fr.maxdiff_select(np.array([0.3, 1.0]), 1)
    assert mask.tolist() == [True, True] and gap == 0.0
    mask, gap = fr.maxdiff_select(np.array([1.0]), 0)
    assert mask.tolist() == [True] and gap == 0.0


def test_similarity_uses_row_temperature_for_self_and_peer_temperature_for_others():
    logits = np.zeros((2, 2, 1, 3))
    logits[0, 0, 0] = [2.0, 0.0, 0.0]
    logits[0, 1, 0] = [2.0, 0.0, 0.0]
    logits[1, 1, 0] = [0.0, 0.0, 1.0]
    logits[1, 0, 0] = [1.0, 0.0, 0.0]
    s = fr.similarity_matrix(logits, t_self=0.5, t_peer=1.0)
    p_self = fr.softmax(np.array([2.0, 0, 0]), 0.5)
    p_peer = fr.softmax(np.array([2.0, 0, 0]), 1.0)
    expected = p_self @ p_peer / np.linalg.norm(p_self) / np.linalg.norm(p_peer)
    assert s[0, 1] == pytest.approx(expected)
    assert s[0, 1] < 1.0  # same head, different temperatures: not 1
    assert s[0, 0] == s[1, 1] == 1.0
    assert s[1, 0] != s[0, 1]  # rows have their own probes: S is not symmetric


def test_ccp_stays_on_a_new_peak_and_ends_below_delta_times_peak():
    assert fr.ccp_continues([], 0.5)
    assert fr.ccp_continues([0.2, 0.4], 0.5)  # new peak
    assert fr.ccp_continues([0.4, 0.25], 0.5)  # 0.25 >= 0.2
    assert not fr.ccp_continues([0.4, 0.19], 0.5)
    assert fr.ccp_continues([0.4, 0.2], 0.5)  # exactly delta*peak is not below it


def _logits_for(sim_rows: np.ndarray) -> np.ndarray:
    """Logits whose softmax rows reproduce a chosen ranking of peers (2 classes, 1 sample)."""
    n = sim_rows.shape[0]
    out = np.zeros((n, n, 1, 2))
    for i in range(n):
        for j in range(n):
            # Head j on row i's probe: more similar peers predict more like head i.
            out[i, j, 0] = [0.0, 8.0 * sim_rows[i, j]]
    return out


def test_merge_during_ccp_averages_selected_heads_uniformly_from_a_snapshot():
    sites = ("a", "b", "c", "d")
    heads = {s: np.full(2, float(k)) for k, s in enumerate(sites)}
    # Two blocks: {a, b} and {c, d}.
    target = np.array(
        [[1, 0.9, 0.1, 0.1], [0.9, 1, 0.1, 0.1], [0.1, 0.1, 1, 0.9], [0.1, 0.1, 0.9, 1]]
    )
    state = fr.FedReMaState(sites=sites)
    merged, new_state, report = fr.merge(heads, _logits_for(target), state, fr.FedReMaParams())
    assert report.selected == {"a": ("a", "b"), "b": ("a", "b"), "c": ("c", "d"), "d": ("c", "d")}
    np.testing.assert_allclose(merged["a"], [0.5, 0.5])
    np.testing.assert_allclose(merged["d"], [2.5, 2.5])  # read from the snapshot, not merged "a"
    np.testing.assert_array_equal(heads["a"], [0.0, 0.0])  # inputs untouched
    assert new_state.frequency[0].tolist() == [1, 1, 0, 0]
    assert new_state.ccp_rounds == 1 and len(new_state.gap_history) == 1
    assert state.frequency.sum() == 0  # old state untouched


def test_after_ccp_heads_are_frequency_weighted_and_frozen():
    sites = ("a", "b", "c")
    freq = np.array([[3, 1, 0], [1, 2, 2], [0, 0, 4]])
    state = fr.FedReMaState(sites=sites, in_ccp=False, frequency=freq, gap_history=(0.5, 0.1))
    heads = {"a": np.array([0.0]), "b": np.array([4.0]), "c": np.array([8.0])}
    merged, new_state, report = fr.merge(heads, None, state, fr.FedReMaParams())
    np.testing.assert_allclose(merged["a"], [1.0])  # (3*0 + 1*4) / 4
    np.testing.assert_allclose(merged["b"], [4.8])  # (1*0 + 2*4 + 2*8) / 5
    np.testing.assert_allclose(merged["c"], [8.0])
    assert new_state is state and not report.in_ccp


def test_partial_participation_is_indexed_by_site_not_upload_order():
    sites = ("a", "b", "c")
    freq = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]])
    state = fr.FedReMaState(sites=sites, in_ccp=False, frequency=freq)
    # "b" is absent; dict order deliberately reversed.
    merged, _, _ = fr.merge(
        {"c": np.array([6.0]), "a": np.array([2.0])}, None, state, fr.FedReMaParams()
    )
    assert set(merged) == {"a", "c"}
    np.testing.assert_allclose(merged["a"], [4.0])
    np.testing.assert_allclose(merged["c"], [4.0])


def test_ccp_ends_permanently_when_the_gap_collapses():
    sites = ("a", "b", "c")
    heads = {s: np.zeros(1) for s in sites}
    params = fr.FedReMaParams(delta=0.5)
    state = fr.FedReMaState(sites=sites)
    clear = np.array([[1, 0.9, 0.1], [0.9, 1, 0.1], [0.5, 0.1, 1]])
    flat = np.array([[1, 0.5, 0.49], [0.5, 1, 0.49], [0.5, 0.49, 1]])
    _, state, r1 = fr.merge(heads, _logits_for(clear), state, params)
    assert state.in_ccp and not r1.ccp_ended
    _, state, r2 = fr.merge(heads, _logits_for(flat), state, params)
    assert r2.ccp_ended and not state.in_ccp
    _, state2, r3 = fr.merge(heads, None, state, params)
    assert not r3.in_ccp and state2.gap_history == state.gap_history


def test_self_weight_keeps_part_of_the_own_head():
    sites = ("a", "b")
    state = fr.FedReMaState(sites=sites, in_ccp=False, frequency=np.ones((2, 2), dtype=np.int64))
    heads = {"a": np.array([0.0]), "b": np.array([2.0])}
    merged, _, _ = fr.merge(heads, None, state, fr.FedReMaParams(self_weight=0.75))
    np.testing.assert_allclose(merged["a"], [0.25])  # 0.75*0 + 0.25*mean(0, 2)


def test_state_round_trips_through_json():
    state = fr.FedReMaState(
        sites=("a", "b"),
        in_ccp=False,
        frequency=np.array([[2, 1], [0, 3]]),
        gap_history=(0.3, 0.1),
        ccp_rounds=2,
    )
    again = fr.FedReMaState.from_json(state.to_json())
    assert again.sites == state.sites and again.in_ccp == state.in_ccp
    np.testing.assert_array_equal(again.frequency, state.frequency)
    assert again.gap_history == state.gap_history and again.ccp_rounds == 2


def test_unknown_site_is_refused():
    state = fr.FedReMaState(sites=("a",))
    with pytest.raises(ValueError, match="not in the roster"):
        fr.merge({"zz": np.zeros(1)}, None, state, fr.FedReMaParams())


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 7), seed=st.integers(0, 10_000))
def test_merge_is_invariant_to_the_order_heads_arrive_in(n, seed):
    rng = np.random.default_rng(seed)
    sites = tuple(f"s{k}" for k in range(n))
    heads = {s: rng.normal(size=3) for s in sites}
    logits = rng.normal(size=(n, n, 2, 4))
    state = fr.FedReMaState(sites=sites)
    m1, s1, _ = fr.merge(heads, logits, state, fr.FedReMaParams())
    shuffled = dict(sorted(heads.items(), key=lambda kv: rng.random()))
    m2, s2, _ = fr.merge(shuffled, logits, state, fr.FedReMaParams())
    for s in sites:
        np.testing.assert_allclose(m1[s], m2[s])
        # Every merged head is a convex combination: it lies inside the heads' bounding box.
        stack = np.stack(list(heads.values()))
        assert np.all(m1[s] <= stack.max(0) + 1e-12) and np.all(m1[s] >= stack.min(0) - 1e-12)
    np.testing.assert_array_equal(s1.frequency, s2.frequency)
    assert np.all(np.diag(s1.frequency) == 1)


# ------------------------------------------------------------- the default variant's rules
# (docs/fedrema.md, "What the default changes"); the paper's rules above stay the reference.


def test_paper_rules_are_the_params_defaults_and_the_config_holds_the_tuned_ones():
    from fedrema_cli.methods.fedrema import FedReMaOptions

    assert fr.FedReMaParams() == fr.PAPER
    assert fr.PAPER.similarity == "softmax" and fr.PAPER.self_weight is None
    tuned = fr.params_from(FedReMaOptions())
    assert tuned.similarity == "centered" and tuned.probe_samples == 64
    assert tuned.smoothing == 0.5 and tuned.min_similarity == 0.0
    assert tuned.self_weight == 0.5 and tuned.min_ccp_rounds == 5 and tuned.global_weight == 0.0
    assert tuned.shared_probe and not fr.PAPER.shared_probe


def _block_logits(rng: np.random.Generator, blocks: list[int], noise: float) -> np.ndarray:
    """Heads on one shared probe: a common part, a part per block, and per-head noise."""
    samples, classes = 16, 4
    common = rng.normal(size=(samples, classes)) * 5
    per_block = {b: rng.normal(size=(samples, classes)) for b in set(blocks)}
    return np.stack(
        [common + per_block[b] + noise * rng.normal(size=(samples, classes)) for b in blocks]
    )


def test_centered_similarity_ignores_what_all_heads_share_and_what_softmax_ignores():
    rng = np.random.default_rng(0)
    z = _block_logits(rng, [0, 0, 1, 1, 2], noise=0.0)
    s = fr.centered_similarity(z)
    np.testing.assert_allclose(s, s.T)
    np.testing.assert_allclose(np.diag(s), 1.0)
    assert s[0, 1] == pytest.approx(1.0) and s[2, 3] == pytest.approx(1.0)
    assert s[0, 2] < 0.5 and s[0, 4] < 0.5
    shifted = z + rng.normal(size=(1, 16, 1)) + rng.normal(size=(1, 16, 4)) * 7
    np.testing.assert_allclose(fr.centered_similarity(shifted), s, atol=1e-12)
    same = np.stack([z[0], z[0]])  # identical heads: nothing sets them apart, no direction
    np.testing.assert_array_equal(fr.centered_similarity(same), np.eye(2))


def test_centered_merge_selects_exactly_the_block_peers_through_noise():
    rng = np.random.default_rng(3)
    blocks = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    sites = tuple(f"s{k:02d}" for k in range(len(blocks)))
    heads = {s: rng.normal(size=5) for s in sites}
    logits = _block_logits(rng, blocks, noise=0.3)[None]  # one shared probe
    params = fr.FedReMaParams(similarity="centered", min_similarity=0.0)
    _, _, report = fr.merge(heads, logits, fr.FedReMaState(sites=sites), params)
    for k, site in enumerate(sites):
        expected = {sites[j] for j, b in enumerate(blocks) if b == blocks[k]}
        assert set(report.selected[site]) == expected


def test_min_similarity_lets_a_site_with_no_like_peer_keep_its_own_head():
    sites = ("a", "b", "c")
    heads = {"a": np.array([0.0]), "b": np.array([10.0]), "c": np.array([20.0])}
    # Three mutually unlike heads: centered cosines are all negative (-0.5).
    logits = np.zeros((1, 3, 1, 3))
    for k in range(3):
        logits[0, k, 0, k] = 1.0
    params = fr.FedReMaParams(similarity="centered", min_similarity=0.0)
    merged, state, report = fr.merge(heads, logits, fr.FedReMaState(sites=sites), params)
    assert report.selected == {"a": ("a",), "b": ("b",), "c": ("c",)}
    np.testing.assert_allclose(merged["b"], [10.0])
    paper = fr.FedReMaParams(similarity="centered")  # the paper's MaxDiff always takes a peer
    _, _, report = fr.merge(heads, logits, fr.FedReMaState(sites=sites), paper)
    assert all(len(v) == 2 for v in report.selected.values())
    assert np.diag(state.frequency).tolist() == [1, 1, 1]


def test_smoothing_is_an_ema_by_roster_position_and_survives_absent_sites():
    prev = np.full((3, 3), np.nan)
    prev[np.ix_([0, 2], [0, 2])] = [[1.0, 0.2], [0.2, 1.0]]
    cur = np.array([[1.0, 0.8, 0.6], [0.8, 1.0, -0.4], [0.6, -0.4, 1.0]])
    out = fr.smooth(prev, cur, [0, 1, 2], 0.5, 3)
    assert out[0, 2] == pytest.approx(0.5 * 0.2 + 0.5 * 0.6)
    assert out[0, 1] == pytest.approx(0.8)  # never seen before: this round's value
    partial = fr.smooth(out, np.array([[1.0, -1.0], [-1.0, 1.0]]), [0, 2], 0.5, 3)
    assert partial[0, 1] == out[0, 1]  # site 1 absent: its pairs are untouched
    assert partial[0, 2] == pytest.approx(0.5 * out[0, 2] - 0.5)
    assert np.isnan(prev[0, 1])  # inputs untouched


def test_state_with_a_smoothed_similarity_round_trips_through_json():
    sim = np.array([[1.0, np.nan], [0.3, 1.0]])
    state = fr.FedReMaState(sites=("a", "b"), similarity=sim)
    data = state.to_json()
    assert data["similarity"] == [[1.0, None], [0.3, 1.0]]
    import json

    again = fr.FedReMaState.from_json(json.loads(json.dumps(data)))
    np.testing.assert_array_equal(np.isnan(again.similarity), np.isnan(sim))
    assert again.similarity[1, 0] == 0.3


def test_min_ccp_rounds_keeps_the_period_open_despite_an_early_collapse():
    sites = ("a", "b", "c")
    heads = {s: np.zeros(1) for s in sites}
    clear = np.array([[1, 0.9, 0.1], [0.9, 1, 0.1], [0.5, 0.1, 1]])
    flat = np.array([[1, 0.5, 0.49], [0.5, 1, 0.49], [0.5, 0.49, 1]])
    params = fr.FedReMaParams(min_ccp_rounds=3)
    state = fr.FedReMaState(sites=sites)
    _, state, _ = fr.merge(heads, _logits_for(clear), state, params)
    _, state, r2 = fr.merge(heads, _logits_for(flat), state, params)
    assert state.in_ccp and not r2.ccp_ended  # the paper's rule alone would have ended it
    _, state, r3 = fr.merge(heads, _logits_for(flat), state, params)
    assert r3.ccp_ended and not state.in_ccp


def test_global_weight_mixes_in_the_mean_of_all_heads_after_self_weight():
    sites = ("a", "b", "c")
    freq = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]])
    state = fr.FedReMaState(sites=sites, in_ccp=False, frequency=freq)
    heads = {"a": np.array([0.0]), "b": np.array([4.0]), "c": np.array([8.0])}
    params = fr.FedReMaParams(self_weight=0.5, global_weight=0.25)
    merged, _, _ = fr.merge(heads, None, state, params)
    # a: 0.5*0 + 0.5*mean(0, 4) = 1; then 0.75*1 + 0.25*mean(0, 4, 8) = 1.75
    np.testing.assert_allclose(merged["a"], [1.75])
    np.testing.assert_allclose(merged["c"], [0.75 * 8 + 0.25 * 4])


@pytest.mark.parametrize(
    "bad",
    [
        {"similarity": "weights"},
        {"smoothing": 1.0},
        {"global_weight": 1.5},
        {"min_ccp_rounds": -1},
        {"probe_samples": 0},
    ],
)
def test_bad_knobs_are_refused(bad):
    with pytest.raises(ValueError):
        fr.FedReMaParams(**bad)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 7), seed=st.integers(0, 10_000))
def test_tuned_merge_is_order_invariant_and_convex(n, seed):
    rng = np.random.default_rng(seed)
    sites = tuple(f"s{k}" for k in range(n))
    heads = {s: rng.normal(size=3) for s in sites}
    logits = rng.normal(size=(1, n, 8, 4))
    from fedrema_cli.methods.fedrema import FedReMaOptions

    params = replace_global(fr.params_from(FedReMaOptions()), rng.uniform(0, 1))
    state = fr.FedReMaState(sites=sites)
    m1, s1, _ = fr.merge(heads, logits, state, params)
    shuffled = dict(sorted(heads.items(), key=lambda kv: rng.random()))
    m2, s2, _ = fr.merge(shuffled, logits, state, params)
    stack = np.stack(list(heads.values()))
    for s in sites:
        np.testing.assert_allclose(m1[s], m2[s])
        assert np.all(m1[s] <= stack.max(0) + 1e-12) and np.all(m1[s] >= stack.min(0) - 1e-12)
    np.testing.assert_array_equal(s1.frequency, s2.frequency)
    np.testing.assert_allclose(s1.similarity, s2.similarity)


def replace_global(params: fr.FedReMaParams, weight: float) -> fr.FedReMaParams:
    from dataclasses import replace

    return replace(params, global_weight=weight)
