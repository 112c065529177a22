"""Accuracy benchmark: FedReMa against the baselines, with and without DP (not a test).

Run: ``.venv/bin/python benchmarks/accuracy.py [--select] [--quick] [--out DIR] [--workers N]``
(``make bench-accuracy``; with ``--select``, ``make bench-accuracy-full``). Every number
comes from ``fedrema_cli.simulate.run``: every site and the coordinator run the real role
code (signed files, DP-SGD with Opacus, the ledger, FedReMa) in one process per federation.

What it does, in two phases:

1. **Selection, on validation splits only.** For each dataset, method and privacy level (no DP,
   epsilon 8, 3 and 1: an operator fixes epsilon before training, so each level gets its own
   choice), a small grid of hyperparameters is run
   with each site's *training* file split 75/25 into fit/validation (``--validation`` of
   ``fedrema simulate``); the configuration with the best mean validation score over the
   validation splits is chosen (ties: the first in grid order): accuracy, or the dataset's
   ``select_on`` metric (label skew: accuracy at the site's operating point, the rule a site
   deploys). Test files are never read.
   It runs with ``--select`` and saves what it chose in ``benchmarks/chosen.json``; without
   ``--select`` the configurations saved there are reused, which keeps the one-command
   benchmark short (the selection runs about as many federations as the test).
2. **Test.** Each chosen configuration runs with seeds 1..3 (``--seeds 5`` for more; ``--quick``:
   1..2) at every privacy level (none, epsilon 8, 3, 1; delta 1e-5). Per site: accuracy,
   balanced accuracy and sensitivity at the site's own validation threshold and at argmax, ROC
   AUC, and the bytes a site moves per round;
   the mean over sites; mean +- std over seeds; the accuracy after every round; and paired
   differences between FedReMa and every other method (accuracy, and accuracy and balanced
   accuracy at the site's operating point) with 95% intervals from a paired bootstrap over
   seeds *and* test examples (a difference whose interval contains 0 is reported as within
   noise).

Outputs (``--out``, default ``benchmarks/results/accuracy``): ``summary.md`` (the tables),
``summary.csv``, ``per_site.csv``, ``paired.csv``, ``peers.csv``, ``selection.csv``,
``results.json``, ``runs.jsonl`` (every run), ``accuracy_by_method.png`` and
``accuracy_over_rounds.png``.

Speed, without changing any number: federations run in ``--workers`` processes (one torch
thread each), their folders live on ``/dev/shm`` when it exists, plaintext updates replace
secure aggregation (it changes sums only by fixed-point rounding, below 2^-24 per coordinate),
``majority`` is trained once per seed and reused at every privacy level (it takes no gradient
step and spends no budget), and Opacus's RDP function ``_compute_rdp(q, sigma, alpha)`` (pure,
recomputed for every round's budget check) is memoised in the worker processes.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import platform
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRIVACY: tuple[float | None, ...] = (None, 8.0, 3.0, 1.0)
DELTA = 1e-5
BOOTSTRAP = 4000
#: The configurations the last selection chose (``--select`` writes it; other runs reuse it).
CHOSEN = Path(__file__).resolve().parent / "chosen.json"

# Every registered method runs (the registry is the one list of methods), baselines first;
# logistic regression needs a table.
from fedrema_cli.defaults import DEFAULT_METHOD as REFERENCE  # noqa: E402
from fedrema_cli.methods import METHODS  # noqa: E402

HEART_METHODS = tuple(reversed(METHODS))
IMAGE_METHODS = tuple(m for m in HEART_METHODS if METHODS[m].model != "linear")

# Per dataset: rounds, batch size, validation splits, and the grid each method searches.
# Grids are small on purpose; the first entry of every list is the CLI's default.
SETUP: dict[str, dict[str, Any]] = {
    "heart-disease": {
        "sites": 4,
        "rounds": 20,
        "batch_size": 16,
        "val_splits": {"none": 2, "dp": 1},
        "methods": HEART_METHODS,
        "grid": {"lr": [0.05, 0.1], "local_epochs": [1]},
        "finetune_rounds": {"fedavg-ft": [5, 20], "fedrema": [0, 5]},
        "options": {
            "pfednet": [{"lam": 0.05}, {"lam": 0.2}],
            "mr-mtl": [{"lam": 1.0}, {"lam": 0.1}, {"lam": 0.01}],
        },
    },
    "label-skew": {
        "sites": 10,
        "rounds": 8,
        "batch_size": 16,
        "val_splits": {"none": 1, "dp": 1},
        "methods": IMAGE_METHODS,
        # lr 0.1 was chosen for 2 of 16 (method, privacy) pairs in the 8-method run; it is
        # left out to keep the whole benchmark under 20 minutes with 12 methods.
        "grid": {"lr": [0.05], "local_epochs": [1, 3]},
        "finetune_rounds": {"fedavg-ft": [5], "fedrema": [0, 5]},
        # Sites deploy the posterior moved to their own class prior (personalize's operating
        # point for more than two classes), so configurations are chosen on accuracy there.
        "select_on": "accuracy_at_operating_point",
        "options": {
            "fedrema": [{"global_weight": w} for w in (0.0, 0.25, 0.5)],
            "fedrema-model": [{"global_weight": w} for w in (0.0, 0.25, 0.5)],
            "pfednet": [{"lam": 0.05}, {"lam": 0.2}],
            "mr-mtl": [{"lam": 1.0}, {"lam": 0.1}, {"lam": 0.01}],
        },
    },
    # Imbalanced (5-20% malignant per site): accuracy rewards predicting "benign" everywhere,
    # so configurations are chosen on balanced accuracy at each site's validation threshold.
    "breast-cancer-imbalanced": {
        "sites": 5,
        "rounds": 20,
        "batch_size": 16,
        "val_splits": {"none": 1, "dp": 1},
        "select_on": "balanced_accuracy_at_threshold",
        "methods": HEART_METHODS,
        "grid": {"lr": [0.05, 0.1], "local_epochs": [1]},
        "finetune_rounds": {"fedavg-ft": [5], "fedrema": [0]},
        "options": {
            "pfednet": [{"lam": 0.05}, {"lam": 0.2}],
            "mr-mtl": [{"lam": 1.0}, {"lam": 0.1}],
        },
    },
}


def level_name(eps: float | None) -> str:
    return "none" if eps is None else f"eps{eps:g}"


def level_label(eps: float | None) -> str:
    return "no DP" if eps is None else f"ε={eps:g}"


def grid(dataset: str, method: str) -> list[dict[str, Any]]:
    """The configurations one method tries on one dataset (majority has nothing to tune)."""
    setup = SETUP[dataset]
    if method == "majority":
        return [{"lr": setup["grid"]["lr"][0], "local_epochs": 1}]
    out = [
        {"lr": lr, "local_epochs": e}
        for e in setup["grid"]["local_epochs"]
        for lr in setup["grid"]["lr"]
    ]
    if method in setup["finetune_rounds"]:
        rounds = setup["finetune_rounds"][method]
        out = [{**c, "finetune_rounds": f} for f in rounds for c in out]
    choices = setup["options"].get(method)
    if choices:
        out = [{**c, "options": o} for o in choices for c in out]
    return out


# -- running one federation (in a worker process) -----------------------------------------


def _worker_init() -> None:
    """One torch thread per worker, folders in RAM, and Opacus's pure RDP function memoised."""
    warnings.filterwarnings("ignore")
    import tempfile

    import opacus.accountants.analysis.rdp as rdp
    import torch

    torch.set_num_threads(1)
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        tempfile.tempdir = "/dev/shm"
    if not hasattr(rdp._compute_rdp, "cache_info"):
        rdp._compute_rdp = functools.lru_cache(maxsize=None)(rdp._compute_rdp)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one federation and keep what the analysis needs."""
    from fedrema_cli import simulate as sim
    from fedrema_cli.config import TrainingConfig

    cfg = job["config"]
    test = job["phase"] == "test"
    spec = sim.SimulationSpec(
        dataset=job["dataset"],
        method=job["method"],
        rounds=SETUP[job["dataset"]]["rounds"],
        seed=job["seed"],
        secure_aggregation=job.get("secure", False),
        epsilon=job["epsilon"],
        delta=DELTA,
        training=TrainingConfig(
            lr=cfg["lr"],
            local_epochs=cfg["local_epochs"],
            batch_size=SETUP[job["dataset"]]["batch_size"],
            finetune_rounds=cfg.get("finetune_rounds"),
        ),
        method_options=cfg.get("options", {}),
        validation=not test,
        track=test,
        predictions=test,
    )
    started = time.perf_counter()
    result = sim.run(spec)
    keep = ("sites", "curve", "merging")
    comm = result.get("communication") if job.get("secure") else None
    return {
        **job,
        **{k: v for k, v in result.items() if k in keep or k.startswith("mean_")},
        **({"bytes": comm["mean"]} if comm else {}),
        "seconds": time.perf_counter() - started,
    }


def remeasure_bytes(
    records: list[dict[str, Any]], workers: int
) -> tuple[list[dict[str, Any]], float]:
    """Re-run only the runs made through secure aggregation; replace their bytes, keep the rest.

    For a change to how files travel that moves no number (packing, say). The masked sum
    rounds stochastically from os.urandom, so a re-run's accuracy may differ from the record
    by a prediction or two; the largest difference is returned and printed, and a change
    beyond ``BYTES_TOLERANCE`` means the change was not neutral: re-run the whole benchmark.
    """
    fields = ("phase", "dataset", "method", "group", "epsilon", "seed", "config", "secure")
    secure = [r for r in records if r.get("secure") and not r.get("reused_from")]
    print(f"bytes: {len(secure)} federations through secure aggregation", flush=True)
    fresh = run_all([{k: r[k] for k in fields} for r in secure], workers, "bytes")
    by_key = {(r["dataset"], r["method"]): r for r in fresh}
    remeasured = {id(r) for r in secure}
    out, largest = [], 0.0
    for r in records:
        new = by_key.get((r["dataset"], r["method"])) if id(r) in remeasured else None
        if new is None:
            out.append(r)
            continue
        change = abs(new["mean_accuracy"] - r["mean_accuracy"])
        largest = max(largest, change)
        if change:
            print(f"  {r['dataset']} {r['method']}: accuracy {change:+.4f} against the record")
        out.append({**r, "bytes": new["bytes"]})
    if largest > BYTES_TOLERANCE:
        raise SystemExit(f"accuracy moved by {largest:.4f}: re-run the whole benchmark")
    return out, largest


def run_all(jobs: list[dict[str, Any]], workers: int, what: str) -> list[dict[str, Any]]:
    """Run jobs in worker processes, the expensive ones first, printing progress."""
    order = sorted(jobs, key=_cost, reverse=True)
    out: list[dict[str, Any]] = []
    started = time.perf_counter()
    with ProcessPoolExecutor(workers, initializer=_worker_init) as pool:
        futures = [pool.submit(run_job, j) for j in order]
        for k, fut in enumerate(as_completed(futures), 1):
            out.append(fut.result())
            if k % 10 == 0 or k == len(futures):
                print(
                    f"  {what}: {k}/{len(futures)} federations, "
                    f"{time.perf_counter() - started:.0f} s",
                    flush=True,
                )
    return out


def _cost(job: dict[str, Any]) -> float:
    """Rough relative cost, only to start the longest federations first."""
    sites = SETUP[job["dataset"]]["sites"]
    cfg = job["config"]
    rounds = SETUP[job["dataset"]]["rounds"] + cfg.get("finetune_rounds", 0)
    return sites * rounds * cfg["local_epochs"] * (3.0 if job["epsilon"] else 1.0)


# -- the two phases -------------------------------------------------------------------------


def selection_jobs(datasets: Iterable[str], methods_of: dict[str, tuple[str, ...]]) -> list[dict]:
    jobs = []
    for ds in datasets:
        for method in methods_of[ds]:
            if method == "majority":
                continue
            for eps in PRIVACY:
                splits = SETUP[ds]["val_splits"]["none" if eps is None else "dp"]
                for c, cfg in enumerate(grid(ds, method)):
                    for k in range(splits):
                        jobs.append(
                            {
                                "phase": "select",
                                "dataset": ds,
                                "method": method,
                                "group": level_name(eps),
                                "epsilon": eps,
                                "seed": 1001 + k,
                                "config": cfg,
                                "config_index": c,
                            }
                        )
    return jobs


def choose(records: list[dict[str, Any]]) -> tuple[dict, list[dict[str, Any]]]:
    """Best mean validation score per (dataset, privacy level, method): accuracy, or the
    dataset's ``select_on`` metric; ties: the first in grid order. The level comes from each
    run's epsilon, so records made when one DP group served every level are read right."""
    scores: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    configs: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for r in records:
        key = (r["dataset"], level_name(r["epsilon"]), r["method"])
        metric = SETUP[r["dataset"]].get("select_on", "accuracy")
        score = r.get(f"mean_{metric}")
        scores[key][r["config_index"]].append(r["mean_accuracy"] if score is None else score)
        configs[key][r["config_index"]] = r["config"]
    chosen: dict[tuple, dict] = {}
    table = []
    for key in sorted(scores):
        means = {c: float(np.mean(v)) for c, v in scores[key].items()}
        best = max(sorted(means), key=lambda c: (means[c], -c))
        chosen[key] = configs[key][best]
        for c in sorted(means):
            table.append(
                {
                    "dataset": key[0],
                    "group": key[1],
                    "method": key[2],
                    **{k: _flat(configs[key][c]).get(k, "") for k in _CONFIG_KEYS},
                    "val_accuracy": means[c],
                    "splits": len(scores[key][c]),
                    "chosen": c == best,
                }
            )
    return chosen, table


_CONFIG_KEYS = ("lr", "local_epochs", "finetune_rounds", "global_weight", "lam")


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    """A configuration with its method options beside the training knobs, for the tables."""
    return {**{k: v for k, v in config.items() if k != "options"}, **config.get("options", {})}


def save_chosen(path: Path, chosen: dict[tuple, dict], table: list[dict[str, Any]]) -> None:
    """The configurations a selection chose (and its table), for later runs to reuse; the
    entries of datasets this selection did not run are kept."""
    ran = {d for d, _, _ in chosen}
    rows = [{"dataset": d, "group": g, "method": m, "config": c} for (d, g, m), c in chosen.items()]
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        rows = [r for r in old["chosen"] if r["dataset"] not in ran] + rows
        table = [r for r in old["table"] if r["dataset"] not in ran] + table
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"chosen": rows, "table": table}, indent=1) + "\n")
    tmp.replace(path)


def load_chosen(path: Path, datasets: list[str]) -> tuple[dict[tuple, dict], list[dict]]:
    """What an earlier selection chose, for the datasets asked for; every one must be there."""
    saved = json.loads(path.read_text(encoding="utf-8"))
    chosen = {
        (r["dataset"], r["group"], r["method"]): r["config"]
        for r in saved["chosen"]
        if r["dataset"] in datasets
    }
    missing = [
        (ds, g, m)
        for ds in datasets
        for m in SETUP[ds]["methods"]
        for g in map(level_name, PRIVACY)
        if m != "majority" and (ds, g, m) not in chosen
    ]
    if missing:
        raise SystemExit(f"{path} has no chosen configuration for {missing[:3]}; run --select")
    return chosen, [r for r in saved["table"] if r["dataset"] in datasets]


def test_jobs(
    datasets: Iterable[str],
    methods_of: dict[str, tuple[str, ...]],
    chosen: dict[tuple, dict],
    seeds: list[int],
) -> list[dict]:
    jobs = []
    for ds in datasets:
        for method in methods_of[ds]:
            for eps in PRIVACY:
                if method == "majority" and eps is not None:
                    continue  # no training, no budget: the no-DP run is reused
                group = level_name(eps)
                cfg = grid(ds, method)[0] if method == "majority" else chosen[(ds, group, method)]
                for seed in seeds:
                    jobs.append(
                        {
                            "phase": "test",
                            "dataset": ds,
                            "method": method,
                            "group": group,
                            "epsilon": eps,
                            "seed": seed,
                            "config": cfg,
                            # one run per method through real secure aggregation, for bytes
                            "secure": {"epsilon": eps, "seed": seed} == BYTES_RUN,
                        }
                    )
    return jobs


def reuse_majority(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = list(records)
    for r in records:
        if r["method"] == "majority" and r["epsilon"] is None:
            for eps in PRIVACY[1:]:
                out.append({**r, "epsilon": eps, "group": level_name(eps), "reused_from": "none"})
    return out


# -- analysis -------------------------------------------------------------------------------


# The metrics of every table, headline first: accuracy (argmax); accuracy at each site's
# operating point (binary: its threshold; more classes: its own class prior, what the site
# deploys); balanced accuracy and sensitivity at the decision threshold each site chose on its
# own validation split (sensitivity is of the positive class, so binary tasks only); balanced
# accuracy at argmax; AUC; and the bytes a site moves per round (uploaded and downloaded, mean
# over sites).
METRICS: tuple[tuple[str, str], ...] = (
    ("accuracy", "accuracy"),
    ("accuracy_at_operating_point", "accuracy at the site's operating point"),
    ("balanced_accuracy_at_threshold", "balanced accuracy at the site's threshold"),
    ("sensitivity_at_threshold", "sensitivity at the site's threshold"),
    ("balanced_accuracy", "balanced accuracy at argmax"),
    ("auc", "ROC AUC"),
)
# Bytes are measured on the runs that go through secure aggregation (see BYTES_RUN): the
# plaintext runs that make the benchmark fast would under-count the protocol's messages.
BYTES_RUN = {"epsilon": 3.0, "seed": 1}
#: How far a `--bytes` re-run's accuracy may stray from its record (stochastic rounding only).
BYTES_TOLERANCE = 0.01


def _mean_std(values: list[float | None]) -> tuple[float, float]:
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return float("nan"), float("nan")
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["dataset"], r["epsilon"], r["method"])].append(r)
    rows = []
    for (ds, eps, method), rs in groups.items():
        row: dict[str, Any] = {
            "dataset": ds,
            "privacy": level_name(eps),
            "epsilon": eps,
            "method": method,
            "seeds": len(rs),
        }
        for key, _ in METRICS:
            m, s = _mean_std([r.get(f"mean_{key}") for r in rs])
            row[f"{key}_mean"], row[f"{key}_std"] = m, s
        eps_spent = [
            v["epsilon"] for r in rs for v in r["sites"].values() if v.get("epsilon") is not None
        ]
        row["max_epsilon_spent"] = max(eps_spent) if eps_spent else None
        rows.append(row)
    return rows


def per_site(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        for site, v in r["sites"].items():
            groups[(r["dataset"], r["epsilon"], r["method"], site)].append(v)
    rows = []
    for (ds, eps, method, site), vs in groups.items():
        row: dict[str, Any] = {
            "dataset": ds,
            "privacy": level_name(eps),
            "method": method,
            "site": site,
            "n_test": vs[0]["n_test"],
        }
        for key, _ in METRICS:
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([v.get(key) for v in vs])
        rows.append(row)
    return rows


def paired_bootstrap(
    a: dict[int, dict[str, str]],
    b: dict[int, dict[str, str]],
    rng: np.random.Generator,
    labels: dict[int, dict[str, str]] | None = None,
) -> tuple[float, float, float]:
    """Mean-over-sites accuracy of a minus b, with a 95% interval from a paired bootstrap.

    ``a[seed][site]`` is the 0/1 string of which test examples were right. Each replicate
    resamples the seeds and, within every site, the test examples (the same draws for both
    methods), so the interval covers training randomness and the small test sets together.
    With ``labels[seed][site]`` (each example's class, one digit), balanced accuracy instead:
    the mean over classes of the share of that class called right. Its draws are stratified
    (each class resampled within itself, keeping its count), so every draw scores the same
    classes as the point estimate; an unstratified draw that loses a rare class scores a
    different statistic, and on ten-class sites with 28 test images that bias put point
    estimates outside their own intervals.
    """
    seeds = sorted(set(a) & set(b))
    sites = sorted(a[seeds[0]])
    s = len(seeds)
    point = 0.0
    boot = np.zeros(BOOTSTRAP)
    seed_draw = rng.integers(0, s, size=(BOOTSTRAP, s))
    for site in sites:
        da = np.array([[c == "1" for c in a[k][site]] for k in seeds])
        db = np.array([[c == "1" for c in b[k][site]] for k in seeds])
        n = da.shape[1]
        if labels is None:
            ys, draws = None, [rng.integers(0, n, size=(BOOTSTRAP, n))] * s
        else:
            ys = [np.array([int(c) for c in labels[k][site]]) for k in seeds]
            draws = [_stratified(y, rng) for y in ys]
        point += _per_draw(da, db, ys, [np.arange(n)[None, :]] * s).mean()
        per_seed = _per_draw(da, db, ys, draws)  # B x s
        boot += np.take_along_axis(per_seed, seed_draw, axis=1).mean(axis=1)
    point /= len(sites)
    boot /= len(sites)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return float(point), float(lo), float(hi)


def _per_draw(
    da: np.ndarray, db: np.ndarray, ys: list[np.ndarray] | None, draws: list[np.ndarray]
) -> np.ndarray:
    """a minus b on each draw (a row of example indices; one draw matrix per seed), per seed
    (draws x seeds): accuracy, or with each seed's labels ``ys`` balanced accuracy."""
    if ys is None:
        diffs = [
            (ra.astype(np.float64) - rb)[d].mean(axis=1)
            for ra, rb, d in zip(da, db, draws, strict=True)
        ]
    else:
        diffs = [
            _balanced(ra, y, d) - _balanced(rb, y, d)
            for ra, rb, y, d in zip(da, db, ys, draws, strict=True)
        ]
    return np.stack(diffs, axis=1)


def _stratified(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``BOOTSTRAP`` draws of example indices, each class resampled within its own examples."""
    out = np.empty((BOOTSTRAP, len(y)), dtype=np.int64)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        out[:, idx] = idx[rng.integers(0, len(idx), size=(BOOTSTRAP, len(idx)))]
    return out


def _balanced(right: np.ndarray, y: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Balanced accuracy of each draw (a row of example indices; stratified draws keep every
    class): the mean over classes of the share of that class's examples called right."""
    yd, rd = y[draws], right[draws]
    classes = np.unique(y)
    recall = [(rd & (yd == c)).sum(axis=1) / (yd == c).sum(axis=1) for c in classes]
    return np.mean(recall, axis=0)


#: What the paired bootstraps compare: accuracy at the argmax and at each site's operating
#: point, and balanced accuracy there (the simulate key of the 0/1 string, the table's title,
#: and whether the statistic is balanced over the examples' ``labels``).
PAIRED = (
    ("correct", "accuracy", False),
    ("correct_at_operating_point", "accuracy at the site's operating point", False),
    ("correct_at_operating_point", "balanced accuracy at the site's operating point", True),
)


def paired(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FedReMa minus each method, per dataset and privacy level, for each `PAIRED` metric
    (runs recorded before a metric, or the labels it needs, existed are left out of it)."""
    return [
        {**row, "metric": title}
        for key, title, balanced in PAIRED
        for row in _paired(
            [
                r
                for r in records
                if all(key in v and (not balanced or "labels" in v) for v in r["sites"].values())
            ],
            key,
            balanced,
        )
    ]


def _paired(records: list[dict[str, Any]], key: str, balanced: bool) -> list[dict[str, Any]]:
    rng = np.random.default_rng(20240607)
    correct: dict[tuple, dict[int, dict[str, str]]] = defaultdict(dict)
    labels: dict[str, dict[int, dict[str, str]]] = defaultdict(dict)  # by dataset
    for r in records:
        run = (r["dataset"], r["epsilon"], r["method"])
        correct[run][r["seed"]] = {s: v[key] for s, v in r["sites"].items()}
        if balanced:
            labels[r["dataset"]][r["seed"]] = {s: v["labels"] for s, v in r["sites"].items()}
    rows = []
    for (ds, eps, method), runs in sorted(correct.items(), key=lambda kv: str(kv[0])):
        if method == REFERENCE or (ds, eps, REFERENCE) not in correct:
            continue
        diff, lo, hi = paired_bootstrap(
            correct[(ds, eps, REFERENCE)], runs, rng, labels[ds] if balanced else None
        )
        verdict = (
            "within noise" if lo <= 0 <= hi else ("fedrema better" if lo > 0 else "fedrema worse")
        )
        rows.append(
            {
                "dataset": ds,
                "privacy": level_name(eps),
                "method": REFERENCE,
                "versus": method,
                "accuracy_difference": diff,
                "ci_low": lo,
                "ci_high": hi,
                "verdict": verdict,
            }
        )
    return rows


def _largest(by_kind: dict[str, float]) -> str:
    """The three largest file kinds, in KiB."""
    top = sorted(by_kind.items(), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"{k} {v / 1024:.1f}" for k, v in top)


def traffic(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Bytes a site uploads and downloads per round (mean over sites and rounds), by method,
    from the runs made through secure aggregation."""
    rows = []
    for r in records:
        b = r.get("bytes")
        if not b:
            continue
        rows.append(
            {
                "dataset": r["dataset"],
                "method": r["method"],
                "bytes_up": b["bytes_up"],
                "bytes_down": b["bytes_down"],
                "largest_up_kib": _largest(b.get("up_by_kind", {})),
                "largest_down_kib": _largest(b.get("down_by_kind", {})),
            }
        )
    return rows


def peers(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("merging") and r["method"].startswith("fedrema"):
            groups[(r["dataset"], r["epsilon"], r["method"])].append(r["merging"])
    rows = []
    for (ds, eps, method), fs in groups.items():
        same = [f["peer_same_block_rate"] for f in fs if f.get("peer_same_block_rate") is not None]
        chosen = [f["mean_peers_selected"] for f in fs if f.get("mean_peers_selected") is not None]
        rows.append(
            {
                "dataset": ds,
                "privacy": level_name(eps),
                "method": method,
                "ccp_rounds_mean": float(np.mean([f["ccp_rounds"] for f in fs])),
                "peers_selected_mean": float(np.mean(chosen)) if chosen else None,
                "same_block_rate_mean": float(np.mean(same)) if same else None,
                "same_block_rate_min": float(np.min(same)) if same else None,
            }
        )
    return rows


def flamby_reference() -> dict[str, float]:
    """FLamby's published Fed-Heart-Disease accuracies (mean over clients and 5 seeds),
    computed from the CSVs copied in examples/heart_disease/data/flamby_reference_results."""
    import pandas as pd

    folder = ROOT / "examples" / "heart_disease" / "data" / "flamby_reference_results"
    frames = [pd.read_csv(p) for p in sorted(folder.glob("heart_seed*.csv"))]
    table = pd.concat(frames)
    table = table[table["Test"].astype(str).str.startswith("client_test_")]
    means = table.groupby("Method")["Metric"].mean()
    perso = pd.read_csv(folder / "results_perso_vs_normal.csv")
    perso = perso[perso["dataset"] == "Fed-Heart-Disease"]
    locals_ = {k: v for k, v in means.items() if str(k).startswith("Local")}
    return {
        "FedAvg": float(means["FedAvg100"]),
        "Pooled training": float(means["Pooled Training"]),
        "Best local (client 0 model, on every client)": float(max(locals_.values())),
        "FedAdagrad / FedYogi": float(means["FedYogi100"]),
        "FedAvg (personalisation example)": float(perso[~perso["finetune"]]["perf"].mean()),
        "FedAvg + fine-tuning (personalisation example)": float(
            perso[perso["finetune"]]["perf"].mean()
        ),
    }


# -- outputs --------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    fields = list(rows[0])
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for row in rows:
            w.writerow({k: _fmt_csv(row.get(k)) for k in fields})


def _fmt_csv(v: Any) -> Any:
    return f"{v:.4f}" if isinstance(v, float) else v


def _pm(m: float, s: float) -> str:
    return "n/a" if math.isnan(m) else f"{m:.3f} ± {s:.3f}"


def _cell(metric: str, row: dict[str, Any]) -> str:
    """One table cell: mean ± std over seeds."""
    return _pm(row[f"{metric}_mean"], row[f"{metric}_std"])


COLORS = {
    "majority": "#9e9e9e",
    "local-lr": "#bcbd22",
    "local": "#ff7f0e",
    "fedavg": "#d62728",
    "fedavg-ft": "#9467bd",
    "fedper": "#8c564b",
    "fedrema-paper": "#17becf",
    "fedrema": "#1f77b4",
}
LEVEL_COLORS = ("#333333", "#4c72b0", "#dd8452", "#c44e52")


def plot_by_method(summary: list[dict], datasets: list[str], flamby: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(7 * len(datasets), 4.4), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        methods = list(SETUP[ds]["methods"])
        width = 0.8 / len(PRIVACY)
        for k, eps in enumerate(PRIVACY):
            rows = {r["method"]: r for r in summary if r["dataset"] == ds and r["epsilon"] == eps}
            xs = np.arange(len(methods)) + (k - (len(PRIVACY) - 1) / 2) * width
            ys = [rows[m]["accuracy_mean"] if m in rows else np.nan for m in methods]
            es = [rows[m]["accuracy_std"] if m in rows else 0 for m in methods]
            ax.bar(xs, ys, width, yerr=es, capsize=2, color=LEVEL_COLORS[k], label=level_label(eps))
        if ds == "heart-disease":
            for name, style in (("FedAvg", ":"), ("Pooled training", "--")):
                ax.axhline(flamby[name], color="black", ls=style, lw=1)
                ax.text(
                    -0.45,
                    flamby[name] + 0.005,
                    f"FLamby {name} ({flamby[name]:.3f})",
                    fontsize=7,
                    ha="left",
                    va="bottom",
                )
        ax.set_xticks(np.arange(len(methods)))
        ax.set_xticklabels(methods, rotation=30, ha="right")
        ax.set_ylabel("accuracy, mean over sites (± std over seeds)")
        ax.set_ylim(0, 1)
        ax.set_title(ds)
        ax.legend(fontsize=8, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(out / "accuracy_by_method.png", dpi=110)
    plt.close(fig)


def plot_over_rounds(records: list[dict], datasets: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(datasets),
        len(PRIVACY),
        figsize=(4 * len(PRIVACY), 3.2 * len(datasets) + 0.8),
        squeeze=False,
        sharey="row",
    )
    handles = {}
    for row, ds in enumerate(datasets):
        for col, eps in enumerate(PRIVACY):
            ax = axes[row][col]
            for method in SETUP[ds]["methods"]:
                curves = [
                    [p["mean_accuracy"] for p in r["curve"]]
                    for r in records
                    if r["dataset"] == ds
                    and r["epsilon"] == eps
                    and r["method"] == method
                    and r.get("curve")
                ]
                if not curves:
                    continue
                mean = np.mean(np.array(curves, dtype=float), axis=0)
                (line,) = ax.plot(
                    np.arange(1, len(mean) + 1),
                    mean,
                    "-" if method.startswith("fedrema") else "--",
                    color=COLORS.get(method),
                    lw=2.2 if method == REFERENCE else 1.2,
                    label=method,
                )
                handles[method] = line
            ax.set_title(f"{ds}, {level_label(eps)}", fontsize=9)
            ax.set_xlabel("round")
            if col == 0:
                ax.set_ylabel("accuracy, mean over sites")
    fig.legend(
        list(handles.values()), list(handles), loc="lower center", ncol=len(handles), fontsize=8
    )
    fig.text(
        0.5,
        0.045,
        "Mean over seeds of the deployable model after each round; for methods that fine-tune, "
        "the last point includes the fine-tuning rounds.",
        ha="center",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(out / "accuracy_over_rounds.png", dpi=110)
    plt.close(fig)


def markdown(
    summary: list[dict],
    sites: list[dict],
    pairs: list[dict],
    peer_rows: list[dict],
    traffic_rows: list[dict],
    selection: list[dict],
    flamby: dict,
    meta: dict,
    datasets: list[str],
) -> str:
    lines = [
        f"Measured by `{meta['command']}` on {meta['machine']}, {meta['workers']} workers, "
        f"wall time {meta['wall_seconds']:.0f} s; seeds {meta['seeds']}"
        + (" (QUICK MODE: fewer seeds than the full benchmark)" if meta["quick"] else "")
        + ".",
        "",
    ]
    for ds in datasets:
        methods = SETUP[ds]["methods"]
        lines += [f"### {ds}: mean over sites, mean ± std over seeds", ""]
        lines += ["| method | " + " | ".join(level_label(e) for e in PRIVACY) + " |"]
        lines += ["|---|" + "---|" * len(PRIVACY)]
        for metric, title in METRICS:
            if not any(r["dataset"] == ds and not math.isnan(r[f"{metric}_mean"]) for r in summary):
                continue  # a metric this run did not measure (e.g. an older run's records)
            if metric != "accuracy":
                lines += [f"| *{title}* |" + " |" * len(PRIVACY)]
            for m in methods:
                cells = []
                for eps in PRIVACY:
                    row = next(
                        (
                            r
                            for r in summary
                            if (r["dataset"], r["epsilon"], r["method"]) == (ds, eps, m)
                        ),
                        None,
                    )
                    cells.append(_cell(metric, row) if row else "-")
                name = f"**{m}**" if m == REFERENCE else m
                lines += [f"| {name} | " + " | ".join(cells) + " |"]
        lines += [""]
        lines += [f"#### {ds}: accuracy per site (mean over seeds)", ""]
        site_names = sorted({r["site"] for r in sites if r["dataset"] == ds})
        n_test = {r["site"]: r["n_test"] for r in sites if r["dataset"] == ds}
        for eps in PRIVACY:
            lines += [f"{level_label(eps)}:", ""]
            lines += ["| method | " + " | ".join(f"{s} (n={n_test[s]})" for s in site_names) + " |"]
            lines += ["|---|" + "---|" * len(site_names)]
            for m in methods:
                vals = {
                    r["site"]: r["accuracy_mean"]
                    for r in sites
                    if (r["dataset"], r["privacy"], r["method"]) == (ds, level_name(eps), m)
                }
                if vals:
                    lines += [f"| {m} | " + " | ".join(f"{vals[s]:.3f}" for s in site_names) + " |"]
            lines += [""]
        for _, title, _ in PAIRED:
            if not any(r["dataset"] == ds and r["metric"] == title for r in pairs):
                continue
            lines += [f"#### {ds}: FedReMa minus each method ({title}, 95% paired bootstrap)"]
            lines += ["", "| versus | " + " | ".join(level_label(e) for e in PRIVACY) + " |"]
            lines += ["|---|" + "---|" * len(PRIVACY)]
            for m in methods:
                if m == REFERENCE:
                    continue
                cells = []
                for eps in PRIVACY:
                    p = next(
                        (
                            r
                            for r in pairs
                            if (r["dataset"], r["privacy"], r["versus"], r["metric"])
                            == (ds, level_name(eps), m, title)
                        ),
                        None,
                    )
                    cells.append(
                        f"{p['accuracy_difference']:+.3f} "
                        f"[{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]"
                        + (" ≈" if p["verdict"] == "within noise" else "")
                        if p
                        else "-"
                    )
                lines += [f"| {m} | " + " | ".join(cells) + " |"]
            lines += [""]
        lines += ["≈: the interval contains 0 (within noise).", ""]
        tr = [r for r in traffic_rows if r["dataset"] == ds]
        if tr:
            lines += [
                f"#### {ds}: bytes per site per round (secure aggregation on, ε=3, seed 1)",
                "",
                *(
                    [
                        f"Re-measured on {meta['bytes_remeasured']['date']} with `--bytes`: the "
                        "same runs in the current wire format; their accuracy came out within "
                        f"{meta['bytes_remeasured']['largest_accuracy_change']:.4f} of the "
                        "tables' (the masked sum rounds stochastically).",
                        "",
                    ]
                    if meta.get("bytes_remeasured")
                    else []
                ),
                "| method | KiB up | KiB down | largest uploads (KiB) | largest downloads (KiB) |",
                "|---|---|---|---|---|",
            ]
            order = {m: k for k, m in enumerate(methods)}
            for r in sorted(tr, key=lambda r: order.get(r["method"], 99)):
                lines += [
                    f"| {r['method']} | {r['bytes_up'] / 1024:.1f} | "
                    f"{r['bytes_down'] / 1024:.1f} | {r['largest_up_kib']} | "
                    f"{r['largest_down_kib']} |"
                ]
            lines += [""]
        prs = [r for r in peer_rows if r["dataset"] == ds]
        if prs:
            lines += [f"#### {ds}: FedReMa peer selection during the co-learning period", ""]
            lines += ["| method | privacy | CCP rounds | peers picked per site | same block |"]
            lines += ["|---|---|---|---|---|"]
            for r in sorted(
                prs,
                key=lambda r: (
                    r["method"],
                    PRIVACY.index(None if r["privacy"] == "none" else float(r["privacy"][3:])),
                ),
            ):
                same = (
                    f"{r['same_block_rate_mean']:.2f} (min {r['same_block_rate_min']:.2f})"
                    if r["same_block_rate_mean"] is not None
                    else "-"
                )
                picked = (
                    f"{r['peers_selected_mean']:.2f}"
                    if r["peers_selected_mean"] is not None
                    else "-"
                )
                lines += [
                    f"| {r['method']} | {r['privacy']} | {r['ccp_rounds_mean']:.1f} | "
                    f"{picked} | {same} |"
                ]
            lines += [""]
    lines += hyperparameter_lines(selection, datasets)
    lines += ["", "### FLamby's published Fed-Heart-Disease numbers (mean client accuracy)", ""]
    lines += ["| FLamby | accuracy |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in flamby.items()]
    return "\n".join(lines) + "\n"


def hyperparameter_lines(selection: list[dict], datasets: list[str]) -> list[str]:
    """The table of what the selection chose, per dataset, method and privacy level."""
    lines: list[str] = []
    lines += ["### Hyperparameters chosen on validation splits", ""]
    lines += [
        "| dataset | method | " + " | ".join(map(level_label, PRIVACY)) + " |",
        "|---|---|" + "---|" * len(PRIVACY),
    ]
    for ds in datasets:
        for m in SETUP[ds]["methods"]:
            cells = []
            for group in map(level_name, PRIVACY):
                row = next(
                    (
                        r
                        for r in selection
                        if (r["dataset"], r["group"], r["method"]) == (ds, group, m) and r["chosen"]
                    ),
                    None,
                )
                cells.append(
                    ", ".join(f"{k} {row[k]}" for k in _CONFIG_KEYS if row[k] != "")
                    + f" (val {row['val_accuracy']:.3f})"
                    if row
                    else "defaults (nothing to tune)"
                )
            lines += [f"| {ds} | {m} | " + " | ".join(cells) + " |"]
    return lines


# -- ablation: each FedReMa rule, measured on validation splits -----------------------------

PAPER_RULES = {
    "similarity": "softmax",
    "probe_samples": 1,
    "smoothing": 0.0,
    "min_similarity": None,
    "self_weight": None,
    "min_ccp_rounds": 0,
}
ABLATION_VARIANTS: dict[str, dict[str, Any]] = {
    # The paper's rules, then one rule added at a time (cumulative) ...
    "paper": {**PAPER_RULES},
    "+ centered similarity, 64 shared probes": {
        **PAPER_RULES, "similarity": "centered", "probe_samples": 64,
    },
    "+ min_similarity 0": {
        **PAPER_RULES, "similarity": "centered", "probe_samples": 64, "min_similarity": 0.0,
    },
    "+ self_weight 0.5": {
        **PAPER_RULES, "similarity": "centered", "probe_samples": 64, "min_similarity": 0.0,
        "self_weight": 0.5,
    },
    "+ smoothing 0.5": {
        **PAPER_RULES, "similarity": "centered", "probe_samples": 64, "min_similarity": 0.0,
        "self_weight": 0.5, "smoothing": 0.5,
    },
    "+ min_ccp_rounds 5 (= default)": {},
    # ... then the default with one rule taken back out, and the two tuned extras.
    "default, 1 probe sample": {"probe_samples": 1},
    "default, softmax similarity (T 1/1, 64 samples)": {
        "similarity": "softmax", "t_self": 1.0, "t_peer": 1.0,
    },
    "default, no min_similarity": {"min_similarity": None},
    "default, no smoothing": {"smoothing": 0.0},
    "default, no min_ccp_rounds": {"min_ccp_rounds": 0},
    "default + global_weight 0.25": {"global_weight": 0.25},
    "default + 5 fine-tuning rounds": {"finetune_rounds": 5},
}  # fmt: skip
ABLATION_SETTINGS: tuple[tuple[str, float | None, dict[str, Any], int], ...] = (
    ("heart-disease", None, {"lr": 0.05, "local_epochs": 1}, 8),
    ("heart-disease", 1.0, {"lr": 0.05, "local_epochs": 1}, 8),
    ("label-skew", None, {"lr": 0.05, "local_epochs": 3}, 3),
    ("label-skew", 3.0, {"lr": 0.05, "local_epochs": 1}, 3),
)


def ablation_jobs(datasets: list[str]) -> list[dict[str, Any]]:
    jobs = []
    for ds, eps, training, n_splits in ABLATION_SETTINGS:
        if ds not in datasets:
            continue
        for name, rules in ABLATION_VARIANTS.items():
            rules = dict(rules)
            cfg: dict[str, Any] = {**training, "finetune_rounds": rules.pop("finetune_rounds", 0)}
            cfg["options"] = {"global_weight": rules.pop("global_weight", 0.0), **rules}
            for k in range(n_splits):
                jobs.append(
                    {
                        "phase": "select",
                        "dataset": ds,
                        "method": "fedrema",
                        "group": name,
                        "epsilon": eps,
                        "seed": 1001 + k,
                        "config": cfg,
                    }
                )
    return jobs


def ablation_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["dataset"], r["epsilon"], r["group"])].append(r)
    rows = []
    for ds, eps, _, _ in ABLATION_SETTINGS:
        for name in ABLATION_VARIANTS:
            rs = groups.get((ds, eps, name))
            if not rs:
                continue
            acc = [r["mean_accuracy"] for r in rs]
            f = [r.get("merging") or {} for r in rs]
            same = [x["peer_same_block_rate"] for x in f if x.get("peer_same_block_rate")]
            picked = [x["mean_peers_selected"] for x in f if x.get("mean_peers_selected")]
            rows.append(
                {
                    "dataset": ds,
                    "privacy": level_name(eps),
                    "variant": name,
                    "val_accuracy_mean": float(np.mean(acc)),
                    "val_accuracy_std": float(np.std(acc, ddof=1)) if len(acc) > 1 else 0.0,
                    "worst_split": float(np.min(acc)),
                    "splits": len(acc),
                    "ccp_rounds_mean": float(np.mean([x.get("ccp_rounds", 0) for x in f])),
                    "peers_selected_mean": float(np.mean(picked)) if picked else None,
                    "same_block_rate_mean": float(np.mean(same)) if same else None,
                }
            )
    return rows


def run_ablation(args: argparse.Namespace, datasets: list[str]) -> int:
    started = time.perf_counter()
    jobs = ablation_jobs(datasets)
    print(f"ablation on validation splits: {len(jobs)} federations", flush=True)
    records = run_all(jobs, args.workers, "ablation")
    rows = ablation_table(records)
    wall = time.perf_counter() - started
    write_csv(args.out / "ablation.csv", rows)
    lines = [
        f"Measured by `python benchmarks/accuracy.py --ablation` ({args.workers} workers, "
        f"wall time {wall:.0f} s), on validation splits (75/25 of each site's training "
        "file; test files never read). Mean ± std over splits; worst split.",
        "",
        "| dataset | privacy | variant | val accuracy | worst | CCP rounds | peers | same block |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        same = "-" if r["same_block_rate_mean"] is None else f"{r['same_block_rate_mean']:.2f}"
        picked = "-" if r["peers_selected_mean"] is None else f"{r['peers_selected_mean']:.2f}"
        lines.append(
            f"| {r['dataset']} | {r['privacy']} | {r['variant']} | "
            f"{_pm(r['val_accuracy_mean'], r['val_accuracy_std'])} | {r['worst_split']:.3f} | "
            f"{r['ccp_rounds_mean']:.1f} | {picked} | {same} |"
        )
    text = "\n".join(lines) + "\n"
    (args.out / "ablation.md").write_text(text, encoding="utf-8")
    with (args.out / "ablation_runs.jsonl").open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, sort_keys=True) + "\n")
    print(text)
    print(f"wall time {wall:.0f} s; results in {args.out}")
    return 0


# -- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 test seeds, 1 validation split")
    parser.add_argument("--seeds", type=int, default=None, help="test seeds (default 3; quick 2)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "accuracy")
    parser.add_argument("--datasets", default=",".join(SETUP), help="comma-separated")
    parser.add_argument(
        "--select",
        action="store_true",
        help=f"run the selection on validation splits first (and save it to {CHOSEN.name}); "
        "without it, the configurations an earlier selection saved there are reused",
    )
    parser.add_argument("--chosen", type=Path, default=CHOSEN, help="where selections are kept")
    parser.add_argument(
        "--replot",
        action="store_true",
        help="no federations: redo the tables and plots from OUT/runs.jsonl of an earlier run",
    )
    parser.add_argument(
        "--bytes",
        action="store_true",
        help="after a wire-format change that moves no number: re-run only the runs made "
        "through secure aggregation (eps 3, seed 1) of OUT/runs.jsonl, replace their bytes "
        "(their accuracy must stay within BYTES_TOLERANCE of the record), and redo the tables",
    )
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="instead: FedReMa's rules one by one, on validation splits (docs/fedrema.md)",
    )
    args = parser.parse_args(argv)

    datasets = [d for d in args.datasets.split(",") if d]
    unknown = [d for d in datasets if d not in SETUP]
    if unknown:
        parser.error(f"unknown dataset(s) {unknown}; choose from {sorted(SETUP)}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.ablation:
        return run_ablation(args, datasets)
    n_seeds = args.seeds or (2 if args.quick else 3)
    if args.quick:
        for ds in datasets:
            SETUP[ds]["val_splits"] = {"none": 1, "dp": 1}
        print(
            f"QUICK MODE: {n_seeds} test seeds and 1 validation split per configuration; "
            "the full benchmark uses 3 seeds.",
            flush=True,
        )
    seeds = list(range(1, n_seeds + 1))
    methods_of = {ds: SETUP[ds]["methods"] for ds in datasets}
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    if args.replot or args.bytes:  # the analysis of an earlier run, its timing kept
        old = [json.loads(line) for line in (args.out / "runs.jsonl").open(encoding="utf-8")]
        sel = [r for r in old if r["phase"] == "select"]
        records = [r for r in old if r["phase"] == "test"]
        if args.bytes:
            records, moved = remeasure_bytes(records, args.workers)
        jobs = [r for r in records if not r.get("reused_from")]
        # a run that reused an earlier selection kept its table in --chosen
        selection_table = choose(sel)[1] if sel else load_chosen(args.chosen, datasets)[1]
        before = json.loads((args.out / "results.json").read_text(encoding="utf-8"))["meta"]
        wall, t_sel = before["wall_seconds"], before["selection_seconds"]
        bytes_note = (
            {"date": time.strftime("%Y-%m-%d"), "largest_accuracy_change": moved}
            if args.bytes
            else before.get("bytes_remeasured")
        )
        seeds = before["seeds"]
        args.quick = before["quick"]
    elif args.select:
        sel_jobs = selection_jobs(datasets, methods_of)
        print(f"selection on validation splits: {len(sel_jobs)} federations", flush=True)
        sel = run_all(sel_jobs, args.workers, "selection")
        chosen, selection_table = choose(sel)
        save_chosen(args.chosen, chosen, selection_table)
        t_sel = time.perf_counter() - started
    else:
        chosen, selection_table = load_chosen(args.chosen, datasets)
        sel, t_sel = [], 0.0
        print(f"configurations chosen by an earlier selection: {args.chosen}", flush=True)
    if not (args.replot or args.bytes):
        bytes_note = None
        jobs = test_jobs(datasets, methods_of, chosen, seeds)
        print(f"test: {len(jobs)} federations", flush=True)
        records = reuse_majority(run_all(jobs, args.workers, "test"))
        wall = time.perf_counter() - started

    summary = summarize(records)
    sites = per_site(records)
    pairs = paired(records)
    peer_rows = peers(records)
    flamby = flamby_reference()
    if args.replot or args.bytes:  # the analysis of an earlier run: its command and workers
        command, workers = before["command"], before["workers"]
    else:
        given = argv if argv is not None else sys.argv[1:]
        command = (
            "python benchmarks/accuracy.py " + " ".join(given) if given else "make bench-accuracy"
        )
        workers = args.workers
    meta = {
        "command": command.strip(),
        "quick": args.quick,
        "seeds": seeds,
        "workers": workers,
        "wall_seconds": wall,
        "selection_seconds": t_sel,
        "selection": "run" if sel else f"reused from {args.chosen.name}",
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
        ),
        "federations": len(sel) + len(jobs),
        "bytes_remeasured": bytes_note,
        "privacy_levels": [level_name(e) for e in PRIVACY],
        "delta": DELTA,
        "setup": {ds: {k: v for k, v in SETUP[ds].items()} for ds in datasets},
    }
    with (args.out / "runs.jsonl").open("w", encoding="utf-8") as fh:
        for r in [*sel, *records]:
            fh.write(json.dumps(r, sort_keys=True) + "\n")
    write_csv(args.out / "summary.csv", summary)
    write_csv(args.out / "per_site.csv", sites)
    write_csv(args.out / "paired.csv", pairs)
    write_csv(args.out / "peers.csv", peer_rows)
    write_csv(args.out / "traffic.csv", traffic(records))
    write_csv(args.out / "selection.csv", selection_table)
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "summary": summary,
                "paired": pairs,
                "peers": peer_rows,
                "selection": selection_table,
                "flamby": flamby,
            },
            indent=1,
            default=str,
        )
        + "\n",
        encoding="utf-8",
    )
    plot_by_method(summary, datasets, flamby, args.out)
    plot_over_rounds(records, datasets, args.out)
    traffic_rows = traffic(records)
    text = markdown(
        summary, sites, pairs, peer_rows, traffic_rows, selection_table, flamby, meta, datasets
    )
    (args.out / "summary.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"wall time {wall:.0f} s ({t_sel:.0f} s selection); results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
