"""Creating a federation, joining it, approving sites: the choices behind `init` and `approve`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedrema_cli.config import (
    FederationConfig,
    TrainingConfig,
    checked_options,
    make_config,
    parse_class_weighting,
)
from fedrema_cli.data.datasets import get_dataset
from fedrema_cli.data.tables import FeatureRanges, ImageSchema, TabularSchema
from fedrema_cli.errors import OptionError
from fedrema_cli.identity import fingerprint
from fedrema_cli.learning.modelspec import ModelSpec
from fedrema_cli.methods import parse_method_options
from fedrema_cli.protocol.exchange import pending_rotations
from fedrema_cli.protocol.status import round_status
from fedrema_cli.roles.coordinator import Coordinator, RosterChange
from fedrema_cli.roles.site import Site
from fedrema_cli.store.state import SITE_META, PartyState
from fedrema_cli.store.workspace import Workspace


def create(
    *,
    workspace: str,
    state: Path,
    preset: str | None,
    features: str | None,
    label: str | None,
    classes: str | None,
    hidden: str | None,
    federation_id: str | None,
    feature_ranges: str | None = None,
    method: str,
    method_options: list[str] | None = None,
    rounds: int,
    epochs: int,
    batch_size: int,
    lr: float,
    class_weighting: str | None = None,
    seed: int,
    epsilon: float | None,
    delta: float,
    max_grad_norm: float,
    threshold: int | None,
    secure_aggregation: bool,
    consistency_check: bool = False,
    round_timeout: float,
    max_records: int | None = None,
    update_clip: float | None = None,
) -> dict[str, Any]:
    schema, model = _task(preset, features, label, classes, hidden, feature_ranges)
    with checked_options():
        config = make_config(
            federation_id=federation_id or preset or "federation",
            model=model,
            data=schema,
            method=method,
            method_options=parse_method_options(method, method_options),
            rounds=rounds,
            seed=seed,
            training=TrainingConfig(
                local_epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                class_weighting=parse_class_weighting(class_weighting),
            ),
            secure_aggregation=secure_aggregation,
            consistency_check=consistency_check,
            threshold=threshold,
            timeout_seconds=round_timeout,
            max_weight=max_records,
            secagg_clip=update_clip,
            epsilon=epsilon,
            delta=delta,
            max_grad_norm=max_grad_norm,
        )
    coord = Coordinator.create(workspace=workspace, state_dir=state, config=config)
    c = coord.config
    return {
        "federation": c.federation_id,
        "fingerprint": fingerprint(c.coordinator.sign_pk),
        "method": c.method,
        "rounds": c.rounds,
        "privacy": (
            f"epsilon {c.privacy.target_epsilon:g}, delta {c.privacy.delta:g}"
            if c.privacy
            else "off"
        ),
        "secure_aggregation": c.secagg.enabled,
        "warnings": _warnings(c),
    }


def _warnings(config: FederationConfig) -> list[str]:
    """What the coordinator should know before sites join (a federation cannot be changed)."""
    out = []
    if config.privacy is not None and config.data.fixed_preprocessing is None:
        out.append(
            "each site will standardize features with its own training statistics, which "
            "the DP guarantee does not cover (the privacy report says so); to close that gap, "
            "create the federation with --feature-ranges from public knowledge"
        )
    if config.secagg.enabled and config.secagg.threshold:
        out.append(
            f"secure aggregation's threshold is fixed at t = {config.secagg.threshold}: the "
            f"roster needs at least {config.secagg.threshold} sites, and a round needs that "
            "many to finish; this cannot be changed later (leave --threshold out for the "
            "default, which follows the number of sites)"
        )
    return out


def _ranges(text: str, features: tuple[str, ...]) -> FeatureRanges:
    """``name=low:high,...`` for every feature, in any order."""
    given: dict[str, tuple[float, float]] = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, _, span = item.partition("=")
        if name.strip() in given:
            raise OptionError(f"--feature-ranges gives {name.strip()!r} twice")
        low, _, high = span.partition(":")
        try:
            given[name.strip()] = (float(low), float(high))
        except ValueError:
            raise OptionError(
                f"--feature-ranges: {item!r} is not NAME=LOW:HIGH (e.g. age=20:80)"
            ) from None
    unknown = sorted(set(given) - set(features))
    missing = [f for f in features if f not in given]
    if unknown or missing:
        raise OptionError(
            "--feature-ranges must give one range for every feature"
            + (f"; not features: {', '.join(unknown)}" if unknown else "")
            + (f"; missing: {', '.join(missing)}" if missing else "")
        )
    try:
        return FeatureRanges(
            ranges=tuple(given[f] for f in features),
            source="given by the coordinator at `fedrema init` (--feature-ranges)",
        )
    except ValidationError as e:
        msg = e.errors()[0]["msg"].removeprefix("Value error, ")
        raise OptionError(f"--feature-ranges: {msg}") from None


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise OptionError(f"{what} must be comma-separated whole numbers, got {text!r}") from None


def _task(
    preset: str | None,
    features: str | None,
    label: str | None,
    classes: str | None,
    hidden: str | None,
    feature_ranges: str | None = None,
) -> tuple[TabularSchema | ImageSchema, ModelSpec]:
    """The data schema and model: a bundled preset, or a table described on the command line."""
    if preset is not None:
        if features or label or classes:
            raise OptionError("give either --preset or --features/--label/--classes, not both")
        if feature_ranges:
            raise OptionError("--feature-ranges is for your own table; a preset has its own")
        info = get_dataset(preset)
        model = info.model_spec
        if hidden is not None:
            model = model.model_copy(update={"hidden": _ints(hidden, "--hidden")})
        return info.schema, model
    if not (features and label and classes):
        raise OptionError(
            "say what the federation learns: --preset heart-disease, or a table "
            "with --features a,b,c --label y --classes 0,1"
        )
    parsed: list[int | str] = []
    for c in classes.split(","):
        c = c.strip()
        parsed.append(int(c) if c.lstrip("-").isdigit() else c)
    try:
        names = tuple(f.strip() for f in features.split(",") if f.strip())
        schema = TabularSchema(
            features=names,
            label=label,
            classes=tuple(parsed),
            feature_ranges=_ranges(feature_ranges, names) if feature_ranges else None,
        )
        model = ModelSpec.mlp(
            in_features=schema.num_features,
            hidden=_ints(hidden, "--hidden") if hidden else (32, 16),
            num_classes=schema.num_classes,
        )
    except ValueError as e:
        if isinstance(e, ValidationError):
            raise OptionError(
                "the table description does not work: "
                + "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
            ) from None
        raise OptionError(f"the table description does not work: {e}".splitlines()[0]) from None
    return schema, model


def join(
    *,
    workspace: str,
    state: Path,
    site: str,
    train: Path | None,
    test: Path | None,
    coordinator_fingerprint: str | None,
) -> dict[str, Any]:
    if train is None:
        raise OptionError("a site needs its training data: --train PATH")
    # `init` run again (a script, cron) after it finished: nothing to do, say what is next
    already = PartyState(state).exists(SITE_META) and Workspace.open(workspace).exists(
        f"enrollments/{site}"
    )
    s = Site.create(
        workspace=workspace,
        state_dir=state,
        name=site,
        train=train,
        test=test,
        coordinator_fingerprint=coordinator_fingerprint,
    )
    return {
        "site": site,
        "federation": s.config.federation_id,
        "fingerprint": fingerprint(s.fed.identity.public.sign_pk),
        "coordinator_fingerprint": fingerprint(s.config.coordinator.sign_pk),
        "coordinator_fingerprint_checked": coordinator_fingerprint is not None,
        "warnings": [w.to_json() for w in _data_warnings(s)],
        "already_joined": already,
        "next": s.next_step(round_status(s.fed).to_json()) if already else None,
    }


def _data_warnings(site: Site) -> list[Any]:
    """A class with too few training records to learn from (shown to this site only: the
    counts are patient data and are not published)."""
    import numpy as np

    from fedrema_cli.learning.metrics import minority_warning

    k = site.config.model.num_classes
    counts = np.bincount(np.asarray(site.data().y_train, dtype=np.int64), minlength=k)[:k]
    warning = minority_warning(counts, classes=getattr(site.config.data, "classes", None))
    return [] if warning is None else [warning]


def approve(
    *,
    state: Path,
    workspace: str | None,
    sites: list[str] | None,
    all_sites: bool,
    remove: list[str] | None = None,
    confirm: Callable[[RosterChange], bool] = lambda change: True,
) -> dict[str, Any]:
    """List enrollments; with sites, ``--all`` or ``remove``: plan a roster version, let
    ``confirm`` see what it fixes (it returns False to sign nothing), then sign it."""
    coord = Coordinator(state, workspace=workspace)
    change = None
    signed = False
    if sites or all_sites or remove:
        change = coord.plan_roster(None if all_sites else sites or [], remove=tuple(remove or ()))
        if not change.unchanged and confirm(change):
            coord.sign_roster(change)
            signed = True
    roster = coord.fed.roster
    pending: dict[str, str] = {}
    if roster is not None:
        rotations, refused = pending_rotations(coord.fed)
        coord.refused_enrollments.update(refused)
        pending = {s: fingerprint(k.sign_pk) for s, k in sorted(rotations.items())}

    def key_of(e: Any) -> str:
        """The key in force: the latest roster's for an approved site (it may have rotated),
        the enrollment's otherwise."""
        if roster is not None and e.site in roster.names:
            return fingerprint(roster.site(e.site).sign_pk)
        return str(e.fingerprint)

    return {
        "federation": coord.config.federation_id,
        "roster_approved": roster is not None,
        "unchanged": change is not None and change.unchanged,
        "signed": signed,
        "roster": list(roster.names) if roster else [],
        "threshold": roster.threshold if roster else None,
        "n": len(roster.names) if roster else None,
        "version": roster.version if roster else None,
        "effective_from_round": roster.effective_from_round if roster else None,
        "threshold_rule": threshold_rule(coord.config),
        "added": list(change.added) if change and signed else [],
        "removed": list(change.removed) if change and signed else [],
        "rotated": list(change.rotated) if change and signed else [],
        "left_out": list(change.left_out) if change else [],
        "approved_now": list(change.added) if change and signed else [],
        "enrollments": [
            {
                "site": e.site,
                "fingerprint": key_of(e),
                "approved": e.approved,
                "pending_new_key": pending.get(e.site),
            }
            for e in coord.enrollments()
        ],
        "rotated_fingerprints": (
            {s: fingerprint(roster.site(s).sign_pk) for s in change.rotated}
            if change and signed and roster is not None
            else {}
        ),
        "refused_enrollments": dict(coord.refused_enrollments),
    }


def threshold_rule(config: Any) -> str:
    """How t follows n in this federation, in words (kept for every roster version)."""
    if config.secagg.threshold:
        return f"t = {config.secagg.threshold}, fixed at init"
    return "t = max(2, floor(2n/3) + 1), the default"
