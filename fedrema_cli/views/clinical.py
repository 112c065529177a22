"""What `personalize`, `status` and `simulate` print about a model at a site: the operating
point with its intervals, and warnings that replace the ✓ of a degenerate model."""

from __future__ import annotations

from typing import Any

from rich.markup import escape

_METRICS = (
    ("accuracy", "accuracy"),
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
    ("ppv", "PPV"),
    ("npv", "NPV"),
    ("balanced_accuracy", "balanced accuracy"),
    ("auc", "AUC"),
)


def _estimate(e: dict[str, Any] | None) -> str:
    if not e or e.get("value") is None:
        return "–"
    if e.get("low") is None:
        return f"{e['value']:.3f}"
    return f"{e['value']:.3f} ({e['low']:.2f}–{e['high']:.2f})"


def threshold_line(out: dict[str, Any]) -> str:
    """How the decision threshold was chosen, in one line."""
    t = out["threshold"]
    if t.get("criterion") == "prior-shift":
        weights = ", ".join(f"{w:.2f}" for w in t["class_weights"])
        return escape(
            "  decision: the most probable class once P(c|x) is moved to this site's class "
            f"prior (class weights {weights}; fit on the training file)"
        )
    if t.get("threshold") is None:
        return f"  decision: {out['decision_rule']}"
    how = {
        "balanced-accuracy": "maximises balanced accuracy",
        "target-sensitivity": f"reaches sensitivity {t.get('target_sensitivity')}",
        "default": "default",
    }.get(t["criterion"], t["criterion"])
    split = f"{t['validation_n']} records, {t['validation_positives']} positive"
    line = (
        f"  threshold {t['threshold']:.3f} (prior-matched; the validation split: {split})"
        if t["criterion"] == "prior-matched"
        else f"  threshold {t['threshold']:.3f} ({how} on a validation split of the training "
        f"file: {split})"
    )
    if t.get("note"):
        line += f"; {t['note']}"
    if not t.get("reached", True):
        line += "; the target sensitivity could not be checked"
    return line


def clinical_lines(out: dict[str, Any]) -> list[str]:
    """The test metrics at the chosen threshold, each with its 95% interval."""
    c = out.get("clinical")
    if not c:
        return ["  no test file: nothing to report beyond the threshold"]
    counts = ", ".join(str(n) for n in c["class_counts"])
    lines = [f"  test set: {c['n']} records (per class {counts}); 95% intervals in brackets"]
    lines.append("  " + ", ".join(f"{name} {_estimate(c.get(key))}" for key, name in _METRICS))
    cal = c["calibration"]
    lines.append(
        f"  calibration: Brier {_estimate(cal['brier'])}, "
        f"ECE ({cal['ece_bins']} bins) {_estimate(cal['ece'])}"
    )
    return [escape(line) for line in lines]


def warning_lines(warnings: list[dict[str, Any]], *, prefix: str = "") -> list[str]:
    """One line per warning: what is wrong, the likely cause, what to try."""
    return [
        f"[yellow]![/] {escape(prefix)}{escape(w['message'])} Likely cause: "
        f"{escape(w['cause'])}. Try: {escape(w['advice'])}."
        for w in warnings
    ]
