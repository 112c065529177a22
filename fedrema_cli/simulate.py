"""A whole federation on one machine: every site and the coordinator, the same code paths.

Each party gets its own state folder, the workspace is a real folder, and every step is the
role method the CLI command calls; only the processes are shared. Sites can be made to drop
out at a chosen protocol stage of a chosen round, to see the round finish without them.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fedrema_cli.config import TrainingConfig, checked_options, finetune_rounds, make_config
from fedrema_cli.data.datasets import carve_validation, get_dataset
from fedrema_cli.data.tables import TabularSchema, load_npz, load_table
from fedrema_cli.errors import OptionError, ProtocolAbortedError, SitsOutError, UsageError
from fedrema_cli.methods import METHODS
from fedrema_cli.protocol.rounds import current_round, phase_of
from fedrema_cli.roles.coordinator import Coordinator
from fedrema_cli.roles.site import Site
from fedrema_cli.store.traffic import Meter, MeteredStorage
from fedrema_cli.store.workspace import COORDINATOR

STAGES = {"keys": "keys", "submit": "collect", "unmask": "unmask", "offline": None}


@dataclass(frozen=True)
class Drop:
    """Site ``site`` does nothing during ``stage`` of round ``round`` ("offline": all of it)."""

    site: str
    stage: str
    round: int

    @classmethod
    def parse(cls, text: str) -> Drop:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+):(keys|submit|unmask|offline)(?:@(\d+))?", text.strip())
        if not m:
            raise OptionError(
                f"bad --drop {text!r}; use SITE:STAGE[@ROUND] with STAGE one of "
                "keys, submit, unmask, offline (e.g. va:unmask@3)"
            )
        return cls(m.group(1), m.group(2), int(m.group(3) or 1))

    def blocks(self, site: str, r: int, phase: str) -> bool:
        if site != self.site or r != self.round:
            return False
        return self.stage == "offline" or STAGES[self.stage] == phase


@dataclass
class SimulationSpec:
    dataset: str
    method: str
    rounds: int = 20
    seed: int = 1
    secure_aggregation: bool = True
    epsilon: float | None = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    training: TrainingConfig = field(default_factory=TrainingConfig)
    method_options: dict[str, Any] = field(default_factory=dict)
    drops: tuple[Drop, ...] = ()
    secagg_bits: str = "auto"  # the masked sum's width: "auto", "24", "32" or "64"
    secagg_bounds: str = "data"  # headroom bounds: "data" (tight, public) or "config" defaults
    broadcast: str = "float16"  # the model's width on the wire: "float16" or "float32"
    workdir: Path | None = None
    keep: bool = False
    validation: bool = False  # train on part of each training set, score on the rest
    track: bool = False  # score every site's deployable model after every round
    predictions: bool = False  # per test example: was the deployed model right ("0"/"1")


def run(
    spec: SimulationSpec, *, on_round: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Run the federation and return per-site test metrics and their means.

    Keys: ``sites[name]`` holds ``accuracy``, ``balanced_accuracy`` and ``auc`` of the
    deployed model's most probable class (argmax), ``n_test`` and ``epsilon`` (spent, None
    without DP); beside them, at the decision threshold `personalize` chooses on a stratified
    validation split of the site's *training* file (binary tasks; None otherwise):
    ``threshold``, ``balanced_accuracy_at_threshold`` and ``sensitivity_at_threshold``
    (sensitivity = recall of class 1); ``accuracy_at_operating_point``, the accuracy of the
    site's decision rule (binary: at the threshold; more classes: the most probable class at
    the site's own class prior, `learning.metrics.PriorShift`); and ``warnings``, the
    degenerate-model warnings (`learning.metrics.model_warnings`: ``code``, ``message``,
    ``cause``, ``advice``, ``at``: "argmax", "threshold" or "class prior"). ``mean_accuracy``,
    ``mean_balanced_accuracy``, ``mean_auc``, ``mean_accuracy_at_operating_point``,
    ``mean_balanced_accuracy_at_threshold`` and ``mean_sensitivity_at_threshold`` are
    unweighted means over sites (a site without the value is left out of that mean).
    """
    if spec.method not in METHODS:
        raise OptionError(f"unknown method {spec.method!r}; choose from {', '.join(METHODS)}")
    info = get_dataset(spec.dataset)
    for d in spec.drops:
        if d.site not in info.sites:
            raise OptionError(
                f"--drop names {d.site!r}, not a site of {spec.dataset} ({', '.join(info.sites)})"
            )
        if not 1 <= d.round <= spec.rounds:
            raise OptionError(f"--drop round {d.round} is outside 1..{spec.rounds}")
    _secagg_bits(spec.secagg_bits)  # bad values are refused before any folder is made
    _broadcast(spec.broadcast)
    if spec.secagg_bounds not in SECAGG_BOUNDS:
        raise OptionError(f"--secagg-bounds must be data or config, not {spec.secagg_bounds!r}")
    tmp = None
    if spec.workdir is None:
        tmp = tempfile.mkdtemp(prefix="fedrema-sim-")
        root = Path(tmp)
    else:
        root = spec.workdir
        if root.exists() and any(root.iterdir()):
            raise UsageError(f"--workdir {root} is not empty; use a new folder")
    _warm_up()
    started = time.perf_counter()
    try:
        result = _run(spec, info, root, on_round)
    finally:
        if tmp is not None and not spec.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - started, 2)
    if spec.workdir is not None:
        result["workdir"] = str(root)
    return result


def _warm_up() -> None:
    """Import the training stack before the clock starts: ``seconds`` then times the
    federation, not one-off imports (several seconds, paid by whichever method ran first)."""
    import opacus  # noqa: F401

    import fedrema_cli.learning.training  # noqa: F401
    import privacy.engine  # noqa: F401


def _run(
    spec: SimulationSpec, info: Any, root: Path, on_round: Callable[[int, int], None] | None
) -> dict[str, Any]:
    files = info.prepare(root / "data", spec.seed)
    if spec.validation:  # model selection: the test files are never read
        files = carve_validation(info, files, root / "validation", seed=spec.seed)
    workspace = str(root / "workspace")
    with checked_options():
        config = make_config(
            federation_id=f"sim-{spec.dataset}-{spec.method}",
            model=info.model_spec,
            data=info.schema,
            method=spec.method,
            rounds=spec.rounds,
            seed=spec.seed,
            training=spec.training,
            secure_aggregation=spec.secure_aggregation,
            epsilon=spec.epsilon,
            delta=spec.delta,
            max_grad_norm=spec.max_grad_norm,
            method_options=spec.method_options,
            modulus_bits=_secagg_bits(spec.secagg_bits),
            broadcast=_broadcast(spec.broadcast),
            **_secagg_bounds(spec.secagg_bounds, info, files),
        )
    coord = Coordinator.create(workspace=workspace, state_dir=root / "coordinator", config=config)
    sites = {
        name: Site.create(
            workspace=workspace,
            state_dir=root / "sites" / name,
            name=name,
            train=paths["train"],
            test=paths["test"],
        )
        for name, paths in files.items()
    }
    meter = _metered(coord, sites)
    coord.approve(None)
    for s in sites.values():  # pin the roster; DP noise replayable from the seed (simulation)
        s.fed.load_roster()
        s.simulated_noise = True

    def acts(name: str, r: int) -> bool:
        phase = phase_of(coord.fed, r)
        return not any(d.blocks(name, r, phase) for d in spec.drops)

    curve: list[dict[str, float | None]] = []
    for r in range(1, spec.rounds + 1):
        dropping = any(d.round == r for d in spec.drops)
        for _ in range(8):  # each pass moves every party one protocol step at most
            if current_round(coord.fed) > r:
                break
            for name, site in sites.items():
                if not acts(name, r):
                    continue
                if (
                    phase_of(coord.fed, r) in ("keys", "collect", "waiting")
                    and not site.trained(r)
                    and coord.fed.exists("model", r)
                ):
                    _train_if_participant(site)
                site.submit()
            try:
                coord.advance(close=dropping)
            except ProtocolAbortedError as exc:  # the coordinator's hint is for a real one
                raise ProtocolAbortedError(
                    str(exc), hint="--drop fewer sites in that round: the threshold t is fixed"
                ) from None
        if current_round(coord.fed) <= r:
            raise UsageError(f"round {r} did not finish: {coord.waiting_for()}")
        if spec.track:
            curve.append(_mean_metrics({n: s.test_metrics() for n, s in sites.items()}))
        if on_round is not None:
            on_round(r, spec.rounds)

    per_site: dict[str, Any] = {}
    for name, site in sites.items():
        out = site.personalize()
        scored = site.test_proba()
        m = out["metrics"] or {}
        clinical = out.get("clinical") or {}
        per_site[name] = {
            "accuracy": m.get("accuracy"),
            "balanced_accuracy": m.get("balanced_accuracy"),
            "auc": m.get("auc"),
            "n_test": m.get("n"),
            "epsilon": site.epsilon_spent(),
            "threshold": out["threshold"].get("threshold"),
            "balanced_accuracy_at_threshold": (
                (clinical.get("balanced_accuracy") or {}).get("value")
                if out["threshold"].get("threshold") is not None
                else None
            ),
            "sensitivity_at_threshold": (clinical.get("sensitivity") or {}).get("value"),
            "accuracy_at_operating_point": (clinical.get("accuracy") or {}).get("value"),
            "warnings": _warnings(out, scored, private=spec.epsilon is not None),
        }
        if spec.predictions and scored is not None:
            per_site[name].update(_correct(out, *scored))
    result: dict[str, Any] = {
        "dataset": spec.dataset,
        "method": spec.method,
        "rounds": spec.rounds,
        "seed": spec.seed,
        "secure_aggregation": coord.config.secure,
        "privacy": ({"epsilon": spec.epsilon, "delta": spec.delta} if spec.epsilon else None),
        "drops": [f"{d.site}:{d.stage}@{d.round}" for d in spec.drops],
        # what ran, as the coordinator signed it: a script can re-create the run from it
        "config": {
            **coord.config.model_dump(
                mode="json",
                include={"method_options", "training", "model", "secagg", "privacy", "broadcast"},
            ),
            "finetune_rounds": finetune_rounds(coord.config),
            "validation": spec.validation,
        },
        "sites": per_site,
    }
    result.update(_mean_metrics(per_site))
    if spec.validation:
        result["evaluated_on"] = "validation"
    if spec.track:
        result["curve"] = curve
    result["communication"] = communication(meter, list(sites), spec.rounds)
    if coord.merge_log():
        result["merging"] = coord.config.method_impl().summarize(coord.merge_log(), info.blocks)
    return result


# -- bytes on the wire ------------------------------------------------------------------------


def _secagg_bits(text: str) -> str | int:
    if text not in ("auto", "24", "32", "64"):
        raise OptionError(f"--secagg-bits must be auto, 24, 32 or 64, not {text!r}")
    return text if text == "auto" else int(text)


#: The per-coordinate clip C of the masked update a simulation declares with tight bounds:
#: 30x the largest |delta| measured on heart disease and label skew with and without DP
#: (docs/operations.md, "Communication"), so it clips nothing there.
SIMULATION_CLIP = 4.0


SECAGG_BOUNDS = ("data", "config")


def _secagg_bounds(text: str, info: Any, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The signed config's headroom bounds: the defaults ("config"), or tight public ones
    ("data"): the smallest power of two at least the largest site's training set, the
    bound an operator would declare for its federation, and :data:`SIMULATION_CLIP`."""
    if text == "config":
        return {}
    largest = max(_records(info.schema, paths["train"]) for paths in files.values())
    return {"max_weight": 1 << max(0, largest - 1).bit_length(), "secagg_clip": SIMULATION_CLIP}


def _records(schema: Any, path: str | Path) -> int:
    """How many examples a training file holds (read as the site reads it)."""
    if isinstance(schema, TabularSchema):
        return len(load_table(path, schema)[1])
    return len(load_npz(path, input_shape=schema.input_shape, classes=schema.classes)[1])


def _broadcast(text: str) -> Literal["float32", "float16"]:
    if text not in ("float32", "float16"):
        raise OptionError(f"--broadcast must be float16 or float32, not {text!r}")
    return text


def _metered(coord: Coordinator, sites: dict[str, Site]) -> Meter:
    """Count every party's workspace traffic from here on (one meter, one store per party)."""
    meter = Meter()
    for party, fed in [(COORDINATOR, coord.fed), *((n, s.fed) for n, s in sites.items())]:
        fed.ws.storage = MeteredStorage(fed.ws.storage, meter, party)
    return meter


def communication(meter: Meter, sites: list[str], rounds: int) -> dict[str, Any]:
    """Bytes per round (mean over rounds 1..R) each site uploads and downloads, by kind;
    their mean over sites; the coordinator's; and the one-off setup files."""
    span = range(1, rounds + 1)
    per_site = {name: meter.summary(name, span) for name in sites}
    mean: dict[str, Any] = {}
    for direction in ("up", "down"):
        mean[f"bytes_{direction}"] = round(
            float(np.mean([v[f"bytes_{direction}"] for v in per_site.values()])), 1
        )
        kinds = sorted({k for v in per_site.values() for k in v[f"{direction}_by_kind"]})
        mean[f"{direction}_by_kind"] = {
            k: round(
                float(np.mean([v[f"{direction}_by_kind"].get(k, 0.0) for v in per_site.values()])),
                1,
            )
            for k in kinds
        }
    return {
        "unit": "bytes per round, mean over rounds 1..R",
        "sites": per_site,
        "mean": mean,
        "coordinator": meter.summary(COORDINATOR, span),
        "setup": {p: meter.setup(p) for p in [COORDINATOR, *sites]},
    }


def _mean_metrics(per_site: dict[str, Any]) -> dict[str, float | None]:
    """Unweighted mean over sites of each metric (a site without AUC is left out of that mean)."""
    out: dict[str, float | None] = {}
    keys = ("accuracy", "balanced_accuracy", "auc", "accuracy_at_operating_point")
    if any(v and "sensitivity_at_threshold" in v for v in per_site.values()):
        keys += ("balanced_accuracy_at_threshold", "sensitivity_at_threshold")
    for key in keys:
        values = [v[key] for v in per_site.values() if v and v.get(key) is not None]
        out[f"mean_{key}"] = float(np.mean(values)) if values else None
    return out


def _warnings(
    out: dict[str, Any], scored: tuple[Any, Any] | None, *, private: bool
) -> list[dict[str, str]]:
    """Degenerate-model warnings of a site's deployed model on its test file (``scored``:
    its probabilities and labels): at the argmax (the columns `simulate` always showed) and
    at the site's decision rule (threshold or class prior)."""
    from fedrema_cli.learning.metrics import model_warnings

    if scored is None:
        return []
    found = [{**w.to_json(), "at": "argmax"} for w in model_warnings(*scored, private=private)]
    point = out["threshold"]
    at = "class prior" if point.get("criterion") == "prior-shift" else "threshold"
    if at == "class prior" or point.get("threshold") is not None:  # a rule other than argmax
        found += [{**w, "at": at} for w in out["warnings"] if w["code"] == "one-class"]
    return found


def _correct(out: dict[str, Any], proba: np.ndarray, labels: np.ndarray) -> dict[str, str]:
    """Which test examples the site's deployed model gets right, as strings of 0/1 in file
    order (for paired bootstraps over test examples): ``correct`` at the argmax,
    ``correct_at_operating_point`` under the decision rule `personalize` chose; and, for
    up to ten classes, ``labels``: each example's class as one digit (per-class rates)."""
    from fedrema_cli.learning.metrics import decide, predictions

    y = np.asarray(labels)

    def flags(pred: np.ndarray) -> str:
        return "".join("1" if ok else "0" for ok in pred == y)

    found = {
        "correct": flags(predictions(proba)),
        "correct_at_operating_point": flags(decide(proba, out["threshold"])),
    }
    if proba.shape[1] <= 10:
        found["labels"] = "".join(str(int(c)) for c in y)
    return found


def _train_if_participant(site: Site) -> None:
    with contextlib.suppress(SitsOutError):  # left out of this round: it sits it out
        site.train_local()
