"""The policy model and the per-site plan: Opacus conventions, determinism, never overshooting."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from privacy import analysis
from privacy.accountant import SiteAccountant
from privacy.errors import PolicyError
from privacy.policy import PrivacyPolicy, RoundPlan, opacus_sampling, plan_round


def make_policy(**overrides) -> PrivacyPolicy:
    base = dict(
        target_epsilon=4.0,
        delta=1e-5,
        accountant="rdp",
        max_grad_norm=1.0,
        planned_rounds=20,
        local_epochs=1,
        batch_size=4,
    )
    base.update(overrides)
    return PrivacyPolicy(**base)


def test_policy_is_frozen_json_and_validated():
    p = make_policy()
    data = json.loads(json.dumps(p.model_dump(mode="json")))
    assert PrivacyPolicy.model_validate(data) == p
    with pytest.raises(ValidationError):
        p.target_epsilon = 3.0  # type: ignore[misc]
    for bad in (
        {"target_epsilon": 0},
        {"target_epsilon": -1},
        {"target_epsilon": math.inf},
        {"delta": 0},
        {"delta": 1},
        {"max_grad_norm": 0},
        {"planned_rounds": 0},
        {"batch_size": 0},
        {"accountant": "gdp"},
        {"grad_sample_mode": "ew"},
        {"surprise": 1},
    ):
        with pytest.raises(ValidationError):
            make_policy(**bad)


def test_plan_b5_numbers():
    plan = plan_round(make_policy(), dataset_size=200)
    assert (plan.loader_batches, plan.sample_rate, plan.steps_per_round) == (50, 0.02, 50)
    assert plan.expected_batch_size == 4
    assert plan.round_history() == [(plan.noise_multiplier, 0.02, 50)]
    assert plan.planned_epsilon <= 4.0
    assert plan.planned_epsilon >= 4.0 - 0.01  # Opacus bisection precision
    assert plan == plan_round(make_policy(), dataset_size=200)  # deterministic
    assert RoundPlan.model_validate(plan.model_dump(mode="json")) == plan


def test_plan_reproduces_opacus_float_quirk():
    # ceil(369/4) = 93 batches, but int(1 / (1/93)) == 92: Opacus runs 92 steps and records
    # q = 1/92. The plan must equal what Opacus records (checked against Opacus in test_engine).
    assert opacus_sampling(dataset_size=369, batch_size=4) == (93, 1 / 93, 92, 1 / 92)
    plan = plan_round(make_policy(local_epochs=2), dataset_size=369)
    assert plan.sample_rate == 1 / 92 and plan.steps_per_epoch == 92 and plan.steps_per_round == 184
    assert plan.poisson_rate == 1 / 93


def test_batch_larger_than_dataset():
    plan = plan_round(make_policy(batch_size=64, target_epsilon=8.0, delta=1e-3), dataset_size=20)
    assert plan.sample_rate == 1.0 and plan.steps_per_epoch == 1


def test_delta_must_be_below_one_over_n():
    with pytest.raises(PolicyError, match="1/N"):
        plan_round(make_policy(delta=1e-2), dataset_size=200)


def test_unreachable_budget_is_a_policy_error():
    with pytest.raises(PolicyError):
        plan_round(make_policy(target_epsilon=1e-4, planned_rounds=1000), dataset_size=200)


@settings(derandomize=True, deadline=None, max_examples=6)
@given(
    target=st.floats(min_value=0.5, max_value=10.0),
    n=st.integers(min_value=200, max_value=5000),
    batch=st.integers(min_value=4, max_value=64),
    rounds=st.integers(min_value=1, max_value=30),
    epochs=st.integers(min_value=1, max_value=3),
)
def test_planned_sigma_never_overshoots_after_planned_rounds(target, n, batch, rounds, epochs):
    policy = make_policy(
        target_epsilon=target, planned_rounds=rounds, local_epochs=epochs, batch_size=batch
    )
    plan = plan_round(policy, dataset_size=n)
    acc = SiteAccountant(mechanism="rdp")
    for _ in range(rounds):
        acc.extend(plan.round_history())
    assert acc.epsilon(delta=policy.delta) <= target
    assert acc.total_steps == plan.total_planned_steps()


@pytest.mark.parametrize("n", [200, 369])
def test_prv_plan_never_overshoots(n):
    policy = make_policy(accountant="prv", target_epsilon=3.0, planned_rounds=5)
    plan = plan_round(policy, dataset_size=n)
    eps = analysis.epsilon(plan.round_history() * 5, delta=policy.delta, mechanism="prv")
    assert eps <= 3.0
    assert eps == plan.planned_epsilon


def test_each_model_kind_gets_the_fastest_correct_mode_and_refused_modes_stay_refused(
    monkeypatch: pytest.MonkeyPatch,
):
    """The per-kind choice (measured in benchmarks/dp.py, docs/performance.md) reaches the
    signed policy a federation is created with; ew and functorch stay refused, and why."""
    from typing import get_args

    from fedrema_cli.config import make_config
    from fedrema_cli.data.tables import ImageSchema
    from fedrema_cli.learning.modelspec import ModelSpec
    from privacy.engine import _MODE_REFUSALS, SUPPORTED_GRAD_SAMPLE_MODES
    from privacy.policy import GRAD_SAMPLE_MODE_BY_KIND, grad_sample_mode_for

    kinds = get_args(ModelSpec.model_fields["kind"].annotation)
    assert set(GRAD_SAMPLE_MODE_BY_KIND) == set(kinds)  # every kind has an explicit choice
    assert dict(GRAD_SAMPLE_MODE_BY_KIND) == {"mlp": "hooks", "cnn": "hooks"}
    assert set(GRAD_SAMPLE_MODE_BY_KIND.values()) <= set(SUPPORTED_GRAD_SAMPLE_MODES)
    for mode in ("ew", "functorch"):
        assert mode not in SUPPORTED_GRAD_SAMPLE_MODES
        assert "empty" in _MODE_REFUSALS[mode]  # the reason: empty Poisson batches crash it
        with pytest.raises(ValidationError):
            make_policy(grad_sample_mode=mode)

    cnn = ModelSpec(kind="cnn", num_classes=2, input_shape=(1, 8, 8), channels=(4,))
    data = ImageSchema(input_shape=(1, 8, 8), classes=(0, 1))
    config = make_config(federation_id="f", model=cnn, data=data, epsilon=3.0)
    assert config["privacy"]["grad_sample_mode"] == grad_sample_mode_for("cnn") == "hooks"
    # The table is what decides (not a default that happens to agree): change it, and a new
    # federation's signed policy follows.
    monkeypatch.setattr("privacy.policy.GRAD_SAMPLE_MODE_BY_KIND", {"cnn": "ghost"})
    config = make_config(federation_id="f", model=cnn, data=data, epsilon=3.0)
    assert config["privacy"]["grad_sample_mode"] == "ghost"
