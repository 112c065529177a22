"""The pre-round gate: refuse the round that would cross the budget, never mutate."""

from __future__ import annotations

import pytest

from privacy.accountant import SiteAccountant
from privacy.budget import budget_status, check_round
from privacy.errors import BudgetExceededError, PolicyError
from privacy.policy import PrivacyPolicy, plan_round


@pytest.fixture(scope="module")
def setting():
    policy = PrivacyPolicy(
        target_epsilon=3.0,
        delta=1e-5,
        planned_rounds=6,
        local_epochs=1,
        batch_size=4,
        max_grad_norm=1.0,
    )
    return policy, plan_round(policy, dataset_size=200)


def test_gate_allows_exactly_the_planned_rounds_then_refuses(setting):
    policy, plan = setting
    acc = SiteAccountant(mechanism="rdp")
    allowed = []
    for r in range(1, 10):
        try:
            eps_after = check_round(acc, plan, policy, round=r)
        except BudgetExceededError as err:
            refused = err
            break
        acc.extend(plan.round_history())  # what "training" would record
        assert acc.epsilon(delta=policy.delta) == pytest.approx(eps_after, abs=1e-12)
        allowed.append(r)
    assert allowed == list(range(1, policy.planned_rounds + 1))
    assert acc.epsilon(delta=policy.delta) <= policy.target_epsilon
    # The refusal says where we are, where we would be, the target, and what to do.
    state_before = acc.state_dict()
    assert refused.epsilon_after > policy.target_epsilon >= refused.epsilon_now
    msg = str(refused)
    assert f"{refused.epsilon_now:.4f}" in msg and f"{refused.epsilon_after:.4f}" in msg
    assert "3.0000" in msg and "round 7" in msg
    assert refused.hint and "budget" in refused.hint
    assert acc.state_dict() == state_before  # the accountant is unchanged by the refusal


def test_gate_refuses_a_round_that_would_cross_midway(setting):
    policy, plan = setting
    # A site that already spent most of its budget (e.g. under another plan) is refused.
    acc = SiteAccountant(mechanism="rdp", history=[(0.6, 0.02, 300)])
    before = acc.history
    with pytest.raises(BudgetExceededError):
        check_round(acc, plan, policy)
    assert acc.history == before


def test_gate_rejects_inconsistent_inputs(setting):
    policy, plan = setting
    with pytest.raises(PolicyError):
        check_round(SiteAccountant(mechanism="prv"), plan, policy)
    other = policy.model_copy(update={"max_grad_norm": 2.0})
    with pytest.raises(PolicyError):
        check_round(SiteAccountant(mechanism="rdp"), plan, other)


def test_budget_status(setting):
    policy, plan = setting
    acc = SiteAccountant(mechanism="rdp", history=plan.round_history())
    status = budget_status(acc, policy)
    assert 0 < status.epsilon_spent < policy.target_epsilon
    assert status.remaining == pytest.approx(policy.target_epsilon - status.epsilon_spent)
