"""The pre-round budget gate: refuse to train a round that would push epsilon past the target.

Call ``check_round`` *before* any training step of a round. It composes the persisted history
with the round plan's history and raises ``BudgetExceededError`` if the result would exceed
the target; it never mutates the accountant.

Tolerance. The planner (``policy.plan_round``) returns the upper end of Opacus's sigma
bisection, so after ``planned_rounds`` rounds the composed epsilon is at most the target
(typically 0-0.01 below it). The history then merges to exactly the triple the planner
evaluated, so the gate sees the same number. The gate allows ``GATE_TOLERANCE`` (1e-9,
absolute) above the target only to absorb floating-point reassociation when a history is
recomputed on another machine; the final epsilon can never exceed the target by more than
that.

>>> from privacy.accountant import SiteAccountant
>>> from privacy.policy import PrivacyPolicy, plan_round
>>> policy = PrivacyPolicy(target_epsilon=4.0, delta=1e-5, planned_rounds=2, local_epochs=1,
...                        batch_size=4, max_grad_norm=1.0)
>>> plan = plan_round(policy, dataset_size=200)
>>> acc = SiteAccountant(mechanism="rdp")
>>> check_round(acc, plan, policy) < 4.0
True
"""

from __future__ import annotations

from dataclasses import dataclass

from privacy.accountant import SiteAccountant
from privacy.errors import BudgetExceededError, PolicyError
from privacy.policy import PrivacyPolicy, RoundPlan

GATE_TOLERANCE = 1e-9
"""Absolute slack above the target epsilon allowed by the gate (floating-point noise only)."""


@dataclass(frozen=True)
class BudgetStatus:
    """Where a site stands against its budget (for ``status`` and the report)."""

    epsilon_spent: float
    target_epsilon: float
    delta: float
    accountant: str

    @property
    def remaining(self) -> float:
        """Epsilon left before the target (never negative)."""
        return max(0.0, self.target_epsilon - self.epsilon_spent)


def _check_consistent(accountant: SiteAccountant, plan: RoundPlan, policy: PrivacyPolicy) -> None:
    problems = []
    if accountant.mechanism != policy.accountant:
        problems.append(
            f"accountant is {accountant.mechanism!r}, policy says {policy.accountant!r}"
        )
    if plan.accountant != policy.accountant:
        problems.append(f"plan uses {plan.accountant!r}, policy says {policy.accountant!r}")
    if plan.delta != policy.delta or plan.target_epsilon != policy.target_epsilon:
        problems.append("plan was made for another (epsilon, delta)")
    if plan.max_grad_norm != policy.max_grad_norm:
        problems.append("plan was made for another clipping norm")
    if problems:
        raise PolicyError(
            "round plan, accountant and policy disagree: " + "; ".join(problems),
            hint="re-plan with privacy.plan_round(policy, dataset_size=N)",
        )


def check_round(
    accountant: SiteAccountant,
    plan: RoundPlan,
    policy: PrivacyPolicy,
    *,
    round: int | None = None,
) -> float:
    """Return epsilon after one more round of ``plan``, or raise ``BudgetExceededError``.

    The accountant is left unchanged either way; record the round only after it ran
    (``privacy.engine``) and with what actually ran, not with the plan.
    """
    _check_consistent(accountant, plan, policy)
    eps_after = accountant.epsilon_if(plan.round_history(), delta=policy.delta)
    if eps_after > policy.target_epsilon + GATE_TOLERANCE:
        raise BudgetExceededError(
            epsilon_now=accountant.epsilon(delta=policy.delta),
            epsilon_after=eps_after,
            target_epsilon=policy.target_epsilon,
            delta=policy.delta,
            round=round,
        )
    return eps_after


def budget_status(accountant: SiteAccountant, policy: PrivacyPolicy) -> BudgetStatus:
    """Return the epsilon spent so far against the policy's target."""
    return BudgetStatus(
        epsilon_spent=accountant.epsilon(delta=policy.delta),
        target_epsilon=policy.target_epsilon,
        delta=policy.delta,
        accountant=accountant.mechanism,
    )
