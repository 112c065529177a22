"""Clinical metrics: thresholds chosen on validation data only, intervals, degeneracy warnings."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from fedrema_cli.learning import metrics as m


def _binary(p1: np.ndarray) -> np.ndarray:
    p1 = np.asarray(p1, dtype=np.float64)
    return np.stack([1 - p1, p1], axis=1)


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval written out (Wilson 1927), to check scipy's use against."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def _no_nan(obj: object) -> None:
    json.dumps(obj, allow_nan=False)  # raises on NaN or infinity anywhere


# ------------------------------------------------------------------------------------ intervals


@pytest.mark.parametrize(("k", "n"), [(9, 10), (0, 7), (7, 7), (1, 3), (40, 100)])
def test_proportion_is_the_wilson_interval(k: int, n: int) -> None:
    est = m.proportion(k, n)
    low, high = _wilson(k, n)
    assert est.method == "wilson" and est.value == k / n
    assert est.low == pytest.approx(low, abs=1e-9) and est.high == pytest.approx(high, abs=1e-9)
    assert 0.0 <= est.low <= est.value <= est.high <= 1.0


def test_an_empty_denominator_is_undefined_not_nan() -> None:
    est = m.proportion(0, 0)
    assert (est.value, est.low, est.high) == (None, None, None)


# ------------------------------------------------------------------------------------ threshold


def test_threshold_maximises_balanced_accuracy_on_validation() -> None:
    # Positives score 0.30-0.40, negatives 0.05-0.32: the best cut is between 0.29 and 0.30
    # (one negative at 0.32 stays a false positive), far below the default 0.5.
    scores = np.array([0.05, 0.10, 0.20, 0.29, 0.32, 0.30, 0.35, 0.40])
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    choice = m.select_threshold(scores, labels)
    assert choice.criterion == "balanced-accuracy" and choice.reached
    assert choice.threshold == pytest.approx(0.295)
    assert (choice.sensitivity, choice.specificity) == (1.0, 0.8)
    assert choice.balanced_accuracy == pytest.approx(0.9)
    # The [n, 2] probabilities give the same choice as P(class 1).
    assert m.select_threshold(_binary(scores), labels) == choice


def test_threshold_reaching_a_target_sensitivity_keeps_the_most_specificity() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.15, 0.35, 0.55, 0.7, 0.8, 0.9, 0.95])
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    best = m.select_threshold(scores, labels)
    target = m.select_threshold(scores, labels, target_sensitivity=0.85)
    assert target.criterion == "target-sensitivity" and target.target_sensitivity == 0.85
    # 6 of 7 positives (0.857) are found at any cut in (0.3, 0.35]; the highest such cut keeps
    # the negatives at 0.1-0.3 negative.
    assert target.sensitivity == pytest.approx(6 / 7) and target.specificity == 0.5
    assert target.threshold == pytest.approx(0.325)
    assert best.sensitivity < target.sensitivity
    full = m.select_threshold(scores, labels, target_sensitivity=1.0)
    assert full.sensitivity == 1.0 and full.threshold == pytest.approx(0.125)


def test_a_validation_split_with_one_class_keeps_the_default_threshold() -> None:
    choice = m.select_threshold(np.array([0.2, 0.7, 0.9]), np.ones(3), target_sensitivity=0.9)
    assert choice.threshold == 0.5 and choice.criterion == "default" and not choice.reached
    assert "no negative record" in (choice.note or "")
    _no_nan(choice.to_json())


def test_thresholds_are_for_binary_models_only() -> None:
    with pytest.raises(ValueError, match="binary model"):
        m.select_threshold(np.full((4, 3), 1 / 3), np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="binary model"):
        m.clinical_report(np.full((4, 3), 1 / 3), np.array([0, 1, 2, 0]), threshold=0.5)
    with pytest.raises(ValueError, match="target sensitivity"):
        m.select_threshold(np.array([0.1, 0.9]), np.array([0, 1]), target_sensitivity=1.5)


def test_the_threshold_comes_from_validation_never_from_test() -> None:
    rng = np.random.default_rng(3)
    val_y = rng.integers(0, 2, 80)
    val_p = _binary(np.clip(0.3 * val_y + rng.normal(0.3, 0.15, 80), 0, 1))
    test_y = rng.integers(0, 2, 60)
    test_p = _binary(np.clip(0.3 * test_y + rng.normal(0.3, 0.15, 60), 0, 1))
    point = m.operating_point((val_p, val_y), (test_p, test_y))
    assert point.report.threshold == point.choice.threshold
    # Other test labels: same threshold, other test metrics.
    flipped = m.operating_point((val_p, val_y), (test_p, 1 - test_y))
    assert flipped.choice == point.choice
    assert flipped.report.sensitivity != point.report.sensitivity
    # Other validation labels: another threshold.
    moved = m.operating_point((val_p, 1 - val_y), (test_p, test_y))
    assert moved.choice.threshold != point.choice.threshold
    # The report at the chosen threshold is exactly the test set scored at it.
    pred = (test_p[:, 1] >= point.choice.threshold).astype(int)
    tp = int(((pred == 1) & (test_y == 1)).sum())
    assert point.report.sensitivity.value == tp / int((test_y == 1).sum())


# --------------------------------------------------------------------------------------- report


def test_report_counts_and_intervals_on_a_hand_made_test_set() -> None:
    # 4 positives, 6 negatives; at 0.5: TP 3, FN 1, TN 5, FP 1.
    p1 = np.array([0.9, 0.8, 0.6, 0.4, 0.7, 0.3, 0.2, 0.1, 0.1, 0.05])
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    r = m.clinical_report(_binary(p1), y, threshold=0.5)
    assert r.n == 10 and r.class_counts == (6, 4) and r.threshold == 0.5
    assert r.sensitivity.value == 0.75 and r.specificity.value == pytest.approx(5 / 6)
    assert r.ppv.value == 0.75 and r.npv.value == pytest.approx(5 / 6)
    assert r.accuracy.value == 0.8
    assert r.balanced_accuracy.value == pytest.approx((0.75 + 5 / 6) / 2)
    assert r.auc.value == pytest.approx(roc_auc_score(y, p1))
    assert r.brier.value == pytest.approx(brier_score_loss(y, p1))
    for est in (r.sensitivity, r.specificity, r.ppv, r.npv, r.accuracy):
        assert est.method == "wilson" and est.low <= est.value <= est.high
    for est in (r.balanced_accuracy, r.auc, r.brier, r.ece):
        assert est.method == "stratified bootstrap" and est.low <= est.value <= est.high
    assert r.warnings == ()
    _no_nan(r.to_json())


def test_expected_calibration_error_uses_ten_equal_bins() -> None:
    # Bin [0.1, 0.2): scores 0.1, 0.1 with one positive -> |0.5 - 0.1| * 2; bin [0.9, 1.0]:
    # 0.9, 1.0 both positive -> |1 - 0.95| * 2; (0.8 + 0.1) / 4 records.
    p1 = np.array([0.1, 0.1, 0.9, 1.0])
    y = np.array([0, 1, 1, 1])
    r = m.clinical_report(_binary(p1), y, n_bootstrap=50)
    assert r.ece_bins == 10
    assert r.ece.value == pytest.approx((0.4 * 2 + 0.05 * 2) / 4)


def test_bootstrap_is_seeded() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    p = _binary(np.clip(0.4 * y + rng.uniform(0, 0.6, 40), 0, 1))
    a, b = m.clinical_report(p, y, seed=5), m.clinical_report(p, y, seed=5)
    assert a == b
    assert m.clinical_report(p, y, seed=6).brier.low != a.brier.low


def test_a_class_absent_from_the_test_set_leaves_its_metrics_undefined() -> None:
    p1 = np.array([0.9, 0.6, 0.3, 0.8])
    r = m.clinical_report(_binary(p1), np.ones(4, dtype=int), threshold=0.5)
    assert r.specificity.value is None and r.specificity.low is None
    assert r.npv.value == 0.0  # the one record predicted negative is positive
    assert r.auc.value is None and r.auc.high is None
    assert r.sensitivity.value == 0.75 and r.balanced_accuracy.value == 0.75
    _no_nan(r.to_json())
    empty = m.clinical_report(np.zeros((0, 2)), np.zeros(0, dtype=int))
    assert empty.n == 0 and empty.accuracy.value is None
    _no_nan(empty.to_json())


def test_multiclass_keeps_accuracy_and_balanced_accuracy() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 60)
    logits = rng.normal(size=(60, 3)) + 2 * np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    r = m.clinical_report(p, y)
    pred = p.argmax(axis=1)
    assert r.accuracy.value == pytest.approx((pred == y).mean())
    assert r.balanced_accuracy.value == pytest.approx(m.balanced_accuracy(pred, y))
    assert r.auc.value == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))
    assert r.sensitivity.value is None and r.sensitivity.method == "binary only"
    assert r.brier.value == pytest.approx(np.mean(((p - np.eye(3)[y]) ** 2).sum(axis=1)))
    _no_nan(r.to_json())


def test_auc_matches_scikit_learn_with_ties() -> None:
    rng = np.random.default_rng(2)
    for _ in range(20):
        y = rng.integers(0, 2, 30)
        if len(np.unique(y)) < 2:
            continue
        p1 = rng.integers(0, 5, 30) / 4  # many ties
        assert m.auc(_binary(p1), y) == pytest.approx(roc_auc_score(y, p1), abs=1e-12)


def test_large_test_sets_bootstrap_in_bounded_chunks() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 5000)
    p = _binary(np.clip(0.3 * y + rng.uniform(0, 0.7, 5000), 0, 1))
    r = m.clinical_report(p, y, n_bootstrap=500)  # 500 x 5000 x 2 > one chunk
    assert r.auc.low < r.auc.value < r.auc.high
    assert r.auc.high - r.auc.low < 0.05


# ------------------------------------------------------------------------------------- warnings


def test_a_majority_class_model_is_flagged() -> None:
    y = np.array([0] * 20 + [1] * 4)
    p = _binary(np.concatenate([np.linspace(0.1, 0.25, 20), np.full(4, 0.3)]))  # all < 0.5
    r = m.clinical_report(p, y)
    codes = [w.code for w in r.warnings]
    assert codes == ["one-class"]
    w = r.warnings[0]
    assert "class 0 for all 24 records" in w.message and "class weighting" in w.advice
    assert "Likely cause" in str(w)
    # Lowering the threshold (chosen on validation) lifts the warning.
    assert m.model_warnings(p, y, threshold=0.28) == []
    # Under DP, noise is among the causes and epsilon among the remedies; without DP neither.
    assert "DP noise" in w.cause and "larger epsilon" in w.advice
    (plain,) = m.clinical_report(p, y, private=False).warnings
    assert "DP" not in plain.cause and "epsilon" not in plain.advice
    assert "class weighting" in plain.advice and "rare class" in plain.cause


def test_auc_below_chance_is_flagged_and_says_how_sure() -> None:
    y = np.array([0] * 30 + [1] * 30)
    p1 = np.concatenate([np.linspace(0.6, 0.9, 30), np.linspace(0.1, 0.4, 30)])  # reversed
    r = m.clinical_report(_binary(p1), y)
    (w,) = [w for w in r.warnings if w.code == "auc-below-chance"]
    assert "0.00" in w.message and "below chance" in w.message and "label coding" in w.advice
    noisy = m.model_warnings(_binary(np.array([0.6, 0.4, 0.5, 0.45])), np.array([0, 1, 0, 1]))
    assert [x.code for x in noisy] == ["auc-below-chance"] and "may still be chance" in str(
        noisy[0]
    )
    good = m.model_warnings(_binary(1 - p1), y)
    assert good == []


def test_too_few_minority_records_is_a_pure_check_on_counts() -> None:
    assert m.minority_warning([120, 10]) is None
    w = m.minority_warning([120, 3], classes=(0, 1))
    assert w is not None and w.code == "too-few-minority"
    assert "class 1: 3" in w.message and "123 records" in w.message
    absent = m.minority_warning(np.array([40, 0, 25]), classes=("a", "b", "c"))
    assert absent is not None and "class 'b': 0" in absent.message
    assert m.minority_warning([5, 5], minimum=5) is None


def test_a_one_class_validation_split_matches_the_models_prior_when_it_can() -> None:
    # A head that learned a 90%-positive site scores everything above 0.5: 0.5 would call every
    # record positive. With the training scores, the threshold is their mean (the model's
    # class prior), which here separates the one low-scoring record.
    train = np.array([0.97, 0.96, 0.95, 0.98, 0.94, 0.97, 0.96, 0.95, 0.99, 0.62])
    choice = m.select_threshold(np.array([0.96, 0.97]), np.ones(2), training_scores=train)
    assert choice.criterion == "prior-matched" and choice.reached
    assert choice.threshold == pytest.approx(train.mean())
    assert 0.62 < choice.threshold < 0.94
    assert "no negative record" in (choice.note or "") and "prior" in (choice.note or "")
    # Two classes present: the training scores play no part.
    scores, labels = np.array([0.1, 0.2, 0.35, 0.6]), np.array([0, 0, 1, 1])
    assert m.select_threshold(scores, labels, training_scores=train) == m.select_threshold(
        scores, labels
    )
    _no_nan(choice.to_json())


# --------------------------------------------------------------------- more than two classes


def test_a_prior_shift_moves_the_posterior_to_the_sites_class_prior() -> None:
    # The model says [0.5, 0.3, 0.2] for every training record: its prior. The site's labels
    # are 6 of class 2, 2 of class 1, none of class 0: add-one smoothed, [1, 3, 7] / 11.
    proba = np.tile([0.5, 0.3, 0.2], (8, 1))
    labels = np.array([2, 2, 2, 2, 2, 2, 1, 1])
    shift = m.prior_shift(proba, labels)
    site = np.array([1, 3, 7]) / 11
    assert shift.site_prior == pytest.approx(tuple(site))
    assert shift.model_prior == pytest.approx((0.5, 0.3, 0.2))
    ratio = site / np.array([0.5, 0.3, 0.2])
    assert shift.weights == pytest.approx(tuple(ratio / ratio.max()))
    # A record the model calls class 0 is class 2 at the site's prior; rows stay distributions.
    record = np.array([[0.45, 0.3, 0.25]])
    moved = shift.apply(record)
    assert record.argmax() == 0 and moved.argmax() == 2
    assert moved.sum() == pytest.approx(1.0) and (moved > 0).all()
    # Bayes' rule by hand: P(c|x) * pi_site(c) / pi_model(c), normalized.
    by_hand = record[0] * ratio / (record[0] * ratio).sum()
    assert moved[0] == pytest.approx(by_hand)
    _no_nan(shift.to_json())
    assert shift.to_json()["criterion"] == "prior-shift"


def test_a_model_that_already_holds_the_sites_prior_is_left_alone() -> None:
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    site = (np.bincount(labels) + 1) / (len(labels) + 3)
    rng = np.random.default_rng(3)
    proba = rng.dirichlet(site * 40, size=100)
    proba = proba * (site / proba.mean(axis=0))  # its mean posterior is the site's prior
    proba /= proba.sum(axis=1, keepdims=True)
    shift = m.prior_shift(proba, labels)
    assert max(shift.weights) == 1.0 and min(shift.weights) > 0.95
    assert (shift.apply(proba).argmax(axis=1) == proba.argmax(axis=1)).mean() > 0.95


def test_a_prior_shift_reads_training_labels_only() -> None:
    with pytest.raises(ValueError, match="posteriors for"):
        m.prior_shift(np.tile([0.5, 0.3, 0.2], (4, 1)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="posteriors for"):
        m.prior_shift(np.zeros((0, 3)), np.zeros(0))
    assert np.array_equal(m.reweighted(np.eye(3), [1.0, 1.0, 1.0]), np.eye(3))


def test_a_recorded_decision_rule_is_applied_as_personalize_chose_it() -> None:
    # What `simulate` (and a deployment reading the model card) does with the rule.
    proba = np.array([[0.45, 0.3, 0.25], [0.1, 0.2, 0.7]])
    shift = m.prior_shift(np.tile([0.5, 0.3, 0.2], (8, 1)), np.array([2] * 6 + [1] * 2))
    assert m.decide(proba, shift.to_json()).tolist() == [2, 2]
    assert m.decide(proba, {"threshold": None, "criterion": "argmax"}).tolist() == [0, 2]
    binary = _binary(np.array([0.3, 0.6]))
    choice = m.select_threshold(np.array([0.1, 0.2, 0.35, 0.6]), np.array([0, 0, 1, 1]))
    assert m.decide(binary, choice.to_json()).tolist() == [1, 1]  # threshold 0.275
    assert m.decide(binary, {"threshold": 0.5}).tolist() == [0, 1]
