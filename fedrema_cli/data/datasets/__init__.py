"""Bundled benchmark datasets, by name: what they are and how to write each site's files.

A registry (one entry per dataset) so the CLI's ``--dataset`` choice and the benchmark are
built from the keys; adding a dataset means adding a module and one entry.

>>> sorted(DATASETS)
['breast-cancer-imbalanced', 'heart-disease', 'label-skew']
>>> DATASETS["heart-disease"].sites
('cleveland', 'hungary', 'switzerland', 'va')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fedrema_cli.data.datasets import heart_disease, imbalanced, label_skew
from fedrema_cli.data.tables import ImageSchema, TabularSchema
from fedrema_cli.errors import OptionError
from fedrema_cli.learning.modelspec import ModelSpec
from fedrema_cli.suggest import did_you_mean

SiteFiles = dict[str, dict[str, Path]]


@dataclass(frozen=True)
class DatasetInfo:
    """One bundled dataset.

    ``prepare(out_dir, seed)`` writes every site's train and test file and returns
    ``{site: {"train": path, "test": path}}``. ``blocks`` maps each site to its label group
    where sites are built to share one (label-skew), so a benchmark can check whether FedReMa
    merges heads within blocks.
    """

    name: str
    description: str
    kind: Literal["tabular", "image"]
    schema: TabularSchema | ImageSchema
    model_spec: ModelSpec
    sites: tuple[str, ...]
    prepare: Callable[[Path, int], SiteFiles]
    blocks: Mapping[str, int] | None = field(default=None)
    source: str = ""


def _prepare_heart(out_dir: Path, seed: int) -> SiteFiles:
    """FLamby's split is fixed (random_state=43), so ``seed`` is deliberately ignored."""
    del seed
    return heart_disease.write_site_files(out_dir)


def _label_skew(n_sites: int) -> DatasetInfo:
    """The label-skew partition over ``n_sites`` sites (5 blocks of n_sites / 5)."""
    names = label_skew.site_names(n_sites)

    def prepare(out_dir: Path, seed: int) -> SiteFiles:
        return label_skew.write_site_files(out_dir, n_sites=n_sites, seed=seed)

    suffix = "" if n_sites == label_skew.DEFAULT_SITES else f"-{n_sites}"
    return DatasetInfo(
        name=f"label-skew{suffix}",
        description=(
            f"scikit-learn digits (8x8) over {n_sites} sites with FedReMa-style "
            "label skew: 20% balanced, 80% from one 3-class group shared by a block of sites"
        ),
        kind="image",
        schema=label_skew.SCHEMA,
        model_spec=label_skew.MODEL_SPEC,
        sites=names,
        prepare=prepare,
        blocks={name: label_skew.block_of(i, n_sites) for i, name in enumerate(names)},
        source="scikit-learn load_digits (UCI Optical Recognition of Handwritten Digits)",
    )


DATASETS: dict[str, DatasetInfo] = {
    "heart-disease": DatasetInfo(
        name="heart-disease",
        description=(
            "UCI Heart Disease, 4 real hospitals (Cleveland, Hungary, Switzerland, VA), "
            "13 features, binary label; FLamby's train/test split, scaled by public ranges"
        ),
        kind="tabular",
        schema=heart_disease.SCHEMA,
        model_spec=heart_disease.MODEL_SPEC,
        sites=heart_disease.SITES,
        prepare=_prepare_heart,
        source="Janosi et al. 1988, UCI ML Repository, doi:10.24432/C52P4X (CC BY 4.0)",
    ),
    "label-skew": _label_skew(label_skew.DEFAULT_SITES),
    imbalanced.NAME: DatasetInfo(
        name=imbalanced.NAME,
        description=(
            "scikit-learn breast cancer (Wisconsin diagnostic) over 5 sites with 5-20% "
            "malignant, 10 features scaled by public ranges, binary label; redrawn per seed"
        ),
        kind="tabular",
        schema=imbalanced.SCHEMA,
        model_spec=imbalanced.MODEL_SPEC,
        sites=imbalanced.SITES,
        prepare=lambda out_dir, seed: imbalanced.write_site_files(out_dir, seed=seed),
        source="Breast Cancer Wisconsin (Diagnostic), Wolberg, Street & Mangasarian 1995, "
        "UCI ML Repository, as shipped by scikit-learn (load_breast_cancer)",
    ),
}


VALIDATION_FRACTION = 0.25


def carve_validation(
    info: DatasetInfo,
    files: SiteFiles,
    out_dir: Path,
    *,
    seed: int,
    fraction: float = VALIDATION_FRACTION,
) -> SiteFiles:
    """Split every site's *training* file into a fit part and a validation part.

    Returns ``{site: {"train": fit file, "test": validation file}}`` so a whole federation can
    be run for model selection without ever reading a test file. The split is stratified by
    label where every class has at least 2 rows (Switzerland's training data has one class),
    and seeded, so different seeds give different validation splits (repeated hold-out).
    """
    import numpy as np
    import pandas as pd
    from sklearn.model_selection import train_test_split

    from fedrema_cli.data.tables import csv_bytes, npz_bytes
    from fedrema_cli.store.storage import write_files

    out: dict[str, bytes] = {}
    carved: dict[str, dict[str, str]] = {}
    for k, (site, paths) in enumerate(files.items()):
        src = Path(paths["train"])
        if src.suffix == ".csv":
            frame = pd.read_csv(src)
            labels = frame[info.schema.label].to_numpy()  # type: ignore[union-attr]
        else:
            with np.load(src) as arrays:
                x, labels = arrays["x"], arrays["y"]
        counts = np.unique(labels, return_counts=True)[1]
        stratify = labels if counts.min() >= 2 and len(counts) > 1 else None
        fit, val = train_test_split(
            np.arange(len(labels)),
            test_size=fraction,
            random_state=seed * 1000 + k,
            shuffle=True,
            stratify=stratify,
        )
        carved[site] = {}
        for split, idx in (("train", np.sort(fit)), ("test", np.sort(val))):
            name = f"{site}_{'fit' if split == 'train' else 'val'}{src.suffix}"
            if src.suffix == ".csv":
                out[name] = csv_bytes(frame.iloc[idx])
            else:
                out[name] = npz_bytes(x=x[idx], y=labels[idx])
            carved[site][split] = name
    written = write_files(out_dir, out)
    return {site: {s: written[n] for s, n in names.items()} for site, names in carved.items()}


def get_dataset(name: str) -> DatasetInfo:
    """Look up a bundled dataset; the error lists the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise OptionError(
            f"unknown dataset {name!r}; known: {known}{did_you_mean(name, DATASETS)}"
        ) from None
