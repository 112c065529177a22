"""A label-skew many-site benchmark on scikit-learn's digits, after FedReMa's ``by_s`` partition.

FedReMa's benefit shows when sites in groups share a label distribution: merging heads only
within a group should beat one global head. FedReMa's generator (``dataset/generator.py``,
method ``by_s``; see ``reference/algorithms.md`` §1.2) gives every client a small balanced IID
part (fraction ``s`` = 0.2) and the rest from one "label group" of 3 classes, with the groups
``[[0,1,2],[2,3,4],[4,5,6],[6,7,8],[8,9,0]]`` assigned to consecutive blocks of clients, then
splits each client 80/20. We rebuild that idea (no code copied) on ``load_digits`` (1797 8×8
images, ships with scikit-learn, no download), with three deliberate differences:

- block of site ``i`` is ``i * 5 // n_sites`` (the original hard-codes 20 clients);
- images are drawn **without replacement across all sites** whenever the digits set has enough
  images of a class; the default budget (`max_samples_per_site`) is the largest for which that
  holds. With a larger ``samples_per_site``, a class whose total demand exceeds its count
  (about 180 per digit) is drawn without replacement *within* each site but independently
  across sites, so sites may share images of that class; those classes are listed in
  ``LabelSkewPartition.reused_classes`` and in ``partition.json``. A site asking for more
  images of one class than exist is an error;
- the per-site 80/20 split is stratified by label (when every class has at least 2 samples),
  so a site's test set has the same label mix as its train set.

Pixels are scaled to [0, 1] and then normalised with mean 0.5, std 0.5, as ``by_s`` does.

>>> block_of(3, n_sites=10), block_of(3, n_sites=20)
(1, 0)
>>> max_samples_per_site(10) >= 100
True
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fedrema_cli.data.tables import ImageSchema, npz_bytes, split_paths
from fedrema_cli.learning.modelspec import ModelSpec

NUM_CLASSES = 10
LABEL_GROUPS: tuple[tuple[int, int, int], ...] = (
    (0, 1, 2),
    (2, 3, 4),
    (4, 5, 6),
    (6, 7, 8),
    (8, 9, 0),
)
DEFAULT_SITES = 10
DEFAULT_IID_FRACTION = 0.2
TEST_FRACTION = 0.2

SCHEMA = ImageSchema(input_shape=(1, 8, 8), classes=tuple(range(NUM_CLASSES)))

# Two conv blocks (8×8 → 4×4 → 2×2) and a 64-d feature; the head is Linear(64→10).
MODEL_SPEC = ModelSpec.cnn(
    input_shape=(1, 8, 8), channels=(16, 32), hidden=(64,), num_classes=NUM_CLASSES
)


class SiteSplit(NamedTuple):
    """One site's data: images float32 ``[n, 1, 8, 8]``, labels int64 ``[n]``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def site_names(n_sites: int) -> tuple[str, ...]:
    """``site00``, ``site01``, …: zero-padded so sorted names keep the numeric order."""
    width = max(2, len(str(n_sites - 1)))
    return tuple(f"site{i:0{width}d}" for i in range(n_sites))


def block_of(site_index: int, n_sites: int = DEFAULT_SITES) -> int:
    """Label group (block) of a site: consecutive blocks of ``n_sites / 5`` sites share one."""
    if not 0 <= site_index < n_sites:
        raise ValueError(f"site index {site_index} out of range for {n_sites} sites")
    return site_index * len(LABEL_GROUPS) // n_sites


def class_budget(
    n_sites: int, samples_per_site: int, s: float = DEFAULT_IID_FRACTION
) -> np.ndarray:
    """Images per site and class ``[n_sites, 10]``; each row sums to ``samples_per_site``.

    ``round(s * n / 10)`` of every class (the IID part), the rest split evenly over the site's
    3 group classes (remainder to the group's first classes).
    """
    if n_sites < 1 or samples_per_site < 1:
        raise ValueError("n_sites and samples_per_site must be positive")
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"s must be in [0, 1], got {s}")
    iid = min(math.floor(s * samples_per_site / NUM_CLASSES + 0.5), samples_per_site // NUM_CLASSES)
    budget = np.full((n_sites, NUM_CLASSES), iid, dtype=np.int64)
    rest = samples_per_site - iid * NUM_CLASSES
    for i in range(n_sites):
        group = LABEL_GROUPS[block_of(i, n_sites)]
        share, extra = divmod(rest, len(group))
        for k, c in enumerate(group):
            budget[i, c] += share + (1 if k < extra else 0)
    return budget


def _class_sizes() -> np.ndarray:
    from sklearn.datasets import load_digits  # lazy: see heart_disease.py

    return np.bincount(load_digits().target, minlength=NUM_CLASSES)


def max_samples_per_site(n_sites: int = DEFAULT_SITES, s: float = DEFAULT_IID_FRACTION) -> int:
    """Largest per-site budget that the digits set serves without reusing any image."""
    sizes = _class_sizes()
    for n in range(int(sizes.sum()) // n_sites, 0, -1):
        if (class_budget(n_sites, n, s).sum(axis=0) <= sizes).all():
            return n
    raise ValueError(f"the digits set cannot serve {n_sites} sites")


@dataclass(frozen=True)
class LabelSkewPartition:
    """Per-site data plus how it was drawn (for the benchmark report)."""

    sites: dict[str, SiteSplit]
    n_sites: int
    samples_per_site: int
    s: float
    seed: int
    budget: np.ndarray  # [n_sites, 10] images per site and class before the 80/20 split
    reused_classes: tuple[int, ...] = field(default=())

    def block_of(self, site: str) -> int:
        """Label group index (0..4) of a site name."""
        return block_of(site_names(self.n_sites).index(site), self.n_sites)

    def dominant_classes(self, site: str) -> tuple[int, int, int]:
        """The 3 classes that make up most of the site's data."""
        return LABEL_GROUPS[self.block_of(site)]

    @property
    def blocks(self) -> dict[str, int]:
        """Site name → block."""
        return {name: self.block_of(name) for name in self.sites}


def _images() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0 - 0.5) / 0.5
    return x[:, None, :, :].astype(np.float32), digits.target.astype(np.int64)


def make_partition(
    n_sites: int = DEFAULT_SITES,
    samples_per_site: int | None = None,
    *,
    s: float = DEFAULT_IID_FRACTION,
    seed: int = 0,
) -> LabelSkewPartition:
    """Draw the partition; the same arguments always give the same arrays."""
    from sklearn.model_selection import train_test_split

    if samples_per_site is None:
        samples_per_site = max_samples_per_site(n_sites, s)
    x, y = _images()
    budget = class_budget(n_sites, samples_per_site, s)
    rng = np.random.default_rng(seed)
    chosen: list[list[np.ndarray]] = [[] for _ in range(n_sites)]
    reused: list[int] = []
    for c in range(NUM_CLASSES):
        pool = rng.permutation(np.flatnonzero(y == c))
        wanted = budget[:, c]
        if wanted.max() > len(pool):
            raise ValueError(
                f"a site needs {int(wanted.max())} images of digit {c} but only {len(pool)} "
                "exist; lower samples_per_site"
            )
        if wanted.sum() <= len(pool):
            bounds = np.concatenate(([0], np.cumsum(wanted)))
            for i in range(n_sites):
                chosen[i].append(pool[bounds[i] : bounds[i + 1]])
        else:
            reused.append(c)
            for i in range(n_sites):
                chosen[i].append(rng.choice(pool, size=int(wanted[i]), replace=False))
    sites: dict[str, SiteSplit] = {}
    for i, name in enumerate(site_names(n_sites)):
        idx = rng.permutation(np.concatenate(chosen[i]))
        labels = y[idx]
        present = np.unique(labels, return_counts=True)[1]
        n_test = math.ceil(TEST_FRACTION * len(idx))
        stratify = (
            labels
            if present.min() >= 2 and n_test >= len(present) and len(idx) - n_test >= len(present)
            else None
        )
        train, test = train_test_split(
            idx,
            test_size=TEST_FRACTION,
            random_state=int(rng.integers(2**31 - 1)),
            shuffle=True,
            stratify=stratify,
        )
        sites[name] = SiteSplit(x[train], y[train], x[test], y[test])
    return LabelSkewPartition(
        sites=sites,
        n_sites=n_sites,
        samples_per_site=samples_per_site,
        s=s,
        seed=seed,
        budget=budget,
        reused_classes=tuple(reused),
    )


def write_site_files(
    out_dir: Path | str,
    *,
    n_sites: int = DEFAULT_SITES,
    samples_per_site: int | None = None,
    s: float = DEFAULT_IID_FRACTION,
    seed: int = 0,
) -> dict[str, dict[str, Path]]:
    """Write ``<site>_{train,test}.npz`` (arrays ``x``, ``y``) and ``partition.json``."""
    part = make_partition(n_sites, samples_per_site, s=s, seed=seed)
    from fedrema_cli.store.storage import write_files

    files: dict[str, bytes] = {}
    summary: dict[str, dict[str, object]] = {}
    for i, (name, data) in enumerate(part.sites.items()):
        files[f"{name}_train.npz"] = npz_bytes(x=data.x_train, y=data.y_train)
        files[f"{name}_test.npz"] = npz_bytes(x=data.x_test, y=data.y_test)
        summary[name] = {
            "block": part.block_of(name),
            "dominant_classes": list(part.dominant_classes(name)),
            "class_counts": [int(v) for v in part.budget[i]],
            "train": len(data.y_train),
            "test": len(data.y_test),
        }
    meta = {
        "dataset": "label-skew (sklearn load_digits, FedReMa by_s style)",
        "n_sites": part.n_sites,
        "samples_per_site": part.samples_per_site,
        "iid_fraction": part.s,
        "seed": part.seed,
        "label_groups": [list(g) for g in LABEL_GROUPS],
        "reused_classes": list(part.reused_classes),
        "sites": summary,
    }
    files["partition.json"] = (json.dumps(meta, indent=2) + "\n").encode("utf-8")
    written = write_files(out_dir, files)
    return split_paths(written, part.sites, ".npz")
