r"""pFedNet's server step (Zhao et al., IEEE TPAMI 47(1):433-449, 2025; arXiv 2306.14483), pure.

Read from the official code (ApplicationTechnologyOfMedicalBigData/pFedNet-code@0e40514:
``codeOnPrivateData/pFedNet/optimizerForServer.py`` class ``ADMM``, and
``codeOnPublicData/FedStudy_weight/strategy/pFedNet.py`` class ``ClusterClient``; notes in
shared/reference/algorithms.md §2 and §4):

- Each site n has personalized components z_n; sites that are alike are pulled to *equal*
  components by a fused group lasso over the edges of a k-nearest-neighbour similarity graph,
  ``lam * sum_{(i,j) in E} ||z_i - z_j||_2``.
- The coordinator takes one linearized proximal step on the sites' personalized updates G:
  ``Z+ = argmin_Z (1/N)<G, Z> + lam ||Z Q||_{1,2} + 1/(2 eta) ||Z - Z_t||_F^2``, by ADMM whose
  Z-step is a closed form that reuses one eigendecomposition of Q Q^T (the paper's
  "computational cost" trick), then a per-edge group soft-threshold, then the dual update.

**Convention: one row per site.** ``Z`` has shape (N, d2), row n is z_n (the paper and the code
use one column per site, Z in R^{d2 x N}; ours is its transpose). Q is the (N, |E|) incidence
matrix, so the paper's ``Z Q`` is our ``Q^T Z`` (one row per edge, z_i - z_j). Edges are
indexed in the order of ``Graph.edges``.

**The graph is built from DP-covered signals only.** The official code builds it from raw
input covariances or label ratios computed centrally, outside any privacy guarantee. Here it
comes from (a) the heads' softmax outputs on a shared probe (``probe_signals``; the heads are
what DP-SGD already covers, as in FedReMa's probe) or (b) a label histogram released with its
own epsilon (``dp_label_histogram``), which the caller records in the ledger.

Nothing here mutates its inputs.

>>> g = knn_graph(signal_distances(np.array([[0.0], [0.1], [5.0], [5.2]])), k=1)
>>> g.edges
((0, 1), (2, 3))
>>> factor = GraphFactor.of(g)
>>> z_t = np.array([[1.0], [1.2], [-3.0], [-3.4]])
>>> params = PFedNetParams(lam=0.5, eta=1.0, eta_schedule="constant", iterations=500)
>>> out = admm_prox(z_t, np.zeros_like(z_t), factor, params)
>>> np.round(out.z[:, 0], 3).tolist(), out.clusters
([1.1, 1.1, -3.2, -3.2], (0, 0, 1, 1))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from scipy import sparse

from fedrema_cli.merging.fedrema import softmax

Centre = Literal["fixed", "moving"]
Schedule = Literal["inv_sqrt", "constant"]


@dataclass(frozen=True)
class PFedNetParams:
    """Knobs of the server step; the defaults are the official tabular ones (``TABULAR``).

    - ``lam``: weight of the fused group lasso.
    - ``eta``, ``eta_schedule``: the proximal step size at step s is ``eta / sqrt(s)``
      (``"inv_sqrt"``, the tabular code's 0.1/sqrt(s), s = 1..99 restarting every outer
      iteration) or ``eta`` (``"constant"``, the deep code's 0.01).
    - ``rho``: ADMM penalty; ``iterations``: ADMM iterations per step (tabular K = 25, deep 200).
    - ``centre``: ``"fixed"`` solves the prox problem above with Z_t fixed (the tabular
      ``ADMM`` class, and the mathematically clean step). ``"moving"`` is the deep code's
      ``ClusterClient`` (reference notes §4 item 7): each ADMM iteration re-centres on the
      current iterate, so G/N is applied once per iteration (about ``iterations * eta`` times
      G/N in all) on top of the graph smoothing; it is not the prox of anything fixed.
    - ``tol``: stop early once the primal and dual residuals (Frobenius norms) are both
      below it; ``None`` runs every iteration, as the official code does.
    - ``fuse_tol``: two sites count as fused when ``||z_i - z_j||_2 <= fuse_tol``. After
      few iterations Z is only nearly fused: the edges whose W row is exactly 0
      (``ProxResult.thresholded_edges``) show sooner which edges the solution will fuse.
    - ``k``: neighbours per site in the similarity graph (official: 3).
    """

    lam: float = 5.0
    eta: float = 0.1
    eta_schedule: Schedule = "inv_sqrt"
    rho: float = 1.0
    iterations: int = 25
    centre: Centre = "fixed"
    tol: float | None = None
    fuse_tol: float = 1e-6
    k: int = 3

    def __post_init__(self) -> None:
        if not self.lam >= 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}")
        if not self.eta > 0 or not self.rho > 0:
            raise ValueError("eta and rho must be positive")
        if self.eta_schedule not in ("inv_sqrt", "constant"):
            raise ValueError(f"eta_schedule must be 'inv_sqrt' or 'constant': {self.eta_schedule}")
        if self.centre not in ("fixed", "moving"):
            raise ValueError(f"centre must be 'fixed' or 'moving', got {self.centre}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if self.tol is not None and not self.tol > 0:
            raise ValueError(f"tol must be positive, got {self.tol}")
        if not self.fuse_tol >= 0:
            raise ValueError(f"fuse_tol must be >= 0, got {self.fuse_tol}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")

    def step_size(self, step: int = 1) -> float:
        """eta at proximal step ``step`` (1-based): eta/sqrt(step), or eta if constant."""
        if step < 1:
            raise ValueError(f"step must be >= 1, got {step}")
        return self.eta / np.sqrt(step) if self.eta_schedule == "inv_sqrt" else self.eta


TABULAR = PFedNetParams()
"""Official tabular code (``settings.py``, ``optimizerForServer.ADMM``): lam 5, eta 0.1/sqrt(s),
rho 1, K = 25 ADMM iterations with Z_t fixed."""

DEEP = PFedNetParams(
    lam=72.0, eta=0.01, eta_schedule="constant", rho=1.0, iterations=200, centre="moving"
)
"""Official deep/imaging code (``strategy/pFedNet.py``, ``ClusterClient``): lam ("namda") 72,
eta 0.01, rho 1, 200 iterations with the moving centre (reference variant)."""

# --- the similarity graph ------------------------------------------------------------------


@dataclass(frozen=True)
class Graph:
    """An undirected graph over sites 0..n-1; ``edges`` are (i, j), i < j, sorted."""

    n: int
    edges: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")
        for i, j in self.edges:
            if not 0 <= i < j < self.n:
                raise ValueError(f"edge ({i}, {j}) is not (i, j) with 0 <= i < j < {self.n}")
        if list(self.edges) != sorted(set(self.edges)):
            raise ValueError("edges must be sorted and distinct")

    def permuted(self, perm: Sequence[int]) -> Graph:
        """The same graph with site ``perm[a]`` renamed ``a`` (rows reordered as ``x[perm]``)."""
        inverse = np.empty(self.n, dtype=np.int64)
        inverse[np.asarray(perm)] = np.arange(self.n)
        moved = {tuple(sorted((int(inverse[i]), int(inverse[j])))) for i, j in self.edges}
        return Graph(self.n, tuple(sorted(moved)))  # type: ignore[arg-type]


def signal_distances(signals: np.ndarray) -> np.ndarray:
    """Euclidean distances between the rows of ``signals`` (n, f), as sklearn's kNN uses."""
    x = np.asarray(signals, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"signals must have shape (sites, features), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("signals must be finite")
    diff = x[:, None, :] - x[None, :, :]
    return np.sqrt((diff * diff).sum(axis=-1))


def knn_graph(distances: np.ndarray, k: int = 3) -> Graph:
    """k-nearest-neighbour graph from an (n, n) distance matrix, symmetrized as A v A^T.

    Each site links to its k nearest other sites (the official ``kneighbors_graph``, k = 3,
    connectivity, no self loops). The official ``QMatrix`` kept only (i < j, A[i, j]) and so
    dropped edges whose only direction points to a lower index; we keep an edge when either
    site picked the other. Ties in distance go to the lower site index (stable sort), so the
    graph is a function of the matrix alone. With n <= k every site links to every other; with
    n = 2 the graph is one edge; with n = 1 it has none.
    """
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"distances must be a square matrix, got {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError("distances must be finite")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = d.shape[0]
    chosen: set[tuple[int, int]] = set()
    for i in range(n):
        peers = np.array([j for j in range(n) if j != i], dtype=np.int64)
        nearest = peers[np.argsort(d[i, peers], kind="stable")][:k]
        chosen.update((min(i, int(j)), max(i, int(j))) for j in nearest)
    return Graph(n, tuple(sorted(chosen)))


def probe_signals(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Per-site signal from the heads' outputs on one shared probe: softmax, flattened.

    ``logits[n]`` is head n on the shared probe, shape (n, samples, classes), as FedReMa's
    shared probe produces them. The Euclidean distance of two signals is the root of the sum
    over probe samples of the squared distance between the two heads' class probabilities.
    Heads are DP-SGD outputs, so the graph is post-processing of what DP already covers.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 3:
        raise ValueError(f"logits must have shape (sites, samples, classes), got {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logits must be finite")
    return softmax(z, temperature).reshape(z.shape[0], -1)


def incidence(graph: Graph) -> np.ndarray:
    """Q, shape (n, |E|): the column of edge (i, j) has +1 at row i and -1 at row j."""
    q = np.zeros((graph.n, len(graph.edges)))
    for m, (i, j) in enumerate(graph.edges):
        q[i, m], q[j, m] = 1.0, -1.0
    return q


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.flags.writeable = False
    return a


@dataclass(frozen=True)
class GraphFactor:
    """The graph with Q and the eigendecomposition Q Q^T = P diag(sigma) P^T, built once.

    ``(I + c Q Q^T)^{-1} = P diag(1 / (1 + c sigma)) P^T`` for every c, so one factor serves
    every round and every step size eta (the tabular code changes eta every step). Products
    with Q (two non-zeros per column) go through a sparse copy; the dense arrays are read-only.
    """

    graph: Graph
    q: np.ndarray = field(repr=False)
    eigenvectors: np.ndarray = field(repr=False)
    eigenvalues: np.ndarray = field(repr=False)
    _q: sparse.csr_array = field(repr=False, compare=False)
    _qt: sparse.csr_array = field(repr=False, compare=False)

    @classmethod
    def of(cls, graph: Graph) -> GraphFactor:
        q = incidence(graph)
        sigma, p = np.linalg.eigh(q @ q.T)
        from scipy import sparse  # imported here: the CLI starts without scipy

        sq = sparse.csr_array(q)
        return cls(
            graph, _frozen(q), _frozen(p), _frozen(np.clip(sigma, 0.0, None)), sq, sq.T.tocsr()
        )

    def inverse(self, c: float) -> np.ndarray:
        """(I + c Q Q^T)^{-1}, (n, n), from the cached eigenbasis: no new factorization."""
        p = self.eigenvectors
        return (p / (1.0 + c * self.eigenvalues)) @ p.T

    def differences(self, z: np.ndarray) -> np.ndarray:
        """Q^T Z: row m is z_i - z_j for edge m = (i, j); shape (|E|, d)."""
        return np.asarray(self._qt @ z).reshape(len(self.graph.edges), z.shape[1])

    def spread(self, x: np.ndarray) -> np.ndarray:
        """Q X for X of shape (|E|, d): each edge's row added at i and subtracted at j."""
        return np.asarray(self._q @ x).reshape(self.graph.n, x.shape[1])


@dataclass(frozen=True)
class ZStep:
    """M = (I + eta rho Q Q^T)^{-1} for one step's (eta, rho), built once per server step."""

    factor: GraphFactor
    eta: float
    rho: float
    m: np.ndarray = field(repr=False)

    @classmethod
    def of(cls, factor: GraphFactor, *, eta: float, rho: float) -> ZStep:
        return cls(factor, eta, rho, _frozen(factor.inverse(eta * rho)))


# --- the ADMM pieces --------------------------------------------------------------------------


def group_shrink(v: np.ndarray, threshold: float) -> np.ndarray:
    """Per-row group soft-threshold: row v_m becomes max(1 - threshold/||v_m||, 0) v_m."""
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    scale = np.maximum(1.0 - threshold / np.where(norms > 0, norms, 1.0), 0.0)
    return np.where(norms > 0, scale, 0.0) * v


def z_update(
    centre: np.ndarray, g: np.ndarray, w: np.ndarray, u: np.ndarray, op: ZStep
) -> np.ndarray:
    """Z-step, closed form: (I + eta rho Q Q^T)^{-1} [centre - eta G/N + eta rho Q (W - U)].

    The minimizer over Z of (1/N)<G, Z> + 1/(2 eta)||Z - centre||^2 + rho/2 ||Q^T Z - W + U||^2
    (U is the scaled dual). With rho = 1 this is the tabular code's update, transposed.
    """
    n = centre.shape[0]
    rhs = centre - (op.eta / n) * g + (op.eta * op.rho) * op.factor.spread(w - u)
    return op.m @ rhs


def w_update(qz: np.ndarray, u: np.ndarray, *, lam: float, rho: float) -> np.ndarray:
    """W-step: per-edge group soft-threshold of Q^T Z + U at lam/rho (``qz`` is Q^T Z)."""
    return group_shrink(qz + u, lam / rho)


def dual_update(qz: np.ndarray, w: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Scaled dual ascent: U + Q^T Z - W (``qz`` is Q^T Z)."""
    return u + qz - w


def objective(
    z: np.ndarray, z_t: np.ndarray, g: np.ndarray, factor: GraphFactor, *, lam: float, eta: float
) -> float:
    """(1/N)<G, Z> + lam sum_E ||z_i - z_j|| + 1/(2 eta)||Z - Z_t||_F^2, the prox objective."""
    n = z.shape[0]
    fused = float(np.linalg.norm(factor.differences(z), axis=1).sum())
    return float((g * z).sum() / n + lam * fused + ((z - z_t) ** 2).sum() / (2.0 * eta))


def clusters(z: np.ndarray, factor: GraphFactor, tol: float) -> tuple[tuple[int, ...], int]:
    """Connected components of the edges with ||z_i - z_j|| <= tol, and how many edges fused.

    Labels are 0, 1, ... in the order of each component's lowest site index.
    """
    graph = factor.graph
    fused = np.linalg.norm(factor.differences(z), axis=1) <= tol
    ends = np.asarray(graph.edges, dtype=np.int64).reshape(-1, 2)[fused]
    from scipy import sparse
    from scipy.sparse import csgraph

    adjacency = sparse.coo_array(
        (np.ones(len(ends)), (ends[:, 0], ends[:, 1])), shape=(graph.n, graph.n)
    )
    _, raw = csgraph.connected_components(adjacency, directed=False)
    _, first, canonical = np.unique(raw, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # component -> rank of its lowest site
    return tuple(int(order[c]) for c in canonical), int(fused.sum())


@dataclass(frozen=True)
class ProxResult:
    """Z+ and what the ADMM did, for logs and the benchmark."""

    z: np.ndarray
    w: np.ndarray  # edge variables, (|E|, d): exactly zero on edges the threshold fused
    u: np.ndarray  # scaled dual, (|E|, d)
    iterations: int
    primal_residual: float  # ||Q^T Z - W||_F at the end
    dual_residual: float  # rho ||Q (W - W_prev)||_F at the end
    fused_edges: int  # edges with ||z_i - z_j|| <= fuse_tol
    thresholded_edges: int  # edges whose W row the group soft-threshold set exactly to 0
    clusters: tuple[int, ...]  # component label per site
    objective: float  # prox objective at Z+ (centre Z_t)
    objective_at_start: float  # the same at Z_t


def admm_prox(
    z_t: np.ndarray,
    g: np.ndarray,
    factor: GraphFactor,
    params: PFedNetParams = TABULAR,
    *,
    step: int = 1,
) -> ProxResult:
    """One pFedNet server step on components ``z_t`` (N, d2) and updates ``g`` (N, d2).

    ``g`` is what the sites sent for their personalized part: gradients (tabular code) or
    deltas w_start - w_trained (deep code). With ``lam = 0`` the fixed-centre solution is
    ``z_t - eta g / N``, so with deltas ``eta = N`` hands every site its own trained
    components. W and U start at 0 each call, as in both official solvers; from there the
    first Z-step smooths over the graph even at ``lam = 0``, and the iterations converge to
    the solution geometrically (at K = 25 and eta = 0.1, to rounding on small graphs). The
    moving centre at ``lam = 0`` gives ``M (z_t - iterations eta g / N)`` with
    ``M = (I + eta rho Q Q^T)^{-1}``: the deep code smooths over the graph whatever lam.
    """
    z_t = np.asarray(z_t, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    graph = factor.graph
    if z_t.ndim != 2 or z_t.shape != g.shape or z_t.shape[0] != graph.n:
        raise ValueError(
            f"z_t and g must both have shape ({graph.n}, d), got {z_t.shape} and {g.shape}"
        )
    if not (np.isfinite(z_t).all() and np.isfinite(g).all()):
        raise ValueError("z_t and g must be finite")
    eta, rho, lam = params.step_size(step), params.rho, params.lam
    m, d = len(graph.edges), z_t.shape[1]
    op = ZStep.of(factor, eta=eta, rho=rho)
    w = np.zeros((m, d))
    u = np.zeros((m, d))
    z = z_t
    primal = dual = 0.0
    done = 0
    while done < params.iterations:
        done += 1
        centre = z_t if params.centre == "fixed" else z
        z = z_update(centre, g, w, u, op)
        qz = factor.differences(z)
        w_prev, u_prev = w, u
        w = w_update(qz, u, lam=lam, rho=rho)
        u = dual_update(qz, w, u)
        if params.tol is not None or done == params.iterations:
            # primal ||Q^T Z - W|| is the dual's change; dual residual rho ||Q (W - W_prev)||
            primal = float(np.linalg.norm(u - u_prev))
            dual = float(rho * np.linalg.norm(factor.spread(w - w_prev)))
            if params.tol is not None and max(primal, dual) <= params.tol:
                break
    labels, fused = clusters(z, factor, params.fuse_tol)
    return ProxResult(
        z=z,
        w=w,
        u=u,
        iterations=done,
        primal_residual=primal,
        dual_residual=dual,
        fused_edges=fused,
        thresholded_edges=int((~w.any(axis=1)).sum()),
        clusters=labels,
        objective=objective(z, z_t, g, factor, lam=lam, eta=eta),
        objective_at_start=objective(z_t, z_t, g, factor, lam=lam, eta=eta),
    )


# --- the DP label histogram ---------------------------------------------------------------


@dataclass(frozen=True)
class DPHistogram:
    """A label histogram released under epsilon-DP, and the epsilon it spent.

    ``counts`` are the raw noisy counts (integers, unbiased: E[counts] = true counts);
    ``ratios`` are their post-processing, clamped at 0 and normalized to sum to 1 (uniform if
    nothing is left), the signal the similarity graph uses. Post-processing costs no epsilon.
    """

    counts: np.ndarray
    ratios: np.ndarray
    epsilon: float
    mechanism: str = "discrete-laplace"


def dp_label_histogram(
    counts: Sequence[int] | np.ndarray, epsilon: float, rng: np.random.Generator
) -> DPHistogram:
    """Release a site's label counts with the discrete Laplace (two-sided geometric) mechanism.

    Each count gets independent noise with P(k) proportional to exp(-epsilon |k|), k integer
    (Ghosh, Roughgarden, Sundararajan, STOC 2009). Adding or removing one record changes one
    count by 1, so the histogram's L1 sensitivity is 1 and the release is epsilon-DP (pure,
    delta = 0) for that neighbouring relation; for replace-one neighbours it is 2 epsilon-DP.
    Integer noise avoids the floating-point attack on the continuous Laplace (Mironov, CCS
    2012). The noise is the difference of two geometric variables with success probability
    1 - exp(-epsilon), drawn from ``rng``: in production pass an OS-seeded generator
    (``np.random.default_rng()``), never a fixed seed. numpy's geometric sampler works in
    floating point, so the distribution is exact only up to double rounding.

    >>> h = dp_label_histogram([40, 10, 0], 1.0, np.random.default_rng(0))
    >>> h.epsilon, h.counts.dtype.kind, round(float(h.ratios.sum()), 12)
    (1.0, 'i', 1.0)
    """
    c = np.asarray(counts)
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D array, got shape {c.shape}")
    if not np.issubdtype(c.dtype, np.integer) or (c < 0).any():
        raise ValueError("counts must be non-negative integers")
    if not (np.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be positive and finite, got {epsilon}")
    p = -np.expm1(-epsilon)  # 1 - exp(-epsilon), accurate for small epsilon
    noise = rng.geometric(p, size=c.size) - rng.geometric(p, size=c.size)
    noisy = c.astype(np.int64) + noise.astype(np.int64)
    clamped = np.clip(noisy, 0, None).astype(np.float64)
    total = clamped.sum()
    ratios = clamped / total if total > 0 else np.full(c.size, 1.0 / c.size)
    return DPHistogram(counts=noisy, ratios=ratios, epsilon=float(epsilon))
