"""FedReMa head merging (Liang et al., ECAI 2024, arXiv 2411.01825), as pure functions over arrays.

The rules, read from the official code (liangh68/FedReMa@f906947, ``serverReMa.py``) and
implemented with their *intended* semantics (heads indexed by site, aggregation from a snapshot,
partial participation handled; see docs/fedrema.md):

1. Similarity of head outputs on a probe input r_i, one per row:
   ``p_i = softmax(head_i(r_i) / t_self)``, ``p_j = softmax(head_j(r_i) / t_peer)``,
   ``S[i, j] = cos(p_i, p_j)`` averaged over the probe's samples, ``S[i, i] = 1``.
2. During the critical co-learning period (CCP), MaxDiff segmentation per site: sort the peers'
   similarities ascending, take the largest consecutive gap (first on ties, so more peers are
   kept), select the peers above it plus the site itself; the new head is their uniform mean.
   Every selection is counted in a frequency matrix, self included.
3. The CCP ends, permanently, at the first round whose mean largest gap is not a new peak and
   is below ``delta`` times the peak (delta = 0.5).
4. After the CCP, each head is the frequency-weighted mean of the heads, weights frozen.

``FedReMaParams()`` (``PAPER``) is exactly these rules (method ``fedrema-paper``). The default
method ``fedrema`` runs the config's knobs, which change six of them so that noisy (DP) heads
do not derail the merge: one shared probe of 64 samples, centered-logit similarity, an EMA of S
over rounds, no peer below similarity 0, half of the own head kept, and a CCP of at least 5
rounds; docs/fedrema.md gives each rule and the measurements behind it.

Everything is indexed by position in ``sites`` (the roster order); nothing here mutates its inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

Similarity = Literal["softmax", "centered"]


@dataclass(frozen=True)
class FedReMaParams:
    """Knobs of FedReMa; the defaults are the paper's (official code) values.

    Not in the paper (each off by default; docs/fedrema.md says why and what they measured):

    - ``similarity="centered"``: one probe shared by all rows; each head's logits are
      centered over classes (softmax ignores that part) and then over the participating heads
      (the part every head shares), and S[i, j] is the cosine of the remainders. It compares
      what makes two heads *different from the federation*, which is what label skew changes.
    - ``smoothing``: S is an exponential moving average over rounds with this weight on the
      past, so one round's DP noise cannot flip a selection.
    - ``min_similarity``: peers below it are never selected, even above the largest gap, so a
      site with no like peer keeps its own head instead of taking the least unlike one.
    - ``self_weight`` (0..1): a site keeps that share of its own head and mixes the rest from
      its selected peers, which damps peers' noise under DP.
    """

    delta: float = 0.5
    t_self: float = 0.5
    t_peer: float = 1.0
    probe: str = "uniform"
    probe_scale: float = 0.5
    probe_samples: int = 1
    similarity: Similarity = "softmax"
    smoothing: float = 0.0
    min_similarity: float | None = None
    self_weight: float | None = None
    global_weight: float = 0.0
    min_ccp_rounds: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.delta <= 1:
            raise ValueError(f"delta must be in (0, 1], got {self.delta}")
        if self.t_self <= 0 or self.t_peer <= 0:
            raise ValueError("temperatures must be positive")
        if self.probe_samples < 1:
            raise ValueError("probe_samples must be at least 1")
        if self.similarity not in ("softmax", "centered"):
            raise ValueError(f"similarity must be 'softmax' or 'centered', got {self.similarity}")
        if not 0 <= self.smoothing < 1:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing}")
        if self.self_weight is not None and not 0 <= self.self_weight <= 1:
            raise ValueError(f"self_weight must be in [0, 1], got {self.self_weight}")
        if self.min_ccp_rounds < 0:
            raise ValueError(f"min_ccp_rounds must be >= 0, got {self.min_ccp_rounds}")
        if not 0 <= self.global_weight <= 1:
            raise ValueError(f"global_weight must be in [0, 1], got {self.global_weight}")

    @property
    def shared_probe(self) -> bool:
        """Centered similarity compares all heads on one probe; the paper draws one per row."""
        return self.similarity == "centered"


PAPER = FedReMaParams()
"""The paper's rules exactly as the official code runs them (the reference variant)."""


def params_from(config: object) -> FedReMaParams:
    """FedReMaParams from the federation config's ``fedrema`` section (same field names)."""
    names = FedReMaParams.__dataclass_fields__
    return FedReMaParams(**{k: getattr(config, k) for k in names if hasattr(config, k)})


@dataclass(frozen=True)
class FedReMaState:
    """What FedReMa remembers between rounds: the CCP flag, the selection counts, the gaps."""

    sites: tuple[str, ...]
    in_ccp: bool = True
    frequency: np.ndarray = field(default=None)  # type: ignore[assignment]
    gap_history: tuple[float, ...] = ()
    ccp_rounds: int = 0
    similarity: np.ndarray | None = None  # smoothed S by roster position; NaN: never seen

    def __post_init__(self) -> None:
        n = len(self.sites)
        if self.frequency is None:
            object.__setattr__(self, "frequency", np.zeros((n, n), dtype=np.int64))
        if self.frequency.shape != (n, n):
            raise ValueError(f"frequency must be {n}x{n}, got {self.frequency.shape}")
        if self.similarity is not None and self.similarity.shape != (n, n):
            raise ValueError(f"similarity must be {n}x{n}, got {self.similarity.shape}")

    def to_json(self) -> dict:
        out = {
            "sites": list(self.sites),
            "in_ccp": self.in_ccp,
            "frequency": self.frequency.tolist(),
            "gap_history": list(self.gap_history),
            "ccp_rounds": self.ccp_rounds,
        }
        if self.similarity is not None:  # JSON has no NaN: unseen pairs are null
            out["similarity"] = [
                [None if np.isnan(v) else float(v) for v in row] for row in self.similarity
            ]
        return out

    @classmethod
    def from_json(cls, data: Mapping) -> FedReMaState:
        sim = data.get("similarity")
        return cls(
            sites=tuple(data["sites"]),
            in_ccp=bool(data["in_ccp"]),
            frequency=np.asarray(data["frequency"], dtype=np.int64),
            gap_history=tuple(float(g) for g in data["gap_history"]),
            ccp_rounds=int(data["ccp_rounds"]),
            similarity=(
                None
                if sim is None
                else np.array([[np.nan if v is None else v for v in row] for row in sim], float)
            ),
        )


@dataclass(frozen=True)
class MergeReport:
    """What one merge did, for `status`, logs and the benchmark's peer-selection statistics."""

    in_ccp: bool
    similarity: np.ndarray | None
    selected: dict[str, tuple[str, ...]]
    mean_gap: float | None
    ccp_ended: bool


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def similarity_matrix(
    logits: np.ndarray, *, t_self: float = 0.5, t_peer: float = 1.0
) -> np.ndarray:
    """S[i, j] = mean over probe samples of cos(softmax(l_ii / t_self), softmax(l_ij / t_peer)).

    ``logits[i, j]`` is head j evaluated on row i's probe, shape (n, n, samples, classes).
    S is not symmetric (each row has its own probe and the row's own temperature); S[i, i] = 1.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 4 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"logits must have shape (n, n, samples, classes), got {logits.shape}")
    n = logits.shape[0]
    s = np.empty((n, n))
    for i in range(n):
        p_i = softmax(logits[i, i], t_self)
        for j in range(n):
            p_j = softmax(logits[i, j], t_peer)
            cos = (p_i * p_j).sum(-1) / (
                np.linalg.norm(p_i, axis=-1) * np.linalg.norm(p_j, axis=-1)
            )
            s[i, j] = float(cos.mean())
        s[i, i] = 1.0
    return s


def centered_similarity(logits: np.ndarray) -> np.ndarray:
    """S[i, j] = cos of heads i and j's logits on a shared probe, after centering twice.

    ``logits[j]`` is head j on the shared probe, shape (n, samples, classes). Centering over
    classes removes what softmax ignores; centering over heads removes what every head shares
    (common initialisation, the shared extractor's scale), leaving what sets a head apart. S is
    symmetric with S[i, i] = 1; a head identical to the mean has no direction and gets 0.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 3:
        raise ValueError(f"logits must have shape (n, samples, classes), got {z.shape}")
    z = z - z.mean(axis=2, keepdims=True)
    z = z - z.mean(axis=0, keepdims=True)
    v = z.reshape(z.shape[0], -1)
    norms = np.linalg.norm(v, axis=1)
    safe = np.where(norms > 1e-12, norms, 1.0)
    s = (v @ v.T) / np.outer(safe, safe)
    s[norms <= 1e-12, :] = 0.0
    s[:, norms <= 1e-12] = 0.0
    np.fill_diagonal(s, 1.0)
    return np.clip(s, -1.0, 1.0)


def round_similarity(logits: np.ndarray, params: FedReMaParams) -> np.ndarray:
    """This round's S from probe logits: shape (n, n, samples, classes), or (1, n, ...) shared."""
    logits = np.asarray(logits, dtype=np.float64)
    if params.similarity == "centered":
        if logits.ndim != 4:
            raise ValueError(f"logits must have 4 axes, got {logits.shape}")
        return centered_similarity(logits[0])
    return similarity_matrix(logits, t_self=params.t_self, t_peer=params.t_peer)


def smooth(
    previous: np.ndarray | None, current: np.ndarray, index: Sequence[int], weight: float, n: int
) -> np.ndarray:
    """EMA of S over rounds, by roster position; pairs seen for the first time take this round's."""
    out = np.full((n, n), np.nan) if previous is None else previous.copy()
    idx = np.asarray(index)
    old = out[np.ix_(idx, idx)]
    mixed = np.where(np.isnan(old), current, weight * old + (1.0 - weight) * current)
    out[np.ix_(idx, idx)] = mixed
    return out


def maxdiff_select(similarities: np.ndarray, self_index: int) -> tuple[np.ndarray, float]:
    """MaxDiff segmentation of one row: which peers are relevant, and the gap that decided it.

    Peers are sorted by similarity ascending; the largest gap between consecutive peers splits
    them, and the peers above the gap are selected (ties: the first gap, so more peers are
    kept). The site itself is always selected and its own similarity never enters the gaps
    (the official code drops the self gap; we exclude self outright so a peer tying with
    self at 1.0 cannot reorder it). With one peer there is no gap: it is selected, gap 0.
    Returns a boolean mask over the row and the gap.
    """
    row = np.asarray(similarities, dtype=np.float64)
    n = row.shape[0]
    mask = np.zeros(n, dtype=bool)
    mask[self_index] = True
    peers = np.array([j for j in range(n) if j != self_index], dtype=np.int64)
    if peers.size == 0:
        return mask, 0.0
    order = peers[np.argsort(row[peers], kind="stable")]
    if order.size == 1:
        mask[order] = True
        return mask, 0.0
    gaps = np.diff(row[order])
    k = int(np.argmax(gaps))
    mask[order[k + 1 :]] = True
    return mask, float(gaps[k])


def ccp_continues(gap_history: Sequence[float], delta: float) -> bool:
    """The CCP goes on while the latest mean gap is a new peak or at least delta x the peak."""
    if not gap_history:
        return True
    h = np.asarray(gap_history, dtype=np.float64)
    t = len(h) - 1
    if int(np.argmax(h)) == t:
        return True
    return not h[t] < delta * h.max()


def _mix(
    own: np.ndarray, pooled: np.ndarray, everyone: np.ndarray, params: FedReMaParams
) -> np.ndarray:
    """Own head vs the selected peers' mean (self_weight), then vs all heads (global_weight)."""
    out = pooled
    if params.self_weight is not None:
        out = params.self_weight * own + (1.0 - params.self_weight) * pooled
    if params.global_weight:
        out = (1.0 - params.global_weight) * out + params.global_weight * everyone
    return out


def merge(
    heads: Mapping[str, np.ndarray],
    logits: np.ndarray | None,
    state: FedReMaState,
    params: FedReMaParams,
) -> tuple[dict[str, np.ndarray], FedReMaState, MergeReport]:
    """One round of FedReMa head merging over the sites that sent a head this round.

    ``heads`` maps each participating site to its flat head vector; ``logits`` is indexed in
    the order of ``participants(heads, state)`` (only needed during the CCP). Returns the
    merged head per participating site, the next state, and a report. Sites that did not
    take part are untouched; frequencies stay indexed by roster position.
    """
    present = participants(heads, state)
    if not present:
        raise ValueError("no heads to merge")
    index = {s: i for i, s in enumerate(state.sites)}
    stack = np.stack([np.asarray(heads[s], dtype=np.float64) for s in present])
    everyone = stack.mean(axis=0)
    merged: dict[str, np.ndarray] = {}
    selected: dict[str, tuple[str, ...]] = {}

    if not state.in_ccp:
        sub = state.frequency[np.ix_([index[s] for s in present], [index[s] for s in present])]
        for a, site in enumerate(present):
            w = sub[a].astype(np.float64)
            if w.sum() == 0:  # joined after the CCP ended: no history, keep its own head
                merged[site] = stack[a].copy()
                selected[site] = (site,)
                continue
            pooled = np.tensordot(w / w.sum(), stack, axes=1)
            merged[site] = _mix(stack[a], pooled, everyone, params)
            selected[site] = tuple(present[b] for b in np.flatnonzero(w))
        report = MergeReport(False, None, selected, None, False)
        return merged, state, report

    if logits is None:
        raise ValueError("logits are required during the critical co-learning period")
    current = round_similarity(logits, params)
    if current.shape[0] != len(present):
        raise ValueError(f"logits cover {current.shape[0]} sites, {len(present)} heads were sent")
    positions = [index[s] for s in present]
    smoothed = state.similarity
    sim = current
    if params.smoothing > 0:
        smoothed = smooth(state.similarity, current, positions, params.smoothing, len(state.sites))
        sim = smoothed[np.ix_(positions, positions)]
    frequency = state.frequency.copy()
    gaps = []
    for a, site in enumerate(present):
        mask, gap = maxdiff_select(sim[a], a)
        if params.min_similarity is not None:
            mask &= (sim[a] >= params.min_similarity) | (np.arange(len(present)) == a)
        gaps.append(gap)
        pooled = stack[mask].mean(axis=0)
        merged[site] = _mix(stack[a], pooled, everyone, params)
        chosen = [present[b] for b in np.flatnonzero(mask)]
        selected[site] = tuple(chosen)
        for peer in chosen:
            frequency[index[site], index[peer]] += 1
    mean_gap = float(np.mean(gaps))
    history = (*state.gap_history, mean_gap)
    still = ccp_continues(history, params.delta) or len(history) < params.min_ccp_rounds
    new_state = replace(
        state,
        in_ccp=still,
        frequency=frequency,
        gap_history=history,
        ccp_rounds=state.ccp_rounds + 1,
        similarity=smoothed,
    )
    report = MergeReport(True, sim, selected, mean_gap, not still)
    return merged, new_state, report


def with_sites(state: FedReMaState | None, sites: tuple[str, ...]) -> FedReMaState:
    """``state`` over the roster ``sites``: a site that joined is added with no history (it
    selects and is selected from its first round), one that left is dropped; the rest keep
    their counts and similarities. None: a fresh state."""
    if state is None:
        return FedReMaState(sites=tuple(sites))
    if tuple(state.sites) == tuple(sites):
        return state
    old = {s: i for i, s in enumerate(state.sites)}
    keep = [(i, old[s]) for i, s in enumerate(sites) if s in old]
    n = len(sites)
    frequency = np.zeros((n, n), dtype=np.int64)
    similarity = None if state.similarity is None else np.full((n, n), np.nan)
    for a, oa in keep:
        for b, ob in keep:
            frequency[a, b] = state.frequency[oa, ob]
            if similarity is not None:
                similarity[a, b] = state.similarity[oa, ob]
    return replace(state, sites=tuple(sites), frequency=frequency, similarity=similarity)


def participants(heads: Mapping[str, np.ndarray], state: FedReMaState) -> list[str]:
    """The sites that sent a head, in roster order (the order logits must follow)."""
    unknown = set(heads) - set(state.sites)
    if unknown:
        raise ValueError(f"heads from sites not in the roster: {sorted(unknown)}")
    return [s for s in state.sites if s in heads]


def uniform_probe(
    rng: np.random.Generator, *, feature_dim: int, samples: int, scale: float
) -> np.ndarray:
    """The official code's default probe: uniform noise in [0, scale) in feature space."""
    return rng.random((samples, feature_dim)) * scale
