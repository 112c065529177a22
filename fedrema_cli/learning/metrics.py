"""What a clinician reads about a model at one site: metrics at an operating point, with 95%
intervals, and warnings instead of a silent majority-class model.

Pure numpy/scipy over class probabilities and labels; no torch, no files. Three steps, kept
apart on purpose so that the test set can never choose its own threshold:

1. ``select_threshold(validation scores, validation labels)`` returns a threshold, chosen to
   maximise balanced accuracy or to reach a target sensitivity with the highest specificity;
2. ``clinical_report(test scores, test labels, threshold=...)`` evaluates at that threshold;
3. ``model_warnings`` / ``minority_warning`` flag a degenerate model or a site whose data
   cannot teach the minority class.

``operating_point`` chains 1 and 2 and takes the two splits as separate arguments.

With more than two classes there is no threshold: ``prior_shift(training posteriors, training
labels)`` returns the site's operating point, the posterior moved to its own class prior
(`PriorShift`), and 2 evaluates the shifted posteriors at the argmax.

Binary tasks only for thresholds: the score is the probability of class index 1 (the
*positive* class: disease present), and a record is predicted positive when its score is
``>= threshold``. ``threshold=None`` means the argmax of the probabilities (what `evaluate`
has always reported), for any number of classes. With more than two classes accuracy,
balanced accuracy, AUC and calibration are reported; sensitivity, specificity, PPV and NPV are
binary-only and come back ``None``.

Intervals (95% by default):

- proportions (sensitivity, specificity, PPV, NPV, accuracy): Wilson score interval
  (``scipy.stats.binomtest(...).proportion_ci(method="wilson")``), which stays inside [0, 1]
  and behaves at 0/n and n/n, where small clinical test sets live;
- balanced accuracy, AUC, Brier score and ECE: percentile bootstrap, **stratified by class**
  (each class resampled with replacement to its own count, ``N_BOOTSTRAP`` = 2000 replicates,
  seeded by ``seed``): every replicate keeps the test set's class mix, so AUC is defined in
  every replicate, and the interval is conditional on the class counts like the Wilson
  intervals of sensitivity and specificity are. Chosen over DeLong because it also covers
  balanced accuracy and the calibration numbers with one method, and does not collapse to
  zero width or leave [0, 1] on the tiny, well-separated test sets sites have.

An estimate whose denominator is empty (specificity without a negative record, AUC with one
class) is ``None`` with a ``None`` interval, never NaN.

>>> choice = select_threshold(np.array([0.1, 0.2, 0.35, 0.6]), np.array([0, 0, 1, 1]))
>>> round(choice.threshold, 3), choice.balanced_accuracy
(0.275, 1.0)
>>> proportion(9, 10).method
'wilson'
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

CONFIDENCE = 0.95
N_BOOTSTRAP = 2000
POSITIVE = 1
ECE_BINS = 10
"""Equal-width bins of the predicted probability over [0, 1] (the last one closed); ECE is the
record-weighted mean over non-empty bins of |observed rate - mean predicted probability|. For
more than two classes: the top-label confidence against whether the top label is right."""

MIN_MINORITY_RECORDS = 10
"""A class with fewer training records than this at a site gets a warning at `init`.

A heuristic, not a sample-size calculation: below 10 records a 25% validation split holds at
most 2 of them, so neither training nor threshold selection sees the class, and a Wilson 95%
interval on the sensitivity measured on 2-3 test cases spans more than half of [0, 1].
Clinical prediction-model guidance asks for far more (Riley et al., BMJ 2020;368:m441); 10 is
the least at which asking the site to look is not a false alarm on the bundled datasets."""

DEFAULT_THRESHOLD = 0.5
_BOOTSTRAP_CELLS = 4_000_000  # probabilities held at once while bootstrapping (32 MB)


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its interval; every field ``None`` when it is undefined."""

    value: float | None
    low: float | None
    high: float | None
    method: str

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "low": self.low, "high": self.high, "method": self.method}


UNDEFINED = "undefined"


def _undefined() -> Estimate:
    return Estimate(None, None, None, UNDEFINED)


def proportion(successes: int, total: int, *, confidence: float = CONFIDENCE) -> Estimate:
    """``successes / total`` with its Wilson score interval (``None`` when ``total`` is 0)."""
    from scipy.stats import binomtest

    if total <= 0:
        return _undefined()
    ci = binomtest(int(successes), int(total)).proportion_ci(
        confidence_level=confidence, method="wilson"
    )
    return Estimate(successes / total, float(ci.low), float(ci.high), "wilson")


# ---------------------------------------------------------------------------------------------
# Point metrics (what `evaluate` reports)


@dataclass(frozen=True)
class Metrics:
    """Test metrics of a model on one site's hold-out data."""

    n: int
    accuracy: float
    balanced_accuracy: float
    auc: float | None
    loss: float

    def to_json(self) -> dict:
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "auc": self.auc,
            "loss": self.loss,
        }


def _proba(proba: np.ndarray) -> np.ndarray:
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"expected class probabilities of shape [n, classes>=2], got {p.shape}")
    return p


def positive_scores(proba: np.ndarray) -> np.ndarray:
    """The score thresholds apply to: P(class 1) of a binary model (1-D scores pass through)."""
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim == 1:
        return p
    if p.ndim == 2 and p.shape[1] == 2:
        return p[:, POSITIVE]
    raise ValueError(
        f"a decision threshold needs a binary model; got probabilities of shape {p.shape} "
        "(with more than two classes the prediction is the most probable class)"
    )


def predictions(proba: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Predicted class index per record: argmax, or ``score >= threshold`` for binary models."""
    if threshold is None:
        return _proba(proba).argmax(axis=1)
    return (positive_scores(proba) >= threshold).astype(np.int64)


def _recall_mean(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Balanced accuracy of each row of ``pred`` [B, n] against the labels ``y`` [n]."""
    return np.mean([(pred[:, y == c] == c).mean(axis=1) for c in np.unique(y)], axis=0)


def balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean recall over the classes ``y`` holds (scikit-learn's definition, without its warning
    when a class is predicted that ``y`` lacks); NaN for an empty set."""
    y = np.asarray(y)
    if not len(y):
        return float("nan")
    return float(_recall_mean(np.asarray(pred)[None, :], y)[0])


def _rank_auc(score: np.ndarray, is_pos: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of ``score`` [B, n] as the Mann-Whitney statistic (ties count one
    half); needs both groups in ``is_pos`` [n]."""
    from scipy.stats import rankdata

    ranks = rankdata(score, axis=1)
    n_pos = int(is_pos.sum())
    n_neg = score.shape[1] - n_pos
    return (ranks[:, is_pos].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _auc_rows(p: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """AUC of each replicate ``p`` [B, n, K] (see `auc`); None when ``y`` holds one class."""
    present = np.unique(y)
    if len(present) < 2:
        return None
    if p.shape[2] == 2:
        return _rank_auc(p[:, :, POSITIVE], y == POSITIVE)
    return np.mean([_rank_auc(p[:, :, c], y == c) for c in present], axis=0)


def auc(proba: np.ndarray, y: np.ndarray) -> float | None:
    """ROC AUC; ``None`` when ``y`` holds one class. With more than two classes: one-vs-rest,
    macro over the classes ``y`` holds (small skewed test sets miss some classes; with all
    present this equals scikit-learn's "ovr" macro AUC)."""
    rows = _auc_rows(_proba(proba)[None], np.asarray(y))
    return None if rows is None else float(rows[0])


def basic_metrics(proba: np.ndarray, y: np.ndarray, *, threshold: float | None = None) -> Metrics:
    """Accuracy, balanced accuracy, ROC AUC and log loss of predicted probabilities."""
    p = _proba(proba)
    y = np.asarray(y, dtype=np.int64)
    pred = predictions(p, threshold)
    n = len(y)
    loss = float(-np.mean(np.log(p[np.arange(n), y] + 1e-12))) if n else float("nan")
    return Metrics(
        n=n,
        accuracy=float((pred == y).mean()) if n else float("nan"),
        balanced_accuracy=balanced_accuracy(pred, y),
        auc=auc(p, y),
        loss=loss,
    )


# ---------------------------------------------------------------------------------------------
# Choosing the operating point (validation data only)

VALIDATION_FRACTION = 0.25


def validation_split(
    labels: np.ndarray, *, seed: int, fraction: float = VALIDATION_FRACTION
) -> np.ndarray:
    """Sorted indices of a stratified, seeded validation split of a site's *training* labels.

    Each class contributes ``round(fraction * n_c)`` of its records, at least one when it has
    two or more (so a rare class is not left out of the split that picks the threshold) and
    none when it has one. The test file never enters: its labels are not an argument.
    """
    y = np.asarray(labels).astype(np.int64)
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        take = 0 if len(members) < 2 else max(1, round(fraction * len(members)))
        picked.append(rng.permutation(members)[:take])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class ThresholdChoice:
    """The threshold chosen on a validation split, and what it scored there.

    ``criterion``: ``"balanced-accuracy"``, ``"target-sensitivity"``, ``"prior-matched"``
    (the validation split lacks a class, so nothing can be chosen on it: the threshold is the
    model's mean P(class 1) over the site's training records; ``note`` says why) or
    ``"default"`` (0.5: the same, with no training scores given).
    ``reached``: False only when a target sensitivity was asked for and the validation split
    could not show it (no positive or no negative record); with both classes present the
    lowest candidate predicts every record positive, so some candidate always reaches it.
    """

    threshold: float
    criterion: str
    target_sensitivity: float | None
    n: int
    positives: int
    sensitivity: float | None
    specificity: float | None
    balanced_accuracy: float | None
    reached: bool
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "criterion": self.criterion,
            "target_sensitivity": self.target_sensitivity,
            "validation_n": self.n,
            "validation_positives": self.positives,
            "validation_sensitivity": self.sensitivity,
            "validation_specificity": self.specificity,
            "validation_balanced_accuracy": self.balanced_accuracy,
            "reached": self.reached,
            "note": self.note,
        }


def select_threshold(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    target_sensitivity: float | None = None,
    training_scores: np.ndarray | None = None,
) -> ThresholdChoice:
    """Choose a decision threshold on **validation** scores and labels (binary models).

    ``scores``: P(class 1) per record, or the [n, 2] probabilities. Candidates are the
    midpoints between consecutive distinct scores (plus one below the lowest and one above the
    highest), so the threshold sits in a gap of the validation scores rather than on one.

    - no target: the candidate with the highest balanced accuracy (ties: the one closest to
      0.5, the untuned model's own threshold);
    - ``target_sensitivity``: among candidates whose validation sensitivity reaches it, the
      one with the highest specificity (ties: the highest threshold).

    A validation split holding only one class cannot rank anything (a small site where one
    class is rare: Switzerland in the heart-disease data has 2 negative training records).
    Then the threshold is *prior-matched*: the mean of ``training_scores`` (the model's
    P(class 1) on the site's training records). The mean posterior is the model's own
    estimate of the class prior (Saerens, Latinne and Decaestecker, Neural Computation 14(1),
    2002), and a calibrated model's balanced accuracy is highest when the posterior is
    thresholded at the prior: P(1|x) >= pi_1 is P(x|1) >= P(x|0). It needs no label, so it
    stays defined where the labels cannot choose, and follows a head that learned a 95%
    positive site, where 0.5 predicts every record positive. Without ``training_scores`` the
    threshold is 0.5 (``"default"``). Either way ``note`` says why.
    """
    s = positive_scores(scores)
    y = np.asarray(labels).astype(np.int64)
    if s.shape != y.shape:
        raise ValueError(f"{len(s)} scores for {len(y)} labels")
    if target_sensitivity is not None and not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target_sensitivity}")
    pos, neg = int((y == POSITIVE).sum()), int((y != POSITIVE).sum())
    if pos == 0 or neg == 0:
        missing = "positive" if pos == 0 else "negative"
        prior = None if training_scores is None else positive_scores(training_scores)
        matched = prior is not None and len(prior) > 0
        return ThresholdChoice(
            threshold=float(prior.mean()) if matched else DEFAULT_THRESHOLD,
            criterion="prior-matched" if matched else "default",
            target_sensitivity=target_sensitivity,
            n=len(y),
            positives=pos,
            sensitivity=None,
            specificity=None,
            balanced_accuracy=None,
            reached=target_sensitivity is None,
            note=(
                f"the validation split has no {missing} record; the threshold is "
                + (
                    "the model's mean P(class 1) on the training records (its class prior)"
                    if matched
                    else "0.5"
                )
            ),
        )
    distinct = np.unique(s)
    candidates = np.concatenate(
        ([distinct[0] - 1e-6], (distinct[:-1] + distinct[1:]) / 2, [distinct[-1] + 1e-6])
    )
    predicted_pos = s[None, :] >= candidates[:, None]  # [candidates, records]
    sens = (predicted_pos & (y == POSITIVE)).sum(axis=1) / pos
    spec = (~predicted_pos & (y != POSITIVE)).sum(axis=1) / neg
    bal = (sens + spec) / 2
    if target_sensitivity is None:
        best = np.flatnonzero(np.isclose(bal, bal.max(), rtol=0, atol=1e-12))
        k = int(best[np.argmin(np.abs(candidates[best] - DEFAULT_THRESHOLD))])
        criterion = "balanced-accuracy"
    else:
        ok = np.flatnonzero(sens >= target_sensitivity - 1e-12)
        top = ok[np.isclose(spec[ok], spec[ok].max(), rtol=0, atol=1e-12)]
        k = int(top[np.argmax(candidates[top])])
        criterion = "target-sensitivity"
    return ThresholdChoice(
        threshold=float(candidates[k]),
        criterion=criterion,
        target_sensitivity=target_sensitivity,
        n=len(y),
        positives=pos,
        sensitivity=float(sens[k]),
        specificity=float(spec[k]),
        balanced_accuracy=float(bal[k]),
        reached=True,
    )


@dataclass(frozen=True)
class PriorShift:
    """The operating point of a model with more than two classes: its posterior moved to the
    site's own class prior.

    A federated or DP-trained model's outputs carry the class prior it learned, which is not
    the site's: a model averaged over sites learns the federation's mix, and DP noise flattens
    what a small site's model learns of its own. Bayes' rule moves a posterior to another
    prior without retraining: P_site(c|x) is proportional to P(c|x) * pi_site(c) / pi_model(c)
    (Saerens, Latinne and Decaestecker, Neural Computation 14(1), 2002), the multi-class
    counterpart of the binary threshold. ``pi_site`` is the class frequency of the site's
    training labels (add-one smoothed, so no class is ruled out), ``pi_model`` the model's mean
    posterior on the same records. Like the threshold it is fit in-sample, on the training
    file, never on test data; it is the site's decision rule and stays at the site (the
    export's model card records it beside the class balance).
    """

    weights: tuple[float, ...]
    site_prior: tuple[float, ...]
    model_prior: tuple[float, ...]

    def apply(self, proba: np.ndarray) -> np.ndarray:
        """``proba`` moved to the site's prior."""
        return reweighted(proba, self.weights)

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold": None,
            "criterion": "prior-shift",
            "class_weights": list(self.weights),
            "site_prior": list(self.site_prior),
            "model_prior": list(self.model_prior),
            "note": (
                "the most probable class after P(c|x) is moved to this site's class prior: "
                "P(c|x) * class_weights[c], class_weights = site_prior / model_prior"
            ),
        }


def reweighted(proba: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Each row of ``proba`` times the class ``weights``, renormalized (a `PriorShift`)."""
    p = _proba(proba) * np.asarray(weights, dtype=np.float64)[None, :]
    return p / p.sum(axis=1, keepdims=True)


def decide(proba: np.ndarray, rule: Mapping[str, Any]) -> np.ndarray:
    """Predicted class per record under a recorded decision rule: the ``threshold`` object
    `personalize` reports and the model card keeps (a binary threshold, a `PriorShift`'s
    class weights, or neither: the argmax)."""
    if rule.get("criterion") == "prior-shift":
        return predictions(reweighted(proba, rule["class_weights"]))
    return predictions(proba, rule.get("threshold"))


def prior_shift(training_proba: np.ndarray, training_labels: np.ndarray) -> PriorShift:
    """The `PriorShift` of a model from its posteriors on the site's training records and
    their labels (the training file only: the test file is not an argument)."""
    p = _proba(training_proba)
    y = np.asarray(training_labels).astype(np.int64)
    if len(y) != len(p) or len(y) == 0:
        raise ValueError(f"{len(p)} posteriors for {len(y)} training labels")
    k = p.shape[1]
    site = (np.bincount(y, minlength=k)[:k] + 1.0) / (len(y) + k)
    model = np.clip(p.mean(axis=0), 1e-12, None)
    model = model / model.sum()
    weights = site / model
    return PriorShift(
        weights=tuple(float(w) for w in weights / weights.max()),
        site_prior=tuple(float(v) for v in site),
        model_prior=tuple(float(v) for v in model),
    )


# ---------------------------------------------------------------------------------------------
# Metrics at the operating point, with intervals


@dataclass(frozen=True)
class ModelWarning:
    """A reason not to trust a model (or a site's data), with its likely cause and a remedy."""

    code: str
    message: str
    cause: str
    advice: str

    def to_json(self) -> dict[str, str]:
        return {
            "code": self.code,
            "message": self.message,
            "cause": self.cause,
            "advice": self.advice,
        }

    def __str__(self) -> str:
        return f"{self.message} Likely cause: {self.cause}. Try: {self.advice}."


@dataclass(frozen=True)
class ClinicalReport:
    """Metrics of one model on one site's test data at one threshold (None: argmax)."""

    n: int
    class_counts: tuple[int, ...]
    threshold: float | None
    sensitivity: Estimate
    specificity: Estimate
    ppv: Estimate
    npv: Estimate
    accuracy: Estimate
    balanced_accuracy: Estimate
    auc: Estimate
    brier: Estimate
    ece: Estimate
    ece_bins: int = ECE_BINS
    confidence: float = CONFIDENCE
    warnings: tuple[ModelWarning, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "class_counts": list(self.class_counts),
            "threshold": self.threshold,
            "confidence": self.confidence,
            **{
                name: getattr(self, name).to_json()
                for name in (
                    "sensitivity",
                    "specificity",
                    "ppv",
                    "npv",
                    "accuracy",
                    "balanced_accuracy",
                    "auc",
                )
            },
            "calibration": {
                "brier": self.brier.to_json(),
                "ece": self.ece.to_json(),
                "ece_bins": self.ece_bins,
            },
            "warnings": [w.to_json() for w in self.warnings],
        }


def _brier_rows(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Brier score of each replicate ``p`` [B, n, K]. Binary: mean (P(1) - y)^2. More
    classes: mean squared distance of the probability vector to the one-hot label."""
    if p.shape[2] == 2:
        return np.mean((p[:, :, POSITIVE] - (y == POSITIVE)) ** 2, axis=1)
    onehot = np.eye(p.shape[2])[y]
    return np.mean(((p - onehot[None]) ** 2).sum(axis=2), axis=1)


def _ece_rows(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Expected calibration error of each replicate ``p`` [B, n, K] (see ``ECE_BINS``)."""
    if p.shape[2] == 2:
        conf = p[:, :, POSITIVE]
        hit = np.broadcast_to(y == POSITIVE, conf.shape).astype(np.float64)
    else:
        conf, hit = p.max(axis=2), (p.argmax(axis=2) == y).astype(np.float64)
    which = np.minimum((conf * bins).astype(np.int64), bins - 1)
    total = np.zeros(len(p))
    for b in range(bins):
        inside = which == b
        # |sum(hit - conf)| over a bin = its count times |observed rate - mean confidence|
        total += np.abs(np.where(inside, hit - conf, 0.0).sum(axis=1))
    return total / p.shape[1]


def _statistics(p: np.ndarray, y: np.ndarray, threshold: float | None) -> dict[str, np.ndarray]:
    """Balanced accuracy, AUC, Brier and ECE of every replicate ``p`` [B, n, K] against ``y``."""
    if threshold is None:
        pred = p.argmax(axis=2)
    else:
        pred = (p[:, :, POSITIVE] >= threshold).astype(np.int64)
    out = {
        "balanced_accuracy": _recall_mean(pred, y),
        "brier": _brier_rows(p, y),
        "ece": _ece_rows(p, y),
    }
    rows = _auc_rows(p, y)
    if rows is not None:
        out["auc"] = rows
    return out


def _stratified_bootstrap(
    p: np.ndarray,
    y: np.ndarray,
    threshold: float | None,
    *,
    n_bootstrap: int,
    seed: int,
    confidence: float,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of `_statistics`, each class resampled to its own count.

    Records are laid out class by class, so every replicate has the same label vector and
    only the predictions are resampled (all replicates computed at once).
    """
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)]
    idx = np.concatenate([g[rng.integers(0, len(g), (n_bootstrap, len(g)))] for g in groups], 1)
    labels = np.concatenate([y[g] for g in groups])
    chunk = max(1, _BOOTSTRAP_CELLS // p.size)  # bounded memory for large test sets
    parts = [
        _statistics(p[idx[i : i + chunk]], labels, threshold) for i in range(0, n_bootstrap, chunk)
    ]
    tail = (1 - confidence) / 2 * 100
    out = {}
    for name in parts[0]:
        v = np.concatenate([part[name] for part in parts])
        out[name] = (float(np.percentile(v, tail)), float(np.percentile(v, 100 - tail)))
    return out


def _with(value: float | None, interval: tuple[float, float] | None) -> Estimate:
    if value is None or interval is None or not math.isfinite(value):
        return _undefined()
    return Estimate(value, interval[0], interval[1], "stratified bootstrap")


def clinical_report(
    proba: np.ndarray,
    labels: np.ndarray,
    *,
    threshold: float | None = None,
    confidence: float = CONFIDENCE,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
    private: bool = True,
) -> ClinicalReport:
    """Every metric of ``proba`` against ``labels`` at ``threshold``, with intervals and the
    degeneracy warnings (`model_warnings`).

    The threshold must come from elsewhere (`select_threshold` on a validation split): this
    function never chooses one. ``seed`` seeds the bootstrap, so a report is reproducible.
    """
    p = _proba(proba)
    y = np.asarray(labels).astype(np.int64)
    if len(y) != len(p):
        raise ValueError(f"{len(p)} predictions for {len(y)} labels")
    counts = tuple(int(c) for c in np.bincount(y, minlength=p.shape[1]))
    if len(y) == 0:
        none = _undefined()
        return ClinicalReport(
            n=0,
            class_counts=counts,
            threshold=threshold,
            sensitivity=none,
            specificity=none,
            ppv=none,
            npv=none,
            accuracy=none,
            balanced_accuracy=none,
            auc=none,
            brier=none,
            ece=none,
            confidence=confidence,
        )
    pred = predictions(p, threshold)
    binary = p.shape[1] == 2
    if binary:
        tp = int(((pred == POSITIVE) & (y == POSITIVE)).sum())
        tn = int(((pred != POSITIVE) & (y != POSITIVE)).sum())
        fp = int(((pred == POSITIVE) & (y != POSITIVE)).sum())
        fn = int(((pred != POSITIVE) & (y == POSITIVE)).sum())
        sens = proportion(tp, tp + fn, confidence=confidence)
        spec = proportion(tn, tn + fp, confidence=confidence)
        ppv = proportion(tp, tp + fp, confidence=confidence)
        npv = proportion(tn, tn + fn, confidence=confidence)
    else:
        sens = spec = ppv = npv = Estimate(None, None, None, "binary only")
    intervals = _stratified_bootstrap(
        p, y, threshold, n_bootstrap=n_bootstrap, seed=seed, confidence=confidence
    )
    point = {k: float(v[0]) for k, v in _statistics(p[None], y, threshold).items()}
    auc_est = _with(point.get("auc"), intervals.get("auc"))
    report = ClinicalReport(
        n=len(y),
        class_counts=counts,
        threshold=threshold,
        sensitivity=sens,
        specificity=spec,
        ppv=ppv,
        npv=npv,
        accuracy=proportion(int((pred == y).sum()), len(y), confidence=confidence),
        balanced_accuracy=_with(point["balanced_accuracy"], intervals["balanced_accuracy"]),
        auc=auc_est,
        brier=_with(point["brier"], intervals["brier"]),
        ece=_with(point["ece"], intervals["ece"]),
        confidence=confidence,
    )
    warnings = model_warnings(p, y, threshold=threshold, auc_estimate=auc_est, private=private)
    return replace(report, warnings=tuple(warnings))


@dataclass(frozen=True)
class OperatingPoint:
    """The threshold chosen on validation data and the test report at that threshold."""

    choice: ThresholdChoice
    report: ClinicalReport

    def to_json(self) -> dict[str, Any]:
        return {"threshold": self.choice.to_json(), "test": self.report.to_json()}


def operating_point(
    validation: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    target_sensitivity: float | None = None,
    seed: int = 0,
) -> OperatingPoint:
    """Choose the threshold on ``validation`` = (probabilities, labels), report on ``test``.

    The test labels reach only `clinical_report`, after the threshold is fixed.
    """
    choice = select_threshold(*validation, target_sensitivity=target_sensitivity)
    return OperatingPoint(choice, clinical_report(*test, threshold=choice.threshold, seed=seed))


# ---------------------------------------------------------------------------------------------
# Warnings


def model_warnings(
    proba: np.ndarray,
    labels: np.ndarray,
    *,
    threshold: float | None = None,
    auc_estimate: Estimate | None = None,
    private: bool = True,
) -> list[ModelWarning]:
    """Warnings about a model on one site's labelled data (empty list: nothing to flag).

    ``private``: the model was trained under DP, so DP noise is among the causes and a larger
    epsilon among the remedies; without DP neither is named.

    - ``one-class``: every prediction is the same class while the data hold several;
    - ``auc-below-chance``: ROC AUC below 0.5 (the message says whether its interval excludes
      0.5 when ``auc_estimate`` carries one).
    """
    p = _proba(proba)
    y = np.asarray(labels).astype(np.int64)
    out: list[ModelWarning] = []
    present = np.unique(y)
    if len(present) > 1:
        predicted = np.unique(predictions(p, threshold))
        if len(predicted) == 1:
            at = "the argmax" if threshold is None else f"threshold {threshold:.3g}"
            out.append(
                ModelWarning(
                    code="one-class",
                    message=(
                        f"The model predicts class {int(predicted[0])} for all {len(y)} records "
                        f"at {at}, although they hold {len(present)} classes (balanced "
                        "accuracy 0.500)."
                    ),
                    cause=(
                        "the model learned the site's class balance instead of the outcome: a "
                        "rare class, too few records"
                        + (" or too much DP noise" if private else "")
                        + " for the signal, or a head that averaged away the minority class"
                    ),
                    advice=(
                        "class weighting (training.class_weighting), a threshold chosen on "
                        "validation data (`fedrema personalize`, --target-sensitivity), more "
                        "rounds" + (" or a larger epsilon" if private else "") + ", or a method "
                        "whose head is shared (fedavg, fedavg-ft)"
                    ),
                )
            )
    value = auc_estimate.value if auc_estimate is not None else auc(p, y)
    if value is not None and value < 0.5:
        high = auc_estimate.high if auc_estimate is not None else None
        sure = (
            f"its {CONFIDENCE:.0%} interval ends at {high:.2f}, below chance"
            if high is not None and high < 0.5
            else "with this few records it may still be chance"
        )
        out.append(
            ModelWarning(
                code="auc-below-chance",
                message=f"ROC AUC is {value:.2f}, worse than a coin ({sure}).",
                cause=(
                    "the scores run against the outcome here: labels coded the other way round "
                    "at this site, features measured or scaled differently from the other "
                    "sites, or a head merged from sites whose patients differ"
                ),
                advice=(
                    "check the label coding and units of this site's export against the schema; "
                    "compare with `--method local`; do not deploy this model"
                ),
            )
        )
    return out


def minority_warning(
    counts: Sequence[int] | np.ndarray,
    *,
    classes: Sequence[int | str] | None = None,
    minimum: int = MIN_MINORITY_RECORDS,
) -> ModelWarning | None:
    """A warning when some class has fewer than ``minimum`` training records (pure, on counts).

    ``counts[k]``: training records of class index k; ``classes`` names them for the message.
    Shown to the site's operator only: the counts are patient data and are not published.
    """
    c = np.asarray(counts, dtype=np.int64)
    names = list(classes) if classes is not None else list(range(len(c)))
    few = [(names[k], int(v)) for k, v in enumerate(c) if v < minimum]
    if not few:
        return None
    listed = ", ".join(f"class {name!r}: {v}" for name, v in few)
    return ModelWarning(
        code="too-few-minority",
        message=(
            f"This site's training data hold fewer than {minimum} records of some class "
            f"({listed}; {int(c.sum())} records in all)."
        ),
        cause=(
            "with so few examples a model trained here learns the class balance rather than "
            "the class, a validation split holds almost none of them, and the test metrics of "
            "that class are too uncertain to judge"
        ),
        advice=(
            "check that the export holds all eligible patients and the label coding; a "
            "federated method with a shared head (fedavg, fedavg-ft) can learn the class from "
            "other sites; class weighting helps only if some examples exist"
        ),
    )
