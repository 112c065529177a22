"""An imbalanced clinical table over five sites: breast-cancer diagnosis at 5-20% prevalence.

Source: the Breast Cancer Wisconsin (Diagnostic) data set of the UCI ML Repository (Wolberg,
Street and Mangasarian, November 1995; Street, Wolberg and Mangasarian, "Nuclear feature
extraction for breast tumor diagnosis", IS&T/SPIE 1993, vol. 1905, 861-870), as scikit-learn
ships it (``sklearn.datasets.load_breast_cancer``: 569 fine-needle aspirates, 212 malignant,
357 benign, no download). Each record describes the cell nuclei in a digitized image; the label
here is **malignant = 1** (the positive class, which sensitivity is about), benign = 0 (note
that scikit-learn's own target codes malignant as 0).

What we build from it (no code from elsewhere), redrawn for each seed:

- features: the ten "mean" measurements (``FEATURES``). The data set also gives the standard
  error and the "worst" value of each of the same ten measurements; leaving them out keeps
  the table the size of a typical clinical export and the task not trivially separable;
- sites: the 357 benign records are dealt at random over five sites (71 or 72 each), and each
  site gets just enough malignant records, drawn at random without replacement, for its
  malignant share to be ``MINORITY_RATES[site]`` (5, 8, 11, 15 and 20%). No record is at two
  sites; the malignant records not needed (about 160) are not used;
- split: per site 2/3 train, 1/3 test, stratified by label (the 5% site then holds about 3
  malignant training records and 1 test record: the point of the benchmark, and what the
  `init` warning about too few minority records is for).

Preprocessing is covered by DP as for heart disease: every site maps the same public range per
feature (``RANGES``) to [-1, 1]. The ranges are the minimum and maximum that scikit-learn's
documentation of this data set publishes for each feature (``load_breast_cancer().DESCR``,
"Summary Statistics"), rounded outward; they are fixed here and never computed from any
site's records. A real federation would take them from laboratory reference values.

>>> SITES
('site-a', 'site-b', 'site-c', 'site-d', 'site-e')
>>> [MINORITY_RATES[s] for s in SITES]
[0.05, 0.08, 0.11, 0.15, 0.2]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from fedrema_cli.data.tables import FeatureRanges, TabularSchema, csv_bytes, split_paths
from fedrema_cli.learning.modelspec import ModelSpec

NAME = "breast-cancer-imbalanced"
SITES: tuple[str, ...] = ("site-a", "site-b", "site-c", "site-d", "site-e")
MINORITY_RATES: dict[str, float] = dict(zip(SITES, (0.05, 0.08, 0.11, 0.15, 0.20), strict=True))
TEST_FRACTION = 1 / 3
LABEL = "malignant"

# scikit-learn's feature name -> CSV column.
SOURCE_FEATURES: dict[str, str] = {
    "mean radius": "radius",
    "mean texture": "texture",
    "mean perimeter": "perimeter",
    "mean area": "area",
    "mean smoothness": "smoothness",
    "mean compactness": "compactness",
    "mean concavity": "concavity",
    "mean concave points": "concave_points",
    "mean symmetry": "symmetry",
    "mean fractal dimension": "fractal_dimension",
}
FEATURES: tuple[str, ...] = tuple(SOURCE_FEATURES.values())

# The documented min/max of each feature (DESCR "Summary Statistics"), rounded outward:
# radius 6.981-28.11 (um), texture 9.71-39.28, perimeter 43.79-188.5, area 143.5-2501,
# smoothness 0.053-0.163, compactness 0.019-0.345, concavity 0-0.427, concave points 0-0.201,
# symmetry 0.106-0.304, fractal dimension 0.05-0.097.
RANGES: dict[str, tuple[float, float]] = {
    "radius": (5.0, 30.0), "texture": (5.0, 40.0), "perimeter": (40.0, 200.0),
    "area": (100.0, 2600.0), "smoothness": (0.05, 0.17), "compactness": (0.0, 0.35),
    "concavity": (0.0, 0.45), "concave_points": (0.0, 0.21), "symmetry": (0.1, 0.31),
    "fractal_dimension": (0.04, 0.1),
}  # fmt: skip

SCHEMA = TabularSchema(
    features=FEATURES,
    label=LABEL,
    classes=(0, 1),
    feature_ranges=FeatureRanges(
        ranges=tuple(RANGES[f] for f in FEATURES),
        source="the feature ranges scikit-learn documents for the breast-cancer data set, "
        "rounded outward (fedrema_cli/data/datasets/imbalanced.py RANGES)",
    ),
)

# As for heart disease: small, the 16-d extractor output shared, the head personalised.
MODEL_SPEC = ModelSpec.mlp(in_features=len(FEATURES), hidden=(32, 16), num_classes=2)


class SiteTables(NamedTuple):
    """One site's training and test tables (columns ``FEATURES + [LABEL]``)."""

    train: pd.DataFrame
    test: pd.DataFrame


def load_table() -> pd.DataFrame:
    """The 569 records with our column names; the index is the row in scikit-learn's data."""
    from sklearn.datasets import load_breast_cancer  # lazy: see heart_disease.py

    data = load_breast_cancer()
    frame = pd.DataFrame(data.data, columns=list(data.feature_names))
    table = frame[list(SOURCE_FEATURES)].rename(columns=SOURCE_FEATURES)
    table[LABEL] = (data.target == 0).astype(np.int64)  # scikit-learn: 0 = malignant
    return table


def make_sites(seed: int = 0) -> dict[str, SiteTables]:
    """Draw the five sites (same seed, same tables)."""
    from sklearn.model_selection import train_test_split

    table = load_table()
    rng = np.random.default_rng(seed)
    benign = rng.permutation(np.flatnonzero(table[LABEL].to_numpy() == 0))
    malignant = rng.permutation(np.flatnonzero(table[LABEL].to_numpy() == 1))
    shares = np.array_split(benign, len(SITES))
    used = 0
    out: dict[str, SiteTables] = {}
    for site, negatives in zip(SITES, shares, strict=True):
        rate = MINORITY_RATES[site]
        k = round(len(negatives) * rate / (1 - rate))
        positives = malignant[used : used + k]
        used += k
        rows = np.concatenate([negatives, positives])
        train, test = train_test_split(
            rows,
            test_size=TEST_FRACTION,
            random_state=int(rng.integers(2**31 - 1)),
            shuffle=True,
            stratify=table[LABEL].to_numpy()[rows],
        )
        out[site] = SiteTables(table.loc[np.sort(train)], table.loc[np.sort(test)])
    return out


def write_site_files(out_dir: Path | str, *, seed: int = 0) -> dict[str, dict[str, Path]]:
    """Write ``<site>_train.csv`` / ``<site>_test.csv`` (header = ``SCHEMA``) and
    ``partition.json`` (per site: records and malignant records per split)."""
    from fedrema_cli.store.storage import write_files

    files: dict[str, bytes] = {}
    summary: dict[str, dict[str, object]] = {}
    sites = make_sites(seed)
    for site, tables in sites.items():
        summary[site] = {"minority_rate": MINORITY_RATES[site]}
        for split, frame in (("train", tables.train), ("test", tables.test)):
            files[f"{site}_{split}.csv"] = csv_bytes(frame)
            summary[site][split] = {"n": len(frame), "malignant": int(frame[LABEL].sum())}
    meta = {"dataset": NAME, "seed": seed, "source": "sklearn load_breast_cancer", "sites": summary}
    files["partition.json"] = (json.dumps(meta, indent=2) + "\n").encode("utf-8")
    written = write_files(out_dir, files)
    return split_paths(written, sites, ".csv")
