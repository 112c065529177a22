"""Bundled benchmark datasets, by name: what they are and how to write each site's files.

A registry (one entry per dataset) so the CLI's ``--dataset`` choice and the benchmark are
built from the keys; adding a dataset means adding a module and one entry.

>>> sorted(DATASETS)
['heart-disease', 'label-skew']
>>> DATASETS["heart-disease"].sites
('cleveland', 'hungary', 'switzerland', 'va')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fedrema_cli.data import ImageSchema, TabularSchema
from fedrema_cli.datasets import heart_disease, label_skew
from fedrema_cli.errors import UsageError
from fedrema_cli.modelspec import ModelSpec

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


def _prepare_label_skew(out_dir: Path, seed: int) -> SiteFiles:
    return label_skew.write_site_files(out_dir, seed=seed)


_LABEL_SKEW_SITES = label_skew.site_names(label_skew.DEFAULT_SITES)

DATASETS: dict[str, DatasetInfo] = {
    "heart-disease": DatasetInfo(
        name="heart-disease",
        description=(
            "UCI Heart Disease, 4 real hospitals (Cleveland, Hungary, Switzerland, VA), "
            "13 features, binary label; FLamby's preprocessing and train/test split"
        ),
        kind="tabular",
        schema=heart_disease.SCHEMA,
        model_spec=heart_disease.MODEL_SPEC,
        sites=heart_disease.SITES,
        prepare=_prepare_heart,
        source="Janosi et al. 1988, UCI ML Repository, doi:10.24432/C52P4X (CC BY 4.0)",
    ),
    "label-skew": DatasetInfo(
        name="label-skew",
        description=(
            f"scikit-learn digits (8x8) over {label_skew.DEFAULT_SITES} sites with FedReMa-style "
            "label skew: 20% balanced, 80% from one 3-class group shared by a block of sites"
        ),
        kind="image",
        schema=label_skew.SCHEMA,
        model_spec=label_skew.MODEL_SPEC,
        sites=_LABEL_SKEW_SITES,
        prepare=_prepare_label_skew,
        blocks={
            name: label_skew.block_of(i, label_skew.DEFAULT_SITES)
            for i, name in enumerate(_LABEL_SKEW_SITES)
        },
        source="scikit-learn load_digits (UCI Optical Recognition of Handwritten Digits)",
    ),
}


def get_dataset(name: str) -> DatasetInfo:
    """Look up a bundled dataset; the error lists the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise UsageError(f"unknown dataset {name!r}; known: {known}") from None
