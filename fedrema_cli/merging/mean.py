"""Weighted means: the one averaging routine every method shares (FedAvg, FedReMa's extractor)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def weighted_mean(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Return sum_k w_k x_k / sum_k w_k, as float64, without touching the inputs.

    >>> weighted_mean([np.array([0.0, 2.0]), np.array([4.0, 2.0])], [3, 1]).tolist()
    [1.0, 2.0]
    """
    if len(vectors) == 0:
        raise ValueError("weighted_mean needs at least one vector")
    if len(vectors) != len(weights):
        raise ValueError(f"{len(vectors)} vectors but {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative, finite and not all zero: {w.tolist()}")
    stacked = np.stack([np.asarray(v, dtype=np.float64) for v in vectors])
    return np.tensordot(w / w.sum(), stacked, axes=1)
