"""Fed-Heart-Disease: the four UCI hospitals with FLamby's exact cleaning and split.

Reproducing FLamby's split row for row is what makes our accuracies comparable with FLamby's
published table (Ogier du Terrail et al., NeurIPS 2022 D&B, arXiv:2210.04620). The steps follow
the description in ``examples/heart_disease/data/PROVENANCE.md``; no FLamby code is used:

1. read ``processed.<centre>.data`` (no header, ``?`` = missing);
2. drop slope, ca, thal, then every row with a missing value (303/261/46/130 rows);
3. per centre, ``train_test_split`` of the row positions with train 0.66 / test 0.34,
   ``random_state=43``, shuffled, stratified on the binary label when each class has more
   than 2 rows (Switzerland has 1 negative, so it is not stratified) → 199/104, 172/89, 30/16,
   85/45; rows keep their file order inside each split, as in FLamby;
4. one-hot ``cp`` and ``restecg`` with the first category dropped (FLamby encodes the pooled
   table, where every category occurs, so fixed categories give identical columns);
5. label ``target`` = ``num > 0``.

Scaling is where we differ from FLamby, which standardizes each centre with its own train
statistics: those are a function of the records that no DP accounting covers. Here every site
maps the same public range per feature (`RANGES`, clinical reference values and the UCI code
book, not fitted to any record) to [-1, 1], so the DP guarantee covers preprocessing too.

>>> SITES
('cleveland', 'hungary', 'switzerland', 'va')
>>> len(FEATURES)
13
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from fedrema_cli.data.tables import FeatureRanges, TabularSchema
from fedrema_cli.errors import DataError
from fedrema_cli.learning.modelspec import ModelSpec

SITES: tuple[str, ...] = ("cleveland", "hungary", "switzerland", "va")

DEFAULT_DATA_DIR: Path = Path(__file__).resolve().parents[3] / "examples" / "heart_disease" / "data"

# Raw file per site and its sha256 (UCI originals; see PROVENANCE.md). The split is only
# FLamby's split if these bytes are exactly these.
RAW_FILES: dict[str, tuple[str, str]] = {
    "cleveland": (
        "processed.cleveland.data",
        "a74b7efa387bc9d108d7d0115d831fe9b414b29ae7124f331b622b4efa0427c8",
    ),
    "hungary": (
        "processed.hungarian.data",
        "d1ad108f785768cd3d7e82dc522e6f5a61eea93cccfb3a46ee8076f73fc3d796",
    ),
    "switzerland": (
        "processed.switzerland.data",
        "834a405ccf5b66ab4056bb77794adc8df0b7125186454c0a1d002d33c6c3b314",
    ),
    "va": (
        "processed.va.data",
        "e7c93d8d0d2acdadfa4c5e8de768e2191e7f618b952e29623f1f0d5949ff6b8f",
    ),
}

RAW_COLUMNS: tuple[str, ...] = (
    "age", "sex", "cp", "trestbps", "chol", "fbs", "restecg",
    "thalach", "exang", "oldpeak", "slope", "ca", "thal", "num",
)  # fmt: skip
DROPPED_COLUMNS: tuple[str, ...] = ("slope", "ca", "thal")
NUMERIC_FEATURES: tuple[str, ...] = (
    "age", "sex", "trestbps", "chol", "fbs", "thalach", "exang", "oldpeak",
)  # fmt: skip
# Categories kept after dropping the first one (cp: 1..4, restecg: 0..2).
ONE_HOT: dict[str, tuple[int, ...]] = {"cp": (2, 3, 4), "restecg": (1, 2)}
FEATURES: tuple[str, ...] = NUMERIC_FEATURES + tuple(
    f"{col}_{v}" for col, values in ONE_HOT.items() for v in values
)
LABEL = "target"

TRAIN_FRACTION = 0.66
SPLIT_SEED = 43
EXPECTED_ROWS: dict[str, int] = {"cleveland": 303, "hungary": 261, "switzerland": 46, "va": 130}
EXPECTED_SPLIT: dict[str, tuple[int, int]] = {
    "cleveland": (199, 104),
    "hungary": (172, 89),
    "switzerland": (30, 16),
    "va": (85, 45),
}

# Plausible values for adult cardiology patients, from clinical reference values and the UCI
# code book (heart-disease.names), fixed without fitting anything to the records: age in years;
# resting systolic blood pressure in mmHg (hypotension below 90, stage-2 hypertension from 140);
# serum cholesterol in mg/dl, where these files write 0 for "not measured" (desirable below
# 200, high from 240); the maximum heart rate reached in bpm (age-predicted maximum 220 - age);
# exercise-induced ST depression in mm; 0/1 for the binary and one-hot columns.
RANGES: dict[str, tuple[float, float]] = {
    "age": (20, 80), "sex": (0, 1), "trestbps": (80, 200), "chol": (0, 600),
    "fbs": (0, 1), "thalach": (60, 220), "exang": (0, 1), "oldpeak": (0, 6),
    **{f"{col}_{v}": (0, 1) for col, values in ONE_HOT.items() for v in values},
}  # fmt: skip

SCHEMA = TabularSchema(
    features=FEATURES,
    label=LABEL,
    classes=(0, 1),
    feature_ranges=FeatureRanges(
        ranges=tuple(RANGES[f] for f in FEATURES),
        source="clinical reference values and the UCI heart-disease code book "
        "(fedrema_cli/data/datasets/heart_disease.py RANGES)",
    ),
)

# Small on purpose: Switzerland trains on 30 rows. The 16-d extractor output is shared through
# secure aggregation; the head (Linear 16→2) is personalised by FedReMa.
MODEL_SPEC = ModelSpec.mlp(in_features=len(FEATURES), hidden=(32, 16), num_classes=2)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_raw(path: Path) -> pd.DataFrame:
    """One centre's raw file, ``?`` as missing, every column numeric, index = file line."""
    frame = pd.read_csv(
        path,
        header=None,
        names=list(RAW_COLUMNS),
        na_values=["?"],
        keep_default_na=False,
        dtype="float64",
    )
    frame.index = pd.RangeIndex(1, len(frame) + 1, name="line")
    return frame


def _encode(frame: pd.DataFrame) -> pd.DataFrame:
    """13 features in FLamby's column order plus the binary ``target``."""
    out = frame.loc[:, list(NUMERIC_FEATURES)].copy()
    for col, values in ONE_HOT.items():
        unknown = sorted(set(frame[col].unique()) - {min(values) - 1, *values})
        if unknown:
            raise DataError(f"unexpected {col} values {unknown} in the heart-disease data")
        for v in values:
            out[f"{col}_{v}"] = (frame[col] == v).astype(np.int64)
    out[LABEL] = (frame["num"] > 0).astype(np.int64)
    return out


def split_positions(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FLamby's per-centre split of row positions ``0..n-1``; both halves sorted (file order)."""
    n = len(labels)
    binary = (np.asarray(labels) > 0).astype(np.int64)
    counts = np.unique(binary, return_counts=True)[1]
    stratify = binary if len(counts) > 1 and (counts > 2).all() else None
    from sklearn.model_selection import train_test_split  # lazy: every command imports this module

    train, test = train_test_split(
        np.arange(n),
        test_size=1.0 - TRAIN_FRACTION,
        train_size=TRAIN_FRACTION,
        random_state=SPLIT_SEED,
        shuffle=True,
        stratify=stratify,
    )
    return np.sort(train), np.sort(test)


def _resolve(data_dir: Path | str | None) -> Path:
    path = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    if not path.is_dir():
        raise DataError(
            f"{path}: heart-disease data directory not found; it ships in the repository at "
            "examples/heart_disease/data (an installed wheel does not include it)"
        )
    return path


def load_centers(
    data_dir: Path | str | None = None, *, verify: bool = True
) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """``{site: (train, test)}`` with columns ``FEATURES + ["target"]``, not standardised.

    The index of each frame is the row's line number in the raw UCI file, so any row can be
    traced back to the source. ``verify`` checks the raw files' sha256 first, because the split
    is FLamby's only for the original bytes.
    """
    root = _resolve(data_dir)
    out: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
    for site in SITES:
        name, digest = RAW_FILES[site]
        path = root / name
        if not path.is_file():
            raise DataError(f"{path}: missing raw file for site {site!r}")
        if verify and (actual := _sha256(path)) != digest:
            raise DataError(
                f"{path}: sha256 {actual} differs from the UCI original {digest}; "
                "restore the file from examples/heart_disease/data"
            )
        raw = _read_raw(path)
        kept = raw.drop(columns=list(DROPPED_COLUMNS)).dropna(axis=0, how="any")
        table = _encode(kept)
        train_pos, test_pos = split_positions(table[LABEL].to_numpy())
        out[site] = (table.iloc[train_pos], table.iloc[test_pos])
    return out


def write_site_files(
    out_dir: Path | str, data_dir: Path | str | None = None
) -> dict[str, dict[str, Path]]:
    """Write ``<site>_train.csv`` / ``<site>_test.csv`` (header = ``SCHEMA``) for the CLI."""
    from fedrema_cli.data.tables import csv_bytes, split_paths
    from fedrema_cli.store.storage import write_files

    centers = load_centers(data_dir)
    written = write_files(
        out_dir,
        {
            f"{site}_{split}.csv": csv_bytes(frame)
            for site, pair in centers.items()
            for split, frame in zip(("train", "test"), pair, strict=True)
        },
    )
    return split_paths(written, centers, ".csv")
