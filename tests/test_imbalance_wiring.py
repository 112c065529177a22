"""Class weighting as a signed federation option, its DP release in the plan, and the
validation split the decision threshold is chosen on (#15)."""

from __future__ import annotations

import numpy as np
import pytest

from fedrema_cli.config import (
    LABEL_COUNT_NOISE,
    TrainingConfig,
    make_config,
    parse_class_weighting,
    parse_config,
)
from fedrema_cli.data.datasets import get_dataset
from fedrema_cli.errors import ConfigError, UsageError
from fedrema_cli.learning.metrics import validation_split
from privacy import PrivacyPolicy, plan_round
from privacy.analysis import epsilon
from privacy.independent import independent_epsilon

KEYS = {"sign_pk": "a", "seal_pk": "b"}


def _config(weighting: object, *, epsilon: float | None, method: str = "fedrema") -> dict:
    info = get_dataset("heart-disease")
    config = make_config(
        federation_id="f",
        model=info.model_spec,
        data=info.schema,
        method=method,
        training=TrainingConfig(class_weighting=weighting),  # type: ignore[arg-type]
        epsilon=epsilon,
    )
    return {**config, "coordinator": KEYS}


def test_class_weighting_is_parsed_from_the_command_line() -> None:
    assert parse_class_weighting(None) == "none"
    assert parse_class_weighting("Balanced") == "balanced"
    assert parse_class_weighting("1,4") == [1.0, 4.0]
    with pytest.raises(UsageError, match="--class-weighting"):
        parse_class_weighting("heavy")


def test_balanced_weighting_under_dp_plans_the_label_count_release() -> None:
    config = parse_config(_config("balanced", epsilon=3.0), where="test")
    assert config.training.class_weighting == "balanced"
    assert config.privacy is not None
    assert config.privacy.label_count_noise == LABEL_COUNT_NOISE
    # Without DP, or with public weights, or a method that never trains: nothing released.
    assert parse_config(_config("balanced", epsilon=None), where="t").privacy is None
    public = parse_config(_config([1.0, 3.0], epsilon=3.0), where="t")
    assert public.privacy is not None and public.privacy.label_count_noise is None
    majority = parse_config(_config("balanced", epsilon=3.0, method="majority"), where="t")
    assert majority.privacy is not None and majority.privacy.label_count_noise is None


def test_a_config_whose_policy_hides_the_release_is_refused() -> None:
    config = _config("balanced", epsilon=3.0)
    config["privacy"] = {**config["privacy"], "label_count_noise": None}
    with pytest.raises(ConfigError, match="label-count release"):
        parse_config(config, where="federation.json")
    wrong = _config([1.0, 2.0, 3.0], epsilon=None)
    with pytest.raises(ConfigError, match="3 weights for 2 classes"):
        parse_config(wrong, where="federation.json")


def test_the_plan_keeps_release_plus_dp_sgd_within_the_target() -> None:
    base = dict(
        target_epsilon=3.0, delta=1e-5, planned_rounds=20, local_epochs=1, batch_size=16,
        max_grad_norm=1.0,
    )  # fmt: skip
    plain = plan_round(PrivacyPolicy(**base), dataset_size=199)
    policy = PrivacyPolicy(**base, label_count_noise=LABEL_COUNT_NOISE)
    plan = plan_round(policy, dataset_size=199)
    history = [
        *policy.release_history(),
        (plan.noise_multiplier, plan.sample_rate, 20 * plan.steps_per_round),
    ]
    composed = epsilon(history, delta=1e-5, mechanism="rdp")
    # More noise than DP-SGD alone needs, so that both together land at (not over) the target.
    assert plan.noise_multiplier > plain.noise_multiplier
    assert plan.planned_epsilon == pytest.approx(composed)
    assert 3.0 - 0.011 <= composed <= 3.0
    # Without the release in the plan, the same history would cross the target.
    alone = [(plain.noise_multiplier, plain.sample_rate, 20 * plain.steps_per_round)]
    assert epsilon([*policy.release_history(), *alone], delta=1e-5, mechanism="rdp") > 3.0
    # dp-accounting composes the q = 1 Gaussian step the same way (independent check).
    assert independent_epsilon(history, delta=1e-5).rdp_integer == pytest.approx(composed, abs=0.02)


def test_validation_split_is_stratified_seeded_and_keeps_a_rare_class() -> None:
    y = np.array([0] * 90 + [1] * 6 + [2] * 1)
    idx = validation_split(y, seed=7)
    assert np.array_equal(idx, validation_split(y, seed=7))
    assert not np.array_equal(idx, validation_split(y, seed=8))
    counts = np.bincount(y[idx], minlength=3)
    assert counts.tolist() == [22, 2, 0]  # 25% of each class; a singleton stays in training
    assert len(set(idx.tolist())) == len(idx) and idx.max() < len(y)
