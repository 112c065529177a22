"""Export a site's personalized model: weights (safetensors) plus a model card (JSON).

The card carries what a deployment needs besides the weights: the model spec, the feature
order and the scaling applied to inputs (the federation's public feature ranges, or, for a
federation without them, the site's own standardization statistics), and where the model came
from (federation, round, method, hash).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedrema_cli.config import FederationConfig
from fedrema_cli.data.tables import Standardizer
from fedrema_cli.errors import UsageError
from fedrema_cli.learning.params import save_params
from fedrema_cli.store.storage import LocalStorage, check_output_folder

WEIGHTS = "model.safetensors"
CARD = "model-card.json"


def export_model(
    folder: Path,
    *,
    params: Mapping[str, np.ndarray],
    config: FederationConfig,
    standardizer: Standardizer | None,
    card: Mapping[str, Any],
) -> str:
    check_output_folder(
        folder,
        option="--export",
        holds="the model and its card",
        hint="give --export a new folder, or this site's earlier export folder",
    )
    store = LocalStorage(folder)
    _refuse_other_site(store, folder, str(card.get("site")))
    full_card = {
        "format": "fedrema-model-card/1",
        **card,
        "model": config.model.model_dump(mode="json"),
        "data": config.data.model_dump(mode="json"),
        "standardizer": standardizer.model_dump(mode="json") if standardizer else None,
        "weights": WEIGHTS,
        "privacy": config.privacy.model_dump(mode="json") if config.privacy else None,
    }
    # The card first: it claims the folder for this site, so an export interrupted before the
    # weights can be run again (a folder of weights and no card is someone else's).
    store.replace(CARD, json.dumps(full_card, indent=1, sort_keys=True).encode() + b"\n")
    store.replace(WEIGHTS, save_params(params))
    return str(folder)


def _refuse_other_site(store: LocalStorage, folder: Path, site: str) -> None:
    """Refuse a folder whose model card names another site (or is not a model card), and a
    folder holding other files and no card: the weights would land beside someone's files, or
    replace a ``model.safetensors`` that is not ours."""
    if not store.exists(CARD):
        if store.list("."):
            raise UsageError(
                f"--export {folder} holds other files and no fedrema model card; refusing to "
                "write the model into it",
                hint="give --export a new or empty folder",
            )
        return
    try:
        existing = json.loads(store.read_bytes(CARD, max_bytes=16 << 20))
    except ValueError:
        existing = None
    owner = existing.get("site") if isinstance(existing, dict) else None
    if not isinstance(owner, str):
        raise UsageError(
            f"{folder / CARD} is not a fedrema model card; refusing to overwrite it",
            hint="export into an empty folder",
        )
    if owner != site:
        raise UsageError(
            f"{folder} holds site {owner!r}'s exported model; refusing to overwrite it "
            f"with {site!r}'s",
            hint="export each site into its own folder",
        )
