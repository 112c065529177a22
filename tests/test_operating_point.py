"""The operating point of a model with more than two classes: the posterior moved to the
site's own class prior (`learning.metrics.PriorShift`), fit on the training file only, and
what `personalize`, the model card and `simulate` report at it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedrema_cli import simulate as sim
from fedrema_cli.learning.metrics import prior_shift
from fedrema_cli.learning.models import build_model, set_part
from fedrema_cli.learning.training import predict_proba
from fedrema_cli.roles.site import Site
from tests.cli.conftest import run


@pytest.fixture(scope="module")
def skewed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One plaintext round of local training on the label-skew benchmark (ten sites, seven
    classes at each, 80% of a site's records in three of them)."""
    work = tmp_path_factory.mktemp("skew")
    result = sim.run(
        sim.SimulationSpec(
            dataset="label-skew",
            method="local",
            rounds=1,
            seed=1,
            secure_aggregation=False,
            workdir=work,
            predictions=True,
        )
    )
    return work, result


def test_simulate_reports_accuracy_at_each_sites_decision_rule(skewed: tuple[Path, dict]) -> None:
    _, result = skewed
    for name, site in result["sites"].items():
        flags = site["correct_at_operating_point"]
        assert len(flags) == site["n_test"] == len(site["correct"]), name
        assert site["accuracy_at_operating_point"] == pytest.approx(flags.count("1") / len(flags))
        assert site["accuracy"] == pytest.approx(site["correct"].count("1") / len(flags))
        # the labels are the site's test file, one digit each, in file order
        test = Site(skewed[0] / "sites" / name).data()
        assert site["labels"] == "".join(str(int(c)) for c in test.y_test), name
    means = [s["accuracy_at_operating_point"] for s in result["sites"].values()]
    assert result["mean_accuracy_at_operating_point"] == pytest.approx(np.mean(means))
    # One round leaves each model far from its site's prior: the shift must matter here.
    assert result["mean_accuracy_at_operating_point"] > result["mean_accuracy"] + 0.1


def test_personalize_fits_the_shift_on_training_labels_and_the_card_records_it(
    skewed: tuple[Path, dict], tmp_path: Path
) -> None:
    work, _ = skewed
    folder = work / "sites" / "site03"
    out = run("personalize", "-s", folder, "--export", tmp_path / "model", "--json")
    assert out.exit_code == 0, out.stderr
    data = out.json()
    point = data["threshold"]
    assert point["criterion"] == "prior-shift" and point["threshold"] is None
    assert "class_weights" in data["decision_rule"]
    # The weights are the site's (smoothed) training-label frequencies over the model's mean
    # posterior on the training records, recomputed here from the files.
    site = Site(folder)
    train = site.data()
    params, _ = site.personalized_params()
    model = build_model(site.config.model, seed=site.config.seed)
    set_part(model, "all", params)
    expected = prior_shift(predict_proba(model, train.x_train), train.y_train)
    assert point["class_weights"] == pytest.approx(list(expected.weights))
    counts = np.bincount(train.y_train, minlength=len(expected.weights))
    assert data["class_balance"]["train"] == counts.tolist()
    card = (tmp_path / "model" / "model-card.json").read_text()
    assert '"prior-shift"' in card and '"class_weights"' in card
    shown = run("personalize", "-s", folder)
    assert shown.exit_code == 0, shown.stderr
    assert "moved to this site's class prior" in " ".join(shown.stdout.split())
