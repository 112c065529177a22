"""Imbalanced tables through the CLI (#15): class weighting signed into the config and its DP
label-count release on the ledger; the threshold chosen on validation data; warnings; export."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from privacy.analysis import epsilon as opacus_epsilon
from tests.cli.conftest import (
    Fed,
    full_round,
    key_exchange,
    make_federation,
    run,
    run_rounds,
    train_and_submit,
)


def _ledger(fed: Fed, site: str) -> list[dict]:
    return [json.loads(line) for line in (fed.site(site) / "ledger.jsonl").read_text().splitlines()]


def test_balanced_weighting_under_dp_is_signed_released_accounted_and_reported(
    tmp_path: Path,
) -> None:
    fed = make_federation(tmp_path, "--epsilon", "3", "--class-weighting", "balanced")
    config = json.loads((fed.workspace / "federation.json").read_text())["body"]
    assert config["training"]["class_weighting"] == "balanced"
    assert config["privacy"]["label_count_noise"] == 10.0
    run_rounds(fed, 1)
    ledger = _ledger(fed, "va")
    # The label counts were released once, before round 1, and recorded as round 0.
    release, first = ledger
    assert (release["round"], release["steps"], release["sample_rate"]) == (0, 1, 1.0)
    assert (release["noise_multiplier"], release["grad_sample_mode"]) == (10.0, "label-counts")
    history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in ledger]
    assert first["epsilon_after"] == pytest.approx(
        opacus_epsilon(history, delta=1e-5, mechanism="rdp"), abs=1e-9
    )
    trained = json.loads((fed.site("va") / "rounds" / "0001" / "training.json").read_text())
    weights = json.loads((fed.site("va") / "label-counts.json").read_text())["weights"]
    assert trained["class_weights"] == weights and max(weights) == 1.0
    assert (fed.workspace / "ledger" / "va" / "0000.json").exists()
    full_round(fed)  # the last planned round still fits: the plan counted the release
    last = _ledger(fed, "va")[-1]
    assert last["round"] == 2 and 2.9 < last["epsilon_after"] <= 3.0 + 1e-9
    # The report recomputes the same epsilon, and dp-accounting agrees with it.
    report = run("privacy", "report", "-w", fed.workspace, "--json")
    assert report.exit_code == 0, report.stderr
    va = next(s for s in report.json()["sites"] if s["site"] == "va")
    assert report.json()["verified"] and [r["round"] for r in va["rounds"]] == [0, 1, 2]
    assert va["epsilon"] == pytest.approx(last["epsilon_after"], abs=1e-9)
    assert va["epsilon_independent"]["rdp"] == pytest.approx(va["epsilon"], abs=0.02)
    assert va["rounds_trained"] == 2  # the release is on the ledger, not a trained round
    # A reader of the filed report sees round 0 named for what it is.
    html = tmp_path / "report.html"
    shown = run("privacy", "report", "-w", fed.workspace, "--detail", "--html", html)
    assert shown.exit_code == 0, shown.stderr
    assert "0 (label counts)" in shown.stdout
    assert html.read_text().count("0 (label counts)") >= 1
    assert "the DP release of the site's label counts" in html.read_text()  # the legend


def test_personalize_chooses_the_threshold_on_validation_data_and_exports_it(
    federation: Fed,
) -> None:
    fed = federation
    run_rounds(fed, 2)
    out = run("personalize", "-s", fed.site("cleveland"), "--json")
    assert out.exit_code == 0, out.stderr
    data = out.json()
    t = data["threshold"]
    assert t["criterion"] == "balanced-accuracy" and 0 < t["threshold"] < 1
    train_n = len(pd.read_csv(fed.data("cleveland")))
    assert t["validation_n"] == sum(data["class_balance"]["validation"])
    assert t["validation_n"] < train_n and sum(data["class_balance"]["train"]) == train_n
    clinical = data["clinical"]
    for key in ("sensitivity", "specificity", "ppv", "npv", "balanced_accuracy", "auc"):
        e = clinical[key]
        assert e["low"] <= e["value"] <= e["high"], key
    assert {"brier", "ece"} <= set(clinical["calibration"])
    # Flip every test label: the threshold must not move (the test file never chooses it),
    # while the test metrics do.
    test_file = fed.data("cleveland", "test")
    frame = pd.read_csv(test_file)
    frame["target"] = 1 - frame["target"]
    frame.to_csv(test_file, index=False)
    flipped = run("personalize", "-s", fed.site("cleveland"), "--json").json()
    assert flipped["threshold"] == t
    assert flipped["clinical"]["sensitivity"] != clinical["sensitivity"]
    # A target sensitivity picks another operating point, reached on validation data.
    target = run(
        "personalize", "-s", fed.site("cleveland"), "--target-sensitivity", "0.9", "--json"
    )
    assert target.json()["threshold"]["criterion"] == "target-sensitivity"
    assert target.json()["threshold"]["validation_sensitivity"] >= 0.9
    text = run("personalize", "-s", fed.site("hungary"))
    assert "threshold" in text.stdout and "sensitivity" in text.stdout and "95%" in text.stdout
    # The export's model card records the threshold, how it was chosen, the class balance.
    folder = fed.root / "export"
    assert run("personalize", "-s", fed.site("cleveland"), "--export", folder).exit_code == 0
    card = json.loads((folder / "model-card.json").read_text())
    assert card["site"] == "cleveland"
    assert card["threshold"]["threshold"] == t["threshold"]
    assert card["threshold"]["criterion"] == "balanced-accuracy"
    assert card["decision_rule"].startswith("predict class 1 when P(class 1) >= ")
    assert card["class_balance"]["train"] == data["class_balance"]["train"]
    # Another site's export into the same folder is refused, in one line, nothing changed;
    # the same site exports again.
    before = (folder / "model-card.json").read_bytes()
    other = run("personalize", "-s", fed.site("va"), "--export", folder)
    assert other.exit_code == 1
    assert "holds site 'cleveland'" in other.stderr and len(other.stderr.strip().splitlines()) == 1
    assert (folder / "model-card.json").read_bytes() == before
    assert run("personalize", "-s", fed.site("cleveland"), "--export", folder).exit_code == 0
    # An export interrupted after its card (the card is written first) runs again.
    (folder / "model.safetensors").unlink()
    assert run("personalize", "-s", fed.site("cleveland"), "--export", folder).exit_code == 0
    assert (folder / "model.safetensors").exists()
    a_file = fed.root / "a-file"
    a_file.write_text("keep me")
    out = run("personalize", "-s", fed.site("cleveland"), "--export", a_file)
    assert out.exit_code == 1 and "is a file" in out.stderr, out.stderr
    assert a_file.read_text() == "keep me"
    # A folder of someone else's files (here a model of the same name) is not written into.
    theirs = fed.root / "theirs"
    theirs.mkdir()
    (theirs / "model.safetensors").write_bytes(b"not ours")
    out = run("personalize", "-s", fed.site("cleveland"), "--export", theirs)
    assert out.exit_code == 1 and "no fedrema model card" in out.stderr, out.stderr
    assert sorted(p.name for p in theirs.iterdir()) == ["model.safetensors"]
    assert (theirs / "model.safetensors").read_bytes() == b"not ours"


def test_a_majority_class_model_is_warned_about_not_ticked(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, "--no-dp", "--method", "majority")
    for _ in range(2):  # nothing to sum: no secure aggregation, one submit per round
        train_and_submit(fed)
        assert run("aggregate", "-s", fed.coordinator).exit_code == 0
    out = run("personalize", "-s", fed.site("cleveland"))
    assert out.exit_code == 0, out.stderr
    assert "✓" not in out.stdout and "predicts class" in out.stdout
    assert "Likely cause" in out.stdout and "Try:" in out.stdout
    # -q drops the chatter, not the result: the metrics and the warning stay, one line each
    quiet = run("-q", "personalize", "-s", fed.site("cleveland"))
    assert "personalized model" not in quiet.stdout and "hold-out" in quiet.stdout
    assert any("predicts class" in line and "Try:" in line for line in quiet.stdout.splitlines())
    data = run("personalize", "-s", fed.site("cleveland"), "--json").json()
    assert [w["code"] for w in data["warnings"]] == ["one-class"]
    # status shows what the last personalize found (it evaluates nothing itself).
    status = run("status", "-s", fed.site("cleveland"))
    assert "predicts class" in status.stdout
    status_json = run("status", "-s", fed.site("cleveland"), "--json").json()
    assert status_json["last_evaluation"]["warnings"][0]["code"] == "one-class"
    assert run("status", "-s", fed.site("va"), "--json").json()["last_evaluation"] is None


def test_simulate_reports_threshold_metrics_and_warnings_per_site() -> None:
    out = run(
        "simulate", "heart-disease", "--method", "majority", "--rounds", "1", "--no-dp", "--json"
    )
    assert out.exit_code == 0, out.stderr
    data = out.json()
    for key in ("mean_balanced_accuracy_at_threshold", "mean_sensitivity_at_threshold"):
        assert key in data
    cleveland = data["sites"]["cleveland"]
    assert cleveland["balanced_accuracy"] == 0.5 and 0 < cleveland["threshold"] < 1
    assert {(w["code"], w["at"]) for w in cleveland["warnings"]} >= {("one-class", "argmax")}
    table = run("simulate", "heart-disease", "--method", "majority", "--rounds", "1", "--no-dp")
    assert "sens." in table.stdout and "majority, cleveland (argmax)" in table.stdout


def test_init_warns_a_site_with_too_few_minority_records(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland",), approve=False)
    out = run(
        "init", "-w", fed.workspace, "-s", fed.site("switzerland"), "--site", "switzerland",
        "--train", fed.data("switzerland"), "--json",
    )  # fmt: skip
    assert out.exit_code == 0, out.stderr
    assert [w["code"] for w in out.json()["warnings"]] == ["too-few-minority"]
    text = run(
        "init", "-w", fed.workspace, "-s", fed.site("va"), "--site", "va",
        "--train", fed.data("va"),
    )  # fmt: skip
    assert text.exit_code == 0 and "fewer than 10 records" not in text.stderr


def test_a_crash_right_after_the_label_release_is_repaired_not_released_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedrema_cli.roles.site.ledger import Ledger

    fed = make_federation(tmp_path, "--epsilon", "3", "--class-weighting", "balanced")
    key_exchange(fed)
    original = Ledger._sync_ledger
    crashed = []

    def crash_once(self: Ledger) -> object:
        if (self.state.root / "label-counts.json").exists() and not crashed:
            crashed.append(True)
            raise KeyboardInterrupt  # the process dies after the release, before its entry
        return original(self)

    monkeypatch.setattr(Ledger, "_sync_ledger", crash_once)
    assert run("train-local", "-s", fed.site("va")).exit_code == 130
    monkeypatch.setattr(Ledger, "_sync_ledger", original)
    release = (fed.site("va") / "label-counts.json").read_bytes()
    assert run("train-local", "-s", fed.site("va")).exit_code == 0
    assert (fed.site("va") / "label-counts.json").read_bytes() == release  # not drawn again
    assert [e["round"] for e in _ledger(fed, "va")] == [0, 1]
