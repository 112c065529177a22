"""Pure privacy math: epsilon from a DP-SGD history of ``(noise_multiplier, sample_rate, steps)``.

A history is exactly what Opacus's accountants record: one triple per run of consecutive
optimizer steps with the same noise multiplier and sample rate (``opacus/accountants/rdp.py``).
Every step is a Poisson-subsampled Gaussian mechanism under the add/remove-one neighbouring
relation; composing all of them gives the site's record-level (epsilon, delta).

- ``rdp``: Renyi DP of the sampled Gaussian mechanism (Mironov, Talwar, Zhang 2019,
  arXiv 1908.10530, §3.3), converted to (epsilon, delta) with Balle et al. 2020
  (arXiv 1905.09982, Thm 21) over Opacus's order grid.
- ``prv``: numerical composition of privacy-loss random variables (Gopi, Lee, Wutschitz 2021,
  arXiv 2106.02848); Opacus returns the upper end of its error interval, which is what we keep.

Both are computed by Opacus's own analysis code so the numbers are identical to what
``PrivacyEngine.accountant.get_epsilon`` would print. Nothing here has state; the accountant and
the auditor both call these functions. Any NaN, infinite or negative result raises
``AccountingError`` instead of being returned (Opacus issues #585, #591, #601: fail closed).

>>> round(epsilon([(1.0, 0.02, 1000)], delta=1e-5, mechanism="rdp"), 4)
4.3242
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Literal

import numpy as np

from privacy.errors import AccountingError

Mechanism = Literal["rdp", "prv"]
MECHANISMS: tuple[Mechanism, ...] = ("rdp", "prv")

Triple = tuple[float, float, int]
"""``(noise_multiplier, sample_rate, steps)``, the unit of a history."""

# The RDP order grid Opacus uses (RDPAccountant.DEFAULT_ALPHAS): 1.1..10.9 by 0.1, then 12..63.
# Spelled out here so the independent check can use the same grid without importing Opacus.
RDP_ORDERS: tuple[float, ...] = tuple(1 + x / 10.0 for x in range(1, 100)) + tuple(
    float(a) for a in range(12, 64)
)

INTEGER_RDP_ORDERS: tuple[float, ...] = tuple(a for a in RDP_ORDERS if a.is_integer())
"""The integer orders of the grid, where RDP has an exact closed form in both libraries."""

PRV_EPS_ERROR = 0.01
"""Opacus's default PRV epsilon error; ``prv`` returns the upper bound of this interval."""


def validate_history(history: Iterable[Sequence[float | int]]) -> list[Triple]:
    """Return the history as a list of checked ``(sigma, q, steps)`` tuples.

    Accepts lists as well as tuples (a JSON round-trip turns tuples into lists, B5).
    Raises ``AccountingError`` on anything a real DP-SGD run cannot produce: sigma <= 0 or not
    finite (no noise means no guarantee), q outside (0, 1], steps not a positive integer.
    """
    out: list[Triple] = []
    for i, item in enumerate(history):
        try:
            sigma_raw, q_raw, steps_raw = item
        except (TypeError, ValueError) as exc:
            raise AccountingError(f"history entry {i} is not a (sigma, q, steps) triple") from exc
        if isinstance(steps_raw, bool) or not isinstance(steps_raw, int | float):
            raise AccountingError(f"history entry {i}: steps must be an integer, got {steps_raw!r}")
        if isinstance(steps_raw, float) and not steps_raw.is_integer():
            raise AccountingError(f"history entry {i}: steps must be an integer, got {steps_raw!r}")
        sigma, q, steps = float(sigma_raw), float(q_raw), int(steps_raw)
        if not (math.isfinite(sigma) and sigma > 0):
            raise AccountingError(
                f"history entry {i}: noise multiplier {sigma!r} gives no privacy guarantee",
                hint="a noise multiplier must be a positive finite number",
            )
        if not (math.isfinite(q) and 0 < q <= 1):
            raise AccountingError(f"history entry {i}: sample rate {q!r} is not in (0, 1]")
        if steps <= 0:
            raise AccountingError(f"history entry {i}: steps {steps} must be positive")
        out.append((sigma, q, steps))
    return out


def merge_history(history: Iterable[Sequence[float | int]]) -> list[Triple]:
    """Merge consecutive entries with equal (sigma, q), summing their steps, as Opacus does.

    Composition is the same either way; merging keeps histories short (one triple per
    federation when nothing changes) and makes PRV/PLD composition fast.
    """
    merged: list[Triple] = []
    for sigma, q, steps in validate_history(history):
        if merged and merged[-1][0] == sigma and merged[-1][1] == q:
            merged[-1] = (sigma, q, merged[-1][2] + steps)
        else:
            merged.append((sigma, q, steps))
    return merged


def check_epsilon(value: float, *, what: str = "epsilon") -> float:
    """Return ``value`` as a float, or raise ``AccountingError`` if it is NaN, inf or negative."""
    try:
        eps = float(value)
    except (TypeError, ValueError) as exc:
        raise AccountingError(f"{what} is not a number: {value!r}") from exc
    if math.isnan(eps) or math.isinf(eps) or eps < 0:
        raise AccountingError(
            f"{what} came out as {eps!r}; refusing to use it (fail closed)",
            hint="re-run with accountant 'rdp', or report the history that produced it",
        )
    return eps


def _check_delta(delta: float) -> float:
    d = float(delta)
    if not (math.isfinite(d) and 0 < d < 1):
        raise AccountingError(f"delta must be in (0, 1), got {delta!r}")
    return d


@lru_cache(maxsize=4096)
def _rdp_per_step(q: float, sigma: float, orders: tuple[float, ...]) -> tuple[float, ...]:
    """Opacus's RDP curve of one sampled-Gaussian step, memoised.

    Every round re-checks the budget with the same (q, sigma); for large q Opacus's
    fractional-order series takes a second or more. ``compute_rdp`` returns exactly
    ``steps * curve(steps=1)``, so scaling the cached curve is the same arithmetic.
    """
    from opacus.accountants.analysis import rdp as opacus_rdp

    return tuple(opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(orders)))


def rdp_epsilon(
    history: Iterable[Sequence[float | int]],
    *,
    delta: float,
    orders: Sequence[float] | None = None,
) -> tuple[float, float]:
    """Return ``(epsilon, best_order)`` for the history with Opacus's RDP analysis.

    RDP of a composition is the sum of the RDP curves (Mironov 2017, Prop. 1), so each
    triple contributes ``steps * rdp(q, sigma)`` at every order. ``orders=None`` uses Opacus's
    own grid object, so the value is bit-for-bit what ``RDPAccountant.get_epsilon`` returns.
    """
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as opacus_rdp

    if orders is None:
        orders = RDPAccountant.DEFAULT_ALPHAS
    d = _check_delta(delta)
    merged = merge_history(history)
    if not merged:
        return 0.0, float("nan")
    total = None
    for sigma, q, steps in merged:
        curve = steps * np.asarray(_rdp_per_step(float(q), float(sigma), tuple(orders)))
        total = curve if total is None else total + curve
    with warnings.catch_warnings():
        # The "optimal order is the smallest/largest alpha" warning only means the bound could
        # be tighter with a wider grid; the value is still a valid upper bound.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        eps, best = opacus_rdp.get_privacy_spent(orders=list(orders), rdp=total, delta=d)
    return check_epsilon(eps, what="RDP epsilon"), float(best)


def prv_epsilon(
    history: Iterable[Sequence[float | int]],
    *,
    delta: float,
    eps_error: float = PRV_EPS_ERROR,
) -> float:
    """Return the PRV upper bound on epsilon for the history (Opacus ``PRVAccountant``)."""
    from opacus.accountants.prv import PRVAccountant

    d = _check_delta(delta)
    merged = merge_history(history)
    if not merged:
        return 0.0
    acc = PRVAccountant()
    acc.history = list(merged)
    try:
        # q = 1 makes log(1 - q) = -inf inside the PRV; numpy warns, the result is right.
        with np.errstate(divide="ignore"):
            eps = acc.get_epsilon(delta=d, eps_error=eps_error)
    except (ValueError, RuntimeError, FloatingPointError, OverflowError) as exc:
        raise AccountingError(
            f"the PRV accountant could not compute epsilon for this history: {exc}",
            hint="use accountant 'rdp' for this federation (Opacus issues #591, #601)",
        ) from exc
    return check_epsilon(eps, what="PRV epsilon")


def epsilon(
    history: Iterable[Sequence[float | int]], *, delta: float, mechanism: Mechanism
) -> float:
    """Return epsilon spent by ``history`` at ``delta`` with the named accountant.

    This is the one function the gate, the ledger and the auditor use, so all three agree.
    """
    if mechanism == "rdp":
        return rdp_epsilon(history, delta=delta)[0]
    if mechanism == "prv":
        return prv_epsilon(history, delta=delta)
    raise AccountingError(f"unknown accountant {mechanism!r}; expected one of {MECHANISMS}")


def total_steps(history: Iterable[Sequence[float | int]]) -> int:
    """Return the number of optimizer steps in a history (not the number of triples)."""
    return sum(steps for _, _, steps in validate_history(history))
