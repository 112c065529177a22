"""The federation's privacy policy and the per-site plan derived from it.

The policy is federation-wide and lives in the signed federation config. Each site turns it
into a ``RoundPlan`` from its own dataset size: the sample rate and steps Opacus will record,
and one noise multiplier planned once for the whole federation (``planned_rounds`` rounds), so
that the composed record-level epsilon after the last planned round is at most the target.

Opacus conventions reproduced exactly (``opacus/privacy_engine.py``, ``opacus/data_loader.py``):

- the user's loader has ``L = ceil(N / batch_size)`` batches; the Poisson loader samples each
  record with probability ``1/L`` and yields ``int(1 / (1/L))`` batches per epoch;
- the accountant then records ``q = 1 / len(poisson_loader)``. For most ``L`` this is ``1/L``,
  but floating point makes ``int(1/(1/L)) == L - 1`` for some ``L`` (93, 99, 105, ...); Opacus
  then runs ``L - 1`` steps and records ``q = 1/(L-1)``, slightly *above* the true sampling rate
  (conservative). The plan uses the recorded values so it equals the Opacus history.

>>> policy = PrivacyPolicy(target_epsilon=4.0, delta=1e-5, planned_rounds=20, local_epochs=1,
...                        batch_size=4, max_grad_norm=1.0)
>>> plan = plan_round(policy, dataset_size=200)
>>> (plan.sample_rate, plan.steps_per_round)
(0.02, 50)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from privacy import analysis
from privacy.analysis import Mechanism, Triple
from privacy.errors import PolicyError

POLICY_FORMAT = "fedrema-privacy-policy/1"

GradSampleMode = Literal["hooks", "ghost"]
"""Opacus per-sample-gradient modes accepted by the engine (measured in ``benchmarks/dp.py``).

Left out on purpose, because Poisson sampling produces empty batches on small datasets:
``ew`` (ExpandedWeights) crashes on any empty batch ("Batch size must be positive"), and
``functorch`` crashes on an empty batch through GroupNorm ("expected groups to be greater than
0") while also being ~2x slower than ``hooks``.
"""

DEFAULT_GRAD_SAMPLE_MODE: GradSampleMode = "hooks"
"""Fastest mode that is correct and survives empty batches on both benchmark models."""

GRAD_SAMPLE_MODE_BY_KIND: Mapping[str, GradSampleMode] = MappingProxyType(
    {
        # Measured in benchmarks/dp.py (docs/performance.md, "DP-SGD where compute matters"):
        # of the modes that are correct and survive empty Poisson batches (hooks, ghost),
        # hooks has the lower DP/non-DP step time at every MLP batch size tried ...
        "mlp": "hooks",
        # ... and on the CNN at 28x28 and 64x64, per step and for a whole round. ew is
        # faster on the 28x28 CNN step but crashes on empty batches: not a candidate.
        "cnn": "hooks",
    }
)
"""The per-sample-gradient mode a federation's policy gets for each model kind, at init."""


def grad_sample_mode_for(kind: str) -> GradSampleMode:
    """The fastest correct mode for a model kind (``ModelSpec.kind``); the default otherwise."""
    return GRAD_SAMPLE_MODE_BY_KIND.get(kind, DEFAULT_GRAD_SAMPLE_MODE)


PLANNER_EPSILON_TOLERANCE = 0.01
"""Bisection precision of Opacus's ``get_noise_multiplier``: the planned sigma's epsilon lies in
``[target - 0.01, target]``. The returned sigma is the upper end of the bisection interval, so
the planned epsilon never exceeds the target."""


class PrivacyPolicy(BaseModel):
    """Federation-wide DP-SGD policy (record-level, add/remove-one, Poisson sampling).

    Embedded in the signed federation config as ``policy.model_dump(mode="json")``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    format: Literal["fedrema-privacy-policy/1"] = POLICY_FORMAT
    target_epsilon: float = Field(gt=0, le=1000, description="record-level epsilon per site")
    delta: float = Field(gt=0, lt=1, description="record-level delta per site")
    accountant: Mechanism = "rdp"
    max_grad_norm: float = Field(gt=0, description="per-sample L2 clipping norm C")
    planned_rounds: int = Field(ge=1, le=100_000)
    local_epochs: int = Field(ge=1, le=10_000)
    batch_size: int = Field(ge=1, description="expected Poisson batch size")
    grad_sample_mode: GradSampleMode = DEFAULT_GRAD_SAMPLE_MODE
    label_count_noise: float | None = Field(
        default=None,
        gt=0,
        description="noise multiplier of a Gaussian release of each site's label counts "
        "(class weights) before its first round; None: no such release",
    )

    @field_validator("target_epsilon", "delta", "max_grad_norm")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    def release_history(self) -> list[Triple]:
        """What a site spends besides DP-SGD: the label-count release, one Gaussian step at
        q = 1 (L2 sensitivity 1 under add/remove-one), planned into the same budget."""
        if self.label_count_noise is None:
            return []
        return [(float(self.label_count_noise), 1.0, 1)]


class RoundPlan(BaseModel):
    """What one round of local DP-SGD will run at a site of ``dataset_size`` records.

    Deterministic: the same policy and dataset size always give the same plan.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset_size: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    loader_batches: int = Field(ge=1, description="ceil(N / batch_size): len() of a plain loader")
    poisson_rate: float = Field(gt=0, le=1, description="per-record inclusion probability 1/L")
    sample_rate: float = Field(gt=0, le=1, description="q recorded by the Opacus accountant")
    expected_batch_size: int = Field(ge=1, description="Opacus's int(N * q) gradient divisor")
    steps_per_epoch: int = Field(ge=1)
    local_epochs: int = Field(ge=1)
    steps_per_round: int = Field(ge=1)
    planned_rounds: int = Field(ge=1)
    noise_multiplier: float = Field(gt=0)
    max_grad_norm: float = Field(gt=0)
    accountant: Mechanism
    delta: float = Field(gt=0, lt=1)
    target_epsilon: float = Field(gt=0)
    planned_epsilon: float = Field(ge=0, description="epsilon after planned_rounds rounds")
    grad_sample_mode: GradSampleMode

    @model_validator(mode="after")
    def _consistent(self) -> RoundPlan:
        if self.steps_per_round != self.steps_per_epoch * self.local_epochs:
            raise ValueError("steps_per_round must equal steps_per_epoch * local_epochs")
        return self

    def round_history(self) -> list[Triple]:
        """Return the accountant history one round of this plan adds."""
        return [(self.noise_multiplier, self.sample_rate, self.steps_per_round)]

    def total_planned_steps(self) -> int:
        """Return the optimizer steps of the whole planned federation."""
        return self.planned_rounds * self.steps_per_round


def opacus_sampling(*, dataset_size: int, batch_size: int) -> tuple[int, float, int, float]:
    """Return ``(L, poisson_rate, steps_per_epoch, recorded_q)`` exactly as Opacus computes them.

    See the module docstring for why ``recorded_q`` can differ from ``poisson_rate``.
    """
    if dataset_size < 1 or batch_size < 1:
        raise PolicyError("dataset size and batch size must be positive")
    loader_batches = math.ceil(dataset_size / batch_size)
    poisson_rate = 1 / loader_batches
    steps_per_epoch = int(1 / poisson_rate)
    recorded_q = 1 / steps_per_epoch
    return loader_batches, poisson_rate, steps_per_epoch, recorded_q


@lru_cache(maxsize=256)
def _planned_sigma(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, mechanism: str
) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():
            # Large trial sigmas put RDP's optimum at the grid edge; harmless for the search.
            warnings.filterwarnings("ignore", message="Optimal order is the")
            sigma = get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=mechanism,
                epsilon_tolerance=PLANNER_EPSILON_TOLERANCE,
            )
    except ValueError as exc:
        raise PolicyError(
            f"no noise level reaches epsilon {target_epsilon} over {steps} steps "
            f"at q={sample_rate}",
            hint="raise the target epsilon, or plan fewer rounds/epochs or a larger batch size",
        ) from exc
    return float(sigma)


def plan_noise(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int, mechanism: Mechanism
) -> float:
    """Return the smallest noise multiplier (to 0.01 in epsilon) whose epsilon after ``steps``
    Poisson-sampled steps at ``sample_rate`` is at most ``target_epsilon``.

    Planned once for the whole federation (B5): one sigma for all ``planned_rounds`` rounds.
    """
    return _planned_sigma(
        float(target_epsilon), float(delta), float(sample_rate), int(steps), mechanism
    )


def plan_round(policy: PrivacyPolicy, *, dataset_size: int) -> RoundPlan:
    """Return the round plan of a site with ``dataset_size`` training records.

    Raises ``PolicyError`` when ``delta >= 1/N`` (a delta that large allows leaking a whole
    record; Dwork & Roth 2014 §2.3) or when no noise level reaches the target. Pure and
    cached: policy and plan are frozen.
    """
    return _plan_round(policy, int(dataset_size))


@lru_cache(maxsize=64)
def _plan_round(policy: PrivacyPolicy, dataset_size: int) -> RoundPlan:
    if dataset_size < 1:
        raise PolicyError("the training set is empty")
    if policy.delta >= 1 / dataset_size:
        raise PolicyError(
            f"delta={policy.delta:g} is not below 1/N = {1 / dataset_size:g} for this site",
            hint="the federation's delta must be much smaller than 1 / (records at any site)",
        )
    loader_batches, poisson_rate, steps_per_epoch, q = opacus_sampling(
        dataset_size=dataset_size, batch_size=policy.batch_size
    )
    steps_per_round = steps_per_epoch * policy.local_epochs
    total = steps_per_round * policy.planned_rounds
    sigma = plan_noise(
        target_epsilon=policy.target_epsilon,
        delta=policy.delta,
        sample_rate=q,
        steps=total,
        mechanism=policy.accountant,
    )
    prefix = policy.release_history()
    if prefix:
        sigma = _raise_for_prefix(sigma, prefix, policy, q, total)
    expected_batch_size = int(dataset_size * q)
    if expected_batch_size < 1:
        # Opacus divides the noisy gradient sum by int(N * q); 0 would divide by zero.
        raise PolicyError(
            f"expected batch size int({dataset_size} * {q:g}) is 0",
            hint="use a batch size of at least 2",
        )
    planned_eps = analysis.epsilon(
        [*prefix, (sigma, q, total)], delta=policy.delta, mechanism=policy.accountant
    )
    if planned_eps > policy.target_epsilon:
        # Cannot happen with Opacus's bisection (it returns the upper sigma); fail closed anyway.
        raise PolicyError(
            f"planned epsilon {planned_eps:.4f} exceeds the target {policy.target_epsilon}"
        )
    return RoundPlan(
        dataset_size=dataset_size,
        batch_size=policy.batch_size,
        loader_batches=loader_batches,
        poisson_rate=poisson_rate,
        sample_rate=q,
        expected_batch_size=expected_batch_size,
        steps_per_epoch=steps_per_epoch,
        local_epochs=policy.local_epochs,
        steps_per_round=steps_per_round,
        planned_rounds=policy.planned_rounds,
        noise_multiplier=sigma,
        max_grad_norm=policy.max_grad_norm,
        accountant=policy.accountant,
        delta=policy.delta,
        target_epsilon=policy.target_epsilon,
        planned_epsilon=planned_eps,
        grad_sample_mode=policy.grad_sample_mode,
    )


def _raise_for_prefix(
    sigma: float, prefix: list[Triple], policy: PrivacyPolicy, q: float, steps: int
) -> float:
    """The smallest sigma (to ``PLANNER_EPSILON_TOLERANCE`` in epsilon) at which ``prefix``
    composed with ``steps`` DP-SGD steps at ``q`` stays within the target.

    ``sigma`` (planned for DP-SGD alone) is a lower bound: adding the prefix only raises
    epsilon. Bisection like Opacus's, returning the upper end, so the plan never overshoots.
    """

    def eps(s: float) -> float:
        return analysis.epsilon(
            [*prefix, (s, q, steps)], delta=policy.delta, mechanism=policy.accountant
        )

    target = policy.target_epsilon
    if analysis.epsilon(prefix, delta=policy.delta, mechanism=policy.accountant) >= target:
        raise PolicyError(
            f"the label-count release alone spends epsilon {target} or more",
            hint="raise the target epsilon, or use --class-weighting none or explicit weights",
        )
    low, high = sigma, sigma
    while eps(high) > target:
        low, high = high, high * 1.5
    while high - low > 1e-4 and target - eps(high) > PLANNER_EPSILON_TOLERANCE:
        mid = (low + high) / 2
        if eps(mid) > target:
            low = mid
        else:
            high = mid
    return high
