"""Baselines behind the method interface, fine-tuning, validation splits (issue #5).

Every method runs through `fedrema_cli.simulate.run`, i.e. the real site and coordinator code,
on the real heart-disease split, for a couple of rounds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrema_cli import simulate as sim
from fedrema_cli.config import (
    TrainingConfig,
    linear_model,
    make_config,
    method_finetune_rounds,
    parse_config,
)
from fedrema_cli.data.datasets import carve_validation, get_dataset, heart_disease
from fedrema_cli.errors import ConfigError
from fedrema_cli.learning.params import load_params
from fedrema_cli.merging import fedrema as fr
from fedrema_cli.methods import METHODS
from fedrema_cli.methods.fedrema import FedReMaOptions
from fedrema_cli.protocol.rounds import read_model
from fedrema_cli.roles.site import Site

HEART = get_dataset("heart-disease")


def _run(method: str, tmp_path: Path, **kw: object) -> dict:
    spec = sim.SimulationSpec(
        dataset="heart-disease",
        method=method,
        rounds=int(kw.pop("rounds", 2)),  # type: ignore[call-overload]
        seed=1,
        secure_aggregation=False,
        workdir=tmp_path / method,
        **kw,  # type: ignore[arg-type]
    )
    return sim.run(spec)


def test_every_method_is_registered_with_its_sharing_rule():
    # the methods the product is built on are there (a new one needs no edit here)
    assert set(METHODS) >= {
        "fedrema", "fedrema-paper", "fedrema-model", "pfednet", "pfednet-paper", "mr-mtl",
        "fedavg", "fedavg-ft", "fedper", "local", "local-lr", "majority",
    }  # fmt: skip
    assert METHODS["fedrema-model"].shared is None and METHODS["fedrema-model"].personal
    assert METHODS["fedrema-paper"]().rules() == fr.PAPER != METHODS["fedrema"]().rules()
    assert METHODS["fedavg-ft"].shared == "all" and METHODS["fedavg-ft"].deploy == "finetune"
    assert METHODS["fedper"].shared == "extractor" and METHODS["fedper"].personal is None
    for name in ("fedrema", "fedrema-paper", "pfednet", "pfednet-paper"):
        assert METHODS[name].shared == "extractor" and METHODS[name].personal == "head"
    for name in ("local", "local-lr", "majority"):
        assert METHODS[name].shared is None and METHODS[name].personal is None
    assert METHODS["mr-mtl"].shared == "all" and METHODS["mr-mtl"]().proximal() == (1.0, "all")
    assert not METHODS["majority"].trains and METHODS["local-lr"].model == "linear"


def test_majority_predicts_each_sites_most_frequent_training_label(tmp_path: Path):
    out = _run("majority", tmp_path)
    expected = {}
    for site, (train, test) in heart_disease.load_centers().items():
        majority = int(train["target"].mode().max())
        expected[site] = float((test["target"] == majority).mean())
        assert out["sites"][site]["accuracy"] == pytest.approx(expected[site])
        assert out["sites"][site]["auc"] in (None, 0.5)  # a constant score
    assert out["mean_accuracy"] == pytest.approx(np.mean(list(expected.values())))
    assert out["sites"]["switzerland"]["epsilon"] is None  # no DP asked, none reported


def test_local_lr_is_a_logistic_regression_and_the_cnn_has_none():
    config = make_config(
        federation_id="x", model=HEART.model_spec, data=HEART.schema, method="local-lr"
    )
    assert config["model"]["hidden"] == []
    with pytest.raises(ConfigError, match="tabular"):
        linear_model(get_dataset("label-skew").model_spec)


@pytest.mark.parametrize("method", ["local-lr", "local", "fedavg", "fedper", "fedrema-paper"])
def test_each_baseline_runs_and_reports_every_metric(method: str, tmp_path: Path):
    out = _run(method, tmp_path, track=True, predictions=True)
    assert set(out["sites"]) == set(HEART.sites)
    for v in out["sites"].values():
        assert 0 <= v["accuracy"] <= 1 and 0 <= v["balanced_accuracy"] <= 1
        assert v["auc"] is None or 0 <= v["auc"] <= 1
        correct = v["correct"]
        assert len(correct) == v["n_test"] and set(correct) <= {"0", "1"}
        assert correct.count("1") / len(correct) == pytest.approx(v["accuracy"])
    assert len(out["curve"]) == 2
    assert out["curve"][-1]["mean_accuracy"] == pytest.approx(out["mean_accuracy"])
    assert ("merging" in out) == (METHODS[method].personal is not None)


def test_fedavg_ft_fine_tunes_only_the_head_and_does_it_once(tmp_path: Path):
    out = _run("fedavg-ft", tmp_path, training=TrainingConfig(finetune_rounds=3))
    site = tmp_path / "fedavg-ft" / "sites" / "va"
    kept = sorted(p.name for p in (site / "rounds").iterdir())
    assert kept == ["0001", "0002", "0003", "0004", "0005"]  # 2 federated + 3 fine-tuning
    records = [json.loads((site / "rounds" / k / "training.json").read_text()) for k in kept]
    assert [r.get("finetune", False) for r in records] == [False, False, True, True, True]
    final = load_params((site / "rounds" / "0005" / "trained.safetensors").read_bytes())
    globe = read_model(Site(site).fed, 3)  # the global model after the last round
    for name, value in final.items():  # the extractor is the global one, untouched
        if name.startswith("extractor."):
            np.testing.assert_array_equal(value, globe[name])
    assert any(not np.array_equal(final[n], globe[n]) for n in final if n.startswith("head."))
    deployed, _ = Site(site).personalized_params()  # a re-run reuses the fine-tuned rounds
    for name, value in deployed.items():
        np.testing.assert_array_equal(value, final[name])
    assert out["sites"]["va"]["accuracy"] is not None


def test_private_fine_tuning_is_dp_sgd_planned_into_the_budget_and_in_the_ledger(
    tmp_path: Path,
):
    out = _run(
        "fedavg-ft",
        tmp_path,
        rounds=1,
        epsilon=3.0,
        training=TrainingConfig(finetune_rounds=1),
    )
    for site, v in out["sites"].items():
        assert 0 < v["epsilon"] <= 3.0 + 1e-9
        lines = (tmp_path / "fedavg-ft" / "sites" / site / "ledger.jsonl").read_text()
        rounds = [json.loads(line)["round"] for line in lines.splitlines()]
        assert rounds == [1, 2]  # the federated round, then the fine-tuning round
    config = json.loads((tmp_path / "fedavg-ft" / "workspace" / "federation.json").read_text())
    assert config["body"]["privacy"]["planned_rounds"] == 2


def test_the_privacy_plan_must_include_the_fine_tuning_rounds():
    good = make_config(
        federation_id="x",
        model=HEART.model_spec,
        data=HEART.schema,
        method="fedavg-ft",
        rounds=4,
        epsilon=1.0,
    )
    assert good["privacy"]["planned_rounds"] == 4 + METHODS["fedavg-ft"].finetune_rounds
    keys = {"coordinator": {"sign_pk": "x", "seal_pk": "y"}}
    parse_config({**good, **keys}, where="test")
    bad = {**good, **keys, "privacy": {**good["privacy"], "planned_rounds": 4}}
    with pytest.raises(ConfigError, match="fine-tuning"):
        parse_config(bad, where="test")
    plain = make_config(
        federation_id="x", model=HEART.model_spec, data=HEART.schema, rounds=4, epsilon=1.0
    )
    assert plain["privacy"]["planned_rounds"] == 4  # fedrema: no fine-tuning by default
    assert method_finetune_rounds("fedrema", TrainingConfig(finetune_rounds=2)) == 2
    assert method_finetune_rounds("fedper", TrainingConfig(finetune_rounds=2)) == 0


def test_both_fedrema_variants_merge_and_report_their_peers(tmp_path: Path):
    tuned = _run("fedrema", tmp_path, rounds=3)
    paper = _run("fedrema-paper", tmp_path, rounds=3)
    for out in (tuned, paper):
        assert out["merging"]["ccp_rounds"] >= 1
        assert out["merging"]["mean_peers_selected"] is not None
    log = json.loads((tmp_path / "fedrema" / "coordinator" / "method-state.json").read_text())
    assert log["similarity"] is not None  # the tuned rules keep a smoothed similarity
    paper_state = json.loads(
        (tmp_path / "fedrema-paper" / "coordinator" / "method-state.json").read_text()
    )
    assert "similarity" not in paper_state


def test_validation_split_never_touches_test_rows(tmp_path: Path):
    files = HEART.prepare(tmp_path / "data", 0)
    carved = carve_validation(HEART, files, tmp_path / "val", seed=4)
    for site, paths in files.items():
        train = pd.read_csv(paths["train"])
        fit, val = pd.read_csv(carved[site]["train"]), pd.read_csv(carved[site]["test"])
        assert len(fit) + len(val) == len(train)
        assert abs(len(val) - 0.25 * len(train)) <= 1
        both = pd.concat([fit, val]).sort_values(list(train.columns)).reset_index(drop=True)
        pd.testing.assert_frame_equal(
            both, train.sort_values(list(train.columns)).reset_index(drop=True)
        )
    again = carve_validation(HEART, files, tmp_path / "again", seed=4)
    assert carved["va"]["test"].read_bytes() == again["va"]["test"].read_bytes()
    other = carve_validation(HEART, files, tmp_path / "other", seed=5)
    assert carved["va"]["test"].read_bytes() != other["va"]["test"].read_bytes()


def test_simulate_on_validation_scores_the_held_out_training_rows(tmp_path: Path):
    out = _run("local", tmp_path, validation=True)
    assert out["evaluated_on"] == "validation"
    sizes = {"cleveland": 50, "hungary": 43, "switzerland": 8, "va": 22}
    assert {s: v["n_test"] for s, v in out["sites"].items()} == sizes


def test_multiclass_auc_uses_the_classes_a_small_test_set_holds():
    import torch

    from fedrema_cli.learning.models import build_model
    from fedrema_cli.learning.training import evaluate

    spec = get_dataset("label-skew").model_spec
    model = build_model(spec, seed=0)
    x = torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(0)).numpy()
    y = np.array([0, 1, 2] * 4)  # 3 of 10 classes present
    metrics = evaluate(model, x, y, num_classes=10)
    assert metrics.auc is not None and 0 <= metrics.auc <= 1


def test_simulate_cli_runs_a_baseline_by_name(tmp_path: Path):
    from typer.testing import CliRunner

    from fedrema_cli.app import app

    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "heart-disease",
            "--method",
            "majority,fedper",
            "--rounds",
            "1",
            "--json",
            "--no-secure-aggregation",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    methods = [r["method"] for r in json.loads(result.stdout)["results"]]
    assert methods == ["majority", "fedper"]


def test_fedrema_options_defaults_validate():
    FedReMaOptions()
    with pytest.raises(ValueError):
        FedReMaOptions(smoothing=1.0)
