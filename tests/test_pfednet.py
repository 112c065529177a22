"""pFedNet's server step pinned on small hand-made matrices (algorithms.md §2, §4 "pFedNet")."""

from __future__ import annotations

from dataclasses import replace

import cvxpy as cp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrema_cli.merging import pfednet as pf

PATH3 = pf.Graph(3, ((0, 1), (1, 2)))
CONVERGED = replace(pf.TABULAR, iterations=5000, tol=1e-11)


def _params(**kw: object) -> pf.PFedNetParams:
    return replace(pf.TABULAR, eta_schedule="constant", **kw)


# --- graph -----------------------------------------------------------------------------------


def test_incidence_of_a_three_node_path_and_its_laplacian():
    q = pf.incidence(PATH3)
    np.testing.assert_array_equal(q, [[1, 0], [-1, 1], [0, -1]])
    np.testing.assert_array_equal(q @ q.T, [[1, -1, 0], [-1, 2, -1], [0, -1, 1]])


def test_knn_graph_is_symmetrized_so_a_one_sided_choice_keeps_its_edge():
    # points 0, 1, 3, 10 with k = 1: 0->1, 1->0, 3->1, 10->3; 3 did not pick 10, 10 picked 3
    d = pf.signal_distances(np.array([[0.0], [1.0], [3.0], [10.0]]))
    assert pf.knn_graph(d, k=1).edges == ((0, 1), (1, 2), (2, 3))


def test_knn_graph_breaks_distance_ties_towards_the_lower_index():
    # site 0 is at distance 1 from both 1 and 2: it picks 1
    d = pf.signal_distances(np.array([[0.0], [1.0], [-1.0], [5.0]]))
    assert pf.knn_graph(d, k=1).edges == ((0, 1), (0, 2), (1, 3))


def test_knn_graph_with_few_sites_links_everyone_and_never_crashes():
    assert pf.knn_graph(np.zeros((3, 3)), k=3).edges == ((0, 1), (0, 2), (1, 2))
    assert pf.knn_graph(np.array([[0.0, 2.0], [2.0, 0.0]]), k=3).edges == ((0, 1),)
    assert pf.knn_graph(np.zeros((1, 1))).edges == ()
    with pytest.raises(ValueError):
        pf.knn_graph(np.zeros((2, 3)))
    with pytest.raises(ValueError):
        pf.knn_graph(np.array([[0.0, np.nan], [np.nan, 0.0]]))
    with pytest.raises(ValueError):
        pf.knn_graph(np.zeros((3, 3)), k=0)


def test_graph_refuses_bad_edges_and_permutes_by_renaming_sites():
    with pytest.raises(ValueError):
        pf.Graph(3, ((1, 0),))
    with pytest.raises(ValueError):
        pf.Graph(3, ((0, 3),))
    with pytest.raises(ValueError):
        pf.Graph(3, ((1, 2), (0, 1)))
    # rows reordered as x[perm] with perm = (2, 0, 1): old 2 is new 0, old 0 new 1, old 1 new 2
    assert PATH3.permuted((2, 0, 1)).edges == ((0, 2), (1, 2))


def test_probe_signals_are_softmax_outputs_and_link_the_heads_that_agree():
    logits = np.zeros((4, 2, 3))
    logits[0] = logits[1] = [[3.0, 0.0, 0.0], [0.0, 3.0, 0.0]]
    logits[2] = logits[3] = [[0.0, 0.0, 3.0], [0.0, 0.0, 3.0]]
    logits[3] += 5.0  # a constant shift: same probabilities
    s = pf.probe_signals(logits)
    assert s.shape == (4, 6)
    np.testing.assert_allclose(s.reshape(4, 2, 3).sum(-1), 1.0)
    d = pf.signal_distances(s)
    assert d[0, 1] == 0 and d[2, 3] == pytest.approx(0.0, abs=1e-12) and d[0, 2] > 1
    assert pf.knn_graph(d, k=1).edges == ((0, 1), (2, 3))
    with pytest.raises(ValueError):
        pf.probe_signals(np.zeros((4, 3)))


# --- the ADMM pieces -------------------------------------------------------------------------


def test_cached_eigendecomposition_gives_the_inverse_for_any_step_size():
    factor = pf.GraphFactor.of(PATH3)
    lap = factor.q @ factor.q.T
    for c in (0.01, 0.1, 2.5):
        np.testing.assert_allclose(factor.inverse(c), np.linalg.inv(np.eye(3) + c * lap))
    with pytest.raises(ValueError):
        factor.eigenvectors[0, 0] = 1.0  # read-only: a shared factor cannot be corrupted


def test_z_step_equals_a_direct_solve_of_its_normal_equations():
    rng = np.random.default_rng(0)
    graph = pf.Graph(4, ((0, 1), (1, 2), (1, 3), (2, 3)))
    factor = pf.GraphFactor.of(graph)
    q = pf.incidence(graph)
    centre, g = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    w, u = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    for eta, rho in ((0.1, 1.0), (0.05, 2.0)):
        op = pf.ZStep.of(factor, eta=eta, rho=rho)
        z = pf.z_update(centre, g, w, u, op)
        # (I/eta + rho QQ^T) Z = centre/eta - G/N + rho Q (W - U)
        direct = np.linalg.solve(
            np.eye(4) / eta + rho * q @ q.T, centre / eta - g / 4 + rho * q @ (w - u)
        )
        np.testing.assert_allclose(z, direct, atol=1e-12)
        # and it is the minimizer: the gradient of the Z-subproblem vanishes there
        grad = g / 4 + (z - centre) / eta + rho * q @ (q.T @ z - w + u)
        np.testing.assert_allclose(grad, 0.0, atol=1e-10)


def test_group_soft_threshold_on_known_vectors():
    v = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0], [-6.0, 8.0]])
    out = pf.group_shrink(v, 1.0)
    np.testing.assert_allclose(out, [[2.4, 3.2], [0.0, 0.0], [0.0, 0.0], [-5.4, 7.2]])
    np.testing.assert_array_equal(pf.group_shrink(v, 0.0), v)
    np.testing.assert_array_equal(pf.group_shrink(v, 10.0), 0.0)
    # the W-step thresholds Q^T Z + U at lam / rho
    qz, u = np.array([[2.0, 0.0]]), np.array([[1.0, 4.0]])  # sum (3, 4), norm 5
    np.testing.assert_allclose(pf.w_update(qz, u, lam=2.0, rho=2.0), [[2.4, 3.2]])
    np.testing.assert_allclose(pf.w_update(qz, u, lam=5.0, rho=1.0), [[0.0, 0.0]])


def test_dual_update_adds_the_constraint_violation():
    qz = np.array([[1.0, 2.0], [0.0, -1.0]])
    w = np.array([[0.5, 2.0], [0.0, 0.0]])
    u = np.array([[0.1, 0.1], [1.0, 1.0]])
    np.testing.assert_allclose(pf.dual_update(qz, w, u), [[0.6, 0.1], [1.0, 0.0]])


def test_edge_products_match_the_dense_incidence():
    rng = np.random.default_rng(1)
    factor = pf.GraphFactor.of(PATH3)
    z, x = rng.normal(size=(3, 2)), rng.normal(size=(2, 2))
    np.testing.assert_allclose(factor.differences(z), [z[0] - z[1], z[1] - z[2]])
    np.testing.assert_allclose(factor.spread(x), factor.q @ x)


def test_clusters_are_components_of_the_fused_edges_labelled_by_lowest_site():
    factor = pf.GraphFactor.of(pf.Graph(5, ((0, 1), (1, 2), (2, 3), (3, 4))))
    z = np.array([[5.0, 5.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    assert pf.clusters(z, factor, 1e-9) == ((0, 1, 2, 2, 3), 1)
    assert pf.clusters(z, factor, 1.0) == ((0, 1, 1, 1, 1), 3)


# --- the full step ---------------------------------------------------------------------------


def test_admm_matches_a_general_convex_solver():
    rng = np.random.default_rng(2)
    n, d, lam, eta = 6, 4, 0.3, 0.5
    graph = pf.knn_graph(pf.signal_distances(rng.normal(size=(n, 2))), k=2)
    factor = pf.GraphFactor.of(graph)
    z_t, g = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    z = cp.Variable((n, d))
    q = pf.incidence(graph)
    problem = cp.Problem(
        cp.Minimize(
            cp.sum(cp.multiply(g, z)) / n
            + lam * cp.sum(cp.norm(q.T @ z, 2, axis=1))
            + cp.sum_squares(z - z_t) / (2 * eta)
        )
    )
    problem.solve(solver="CLARABEL")
    out = pf.admm_prox(
        z_t, g, factor, replace(CONVERGED, lam=lam, eta=eta, eta_schedule="constant")
    )
    np.testing.assert_allclose(out.z, z.value, atol=1e-4)
    assert out.objective == pytest.approx(problem.value, abs=1e-6)
    assert out.iterations < 5000 and out.primal_residual <= 1e-11


def test_admm_matches_the_solver_where_the_solution_fuses_sites():
    rng = np.random.default_rng(3)
    n, d, lam, eta = 6, 3, 0.2, 1.0
    graph = pf.Graph(n, ((0, 1), (1, 2), (2, 3), (3, 4), (4, 5)))
    groups = np.array([0, 0, 0, 1, 1, 1])
    z_t = np.array([[0.0, 1.0, 2.0], [3.0, -1.0, 0.0]])[groups] + 0.05 * rng.normal(size=(n, d))
    g = np.zeros((n, d))
    z = cp.Variable((n, d))
    q = pf.incidence(graph)
    objective = cp.sum(cp.norm(q.T @ z, 2, axis=1)) * lam + cp.sum_squares(z - z_t) / (2 * eta)
    cp.Problem(cp.Minimize(objective)).solve(solver="CLARABEL")
    out = pf.admm_prox(z_t, g, pf.GraphFactor.of(graph), replace(CONVERGED, lam=lam, eta=eta))
    np.testing.assert_allclose(out.z, z.value, atol=1e-4)
    assert out.clusters == (0, 0, 0, 1, 1, 1)
    assert out.fused_edges == out.thresholded_edges == 4


def test_lambda_zero_is_a_plain_gradient_step():
    rng = np.random.default_rng(4)
    factor = pf.GraphFactor.of(PATH3)
    z_t, g = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    for params, step in ((replace(CONVERGED, lam=0.0), 1), (replace(pf.TABULAR, lam=0.0), 4)):
        out = pf.admm_prox(z_t, g, factor, params, step=step)
        np.testing.assert_allclose(out.z, z_t - params.step_size(step) * g / 3, atol=1e-10)
    assert pf.TABULAR.step_size(4) == pytest.approx(0.05)
    # from W = U = 0 the first Z-step smooths over the graph even at lam = 0; ADMM then
    # converges to the plain step, so one iteration is not yet there
    first = pf.admm_prox(z_t, g, factor, _params(lam=0.0, iterations=1))
    assert np.abs(first.z - (z_t - 0.1 * g / 3)).max() > 1e-3


def test_the_deep_variant_at_lambda_zero_still_smooths_over_the_graph():
    # moving centre, lam = 0: U stays 0, W = Q^T Z, so Z_K = M Z_t - K eta M G/N with
    # M = (I + eta rho QQ^T)^{-1}: 200 x 0.01 = 2 x G/N, smoothed once by M (not FedPer-like)
    rng = np.random.default_rng(4)
    factor = pf.GraphFactor.of(PATH3)
    z_t, g = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    out = pf.admm_prox(z_t, g, factor, replace(pf.DEEP, lam=0.0))
    m = factor.inverse(0.01)
    np.testing.assert_allclose(out.z, m @ (z_t - 2.0 * g / 3), atol=1e-10)


def test_large_lambda_fuses_each_connected_component_to_the_mean_step():
    rng = np.random.default_rng(5)
    graph = pf.Graph(5, ((0, 1), (1, 2), (3, 4)))
    z_t, g = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    params = replace(CONVERGED, lam=1e3, eta=0.5, eta_schedule="constant")
    out = pf.admm_prox(z_t, g, pf.GraphFactor.of(graph), params)
    plain = z_t - 0.5 * g / 5
    np.testing.assert_allclose(out.z[:3], np.broadcast_to(plain[:3].mean(0), (3, 3)), atol=1e-8)
    np.testing.assert_allclose(out.z[3:], np.broadcast_to(plain[3:].mean(0), (2, 3)), atol=1e-8)
    assert out.clusters == (0, 0, 0, 1, 1) and out.fused_edges == 3


def _official_tabular(z_t, g, q, lam, eta, k):
    """The tabular code's ``ADMM`` class as the notes give it: one column per site, rho = 1."""
    zt, grad = z_t.T, g.T
    n = q.shape[0]
    sigma, p = np.linalg.eigh(q @ q.T)
    w = np.zeros((zt.shape[0], q.shape[1]))
    omega = np.zeros_like(w)
    for _ in range(k):
        z = (
            (zt + eta * (w @ q.T - omega @ q.T - grad / n))
            @ p
            @ np.diag(1 / (1 + eta * sigma))
            @ p.T
        )
        v = z @ q + omega
        norms = np.linalg.norm(v, axis=0)
        w = np.maximum(1 - lam / np.where(norms > 0, norms, 1), 0) * v
        omega = omega + z @ q - w
    return z.T


def _official_deep(z_t, g, q, lam, eta, rho, k):
    """The deep code's ``ClusterClient`` as the notes give it: moving centre, unscaled dual."""
    z, grad = z_t.T.copy(), g.T
    n = q.shape[0]
    w = np.zeros((z.shape[0], q.shape[1]))
    omega = np.zeros_like(w)
    inv = np.linalg.inv(np.eye(n) + eta * rho * q @ q.T)
    for _ in range(k):
        z = (z + eta * (omega @ q.T - grad / n + rho * w @ q.T)) @ inv
        v = z @ q - omega / rho
        norms = np.linalg.norm(v, axis=0)
        w = np.maximum(1 - lam / (rho * np.where(norms > 0, norms, 1)), 0) * v
        omega = omega + rho * (w - z @ q)
    return z.T


def test_the_named_defaults_reproduce_the_official_updates():
    rng = np.random.default_rng(6)
    graph = pf.knn_graph(pf.signal_distances(rng.normal(size=(7, 3))))
    factor, q = pf.GraphFactor.of(graph), pf.incidence(graph)
    z_t, g = rng.normal(size=(7, 10)), 30 * rng.normal(size=(7, 10))
    out = pf.admm_prox(z_t, g, factor, pf.TABULAR, step=3)
    ref = _official_tabular(z_t, g, q, lam=5.0, eta=0.1 / np.sqrt(3), k=25)
    np.testing.assert_allclose(out.z, ref, atol=1e-9)
    out = pf.admm_prox(z_t, g, factor, pf.DEEP)
    np.testing.assert_allclose(out.z, _official_deep(z_t, g, q, 72.0, 0.01, 1.0, 200), atol=1e-9)
    assert (pf.DEEP.lam, pf.DEEP.eta, pf.DEEP.rho, pf.DEEP.iterations) == (72.0, 0.01, 1.0, 200)
    assert (pf.TABULAR.lam, pf.TABULAR.iterations, pf.TABULAR.k) == (5.0, 25, 3)


def test_admm_refuses_bad_input_and_leaves_its_inputs_alone():
    factor = pf.GraphFactor.of(PATH3)
    z_t, g = np.ones((3, 2)), np.full((3, 2), 0.5)
    out = pf.admm_prox(z_t, g, factor)
    assert out.z is not z_t
    np.testing.assert_array_equal(z_t, 1.0)
    np.testing.assert_array_equal(g, 0.5)
    with pytest.raises(ValueError):
        pf.admm_prox(np.ones((2, 2)), np.ones((2, 2)), factor)
    with pytest.raises(ValueError):
        pf.admm_prox(z_t, np.ones((3, 3)), factor)
    with pytest.raises(ValueError):
        pf.admm_prox(z_t, np.full((3, 2), np.nan), factor)
    with pytest.raises(ValueError):
        pf.PFedNetParams(lam=-1.0)
    with pytest.raises(ValueError):
        pf.PFedNetParams(centre="drifting")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pf.TABULAR.step_size(0)


def test_a_graph_without_edges_is_the_plain_step():
    factor = pf.GraphFactor.of(pf.Graph(1, ()))
    out = pf.admm_prox(np.ones((1, 2)), np.ones((1, 2)), factor, _params(eta=0.5))
    np.testing.assert_allclose(out.z, [[0.5, 0.5]])
    assert out.clusters == (0,) and out.fused_edges == 0


@st.composite
def _cases(draw):
    n = draw(st.integers(2, 6))
    d = draw(st.integers(1, 3))
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    edges = tuple(p for p in pairs if draw(st.booleans()))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([0.1, 1.0, 10.0]))
    z_t, g = scale * rng.normal(size=(n, d)), scale * rng.normal(size=(n, d))
    lam = draw(st.sampled_from([0.0, 0.05, 1.0, 5.0]))
    eta = draw(st.sampled_from([0.01, 0.1, 1.0]))
    perm = rng.permutation(n)
    return pf.Graph(n, edges), z_t, g, lam, eta, perm


@settings(max_examples=60, deadline=None)
@given(_cases())
def test_the_step_is_equivariant_under_permuting_sites(case):
    graph, z_t, g, lam, eta, perm = case
    params = _params(lam=lam, eta=eta)
    out = pf.admm_prox(z_t, g, pf.GraphFactor.of(graph), params)
    moved = pf.admm_prox(z_t[perm], g[perm], pf.GraphFactor.of(graph.permuted(perm)), params)
    np.testing.assert_allclose(moved.z, out.z[perm], atol=1e-9 * (1 + np.abs(out.z).max()))


@settings(max_examples=60, deadline=None)
@given(_cases())
def test_the_objective_never_exceeds_its_value_at_the_start(case):
    graph, z_t, g, lam, eta, _ = case
    out = pf.admm_prox(z_t, g, pf.GraphFactor.of(graph), replace(CONVERGED, lam=lam, eta=eta))
    assert out.objective <= out.objective_at_start + 1e-9 * (1 + abs(out.objective_at_start))


# --- the DP label histogram ------------------------------------------------------------------


def test_dp_histogram_is_seeded_reports_its_epsilon_and_post_processes():
    counts = np.array([40, 0, 3, 12])
    a = pf.dp_label_histogram(counts, 0.5, np.random.default_rng(7))
    b = pf.dp_label_histogram(counts, 0.5, np.random.default_rng(7))
    np.testing.assert_array_equal(a.counts, b.counts)
    assert a.epsilon == 0.5 and a.mechanism == "discrete-laplace"
    assert a.counts.dtype == np.int64 and not np.array_equal(a.counts, counts)
    assert (a.ratios >= 0).all() and a.ratios.sum() == pytest.approx(1.0)
    np.testing.assert_array_equal(counts, [40, 0, 3, 12])
    empty = pf.dp_label_histogram([0, 0], 50.0, np.random.default_rng(0))  # noise ~never > 0
    np.testing.assert_allclose(empty.ratios, [0.5, 0.5])


def test_dp_histogram_noise_is_unbiased_with_the_discrete_laplace_law():
    counts = np.array([50, 0, 3, 20])
    eps = 0.5
    rng = np.random.default_rng(8)
    draws = np.stack([pf.dp_label_histogram(counts, eps, rng).counts for _ in range(4000)])
    noise = draws - counts
    var = 2 * np.exp(-eps) / (1 - np.exp(-eps)) ** 2  # ~7.83
    # mean: standard error sqrt(var / 4000) ~ 0.044 per bin; 0.25 is more than 5 of them
    np.testing.assert_allclose(noise.mean(axis=0), 0.0, atol=0.25)
    np.testing.assert_allclose(noise.var(axis=0), var, rtol=0.15)
    # the privacy comes from the law's shape: P(0) / P(1) = exp(eps)
    flat = noise.ravel()
    ratio = (flat == 0).mean() / (flat == 1).mean()
    assert ratio == pytest.approx(np.exp(eps), rel=0.1)


def test_dp_histogram_refuses_bad_input():
    rng = np.random.default_rng(0)
    for counts, eps in (([1, 2], 0.0), ([1, 2], np.inf), ([1, -2], 1.0), ([1.5], 1.0), ([], 1.0)):
        with pytest.raises(ValueError):
            pf.dp_label_histogram(counts, eps, rng)
