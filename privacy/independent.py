"""Epsilon recomputed with Google's ``dp-accounting``, independently of Opacus.

The auditor rebuilds the DP event of a site from its signed ledger alone and composes it with a
second implementation: ``ComposedDpEvent`` of ``SelfComposedDpEvent(PoissonSampledDpEvent(q,
GaussianDpEvent(sigma)), steps)`` per history triple, under the add/remove-one relation (the
only one under which dp-accounting supports Poisson sampling; it also avoids the replace-one
sensitivity bug, google/differential-privacy#378).

- RDP: ``dp_accounting.rdp.RdpAccountant``; by default on the same order grid as Opacus
  (``analysis.RDP_ORDERS``), so the two should agree to about 1e-4 when the optimum is inside
  the grid (secagg-and-dp.md B2/B6).
- PLD: ``dp_accounting.pld.PLDAccountant`` with pessimistic discretisation (an upper bound);
  Opacus's PRV upper bound should sit within about +0.01 of it.

This module never imports Opacus or torch.

>>> ind = independent_epsilon([(1.0, 0.02, 400), (1.2, 0.01, 600), (0.9, 0.02, 200)], delta=1e-5)
>>> round(ind.rdp, 4), round(ind.pld, 4)
(3.9453, 3.4868)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dp_accounting as dpa
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from privacy.analysis import RDP_ORDERS, Triple, check_epsilon, merge_history

PLD_DISCRETIZATION = 1e-4
"""dp-accounting's default PLD grid, used for the golden numbers in B2/B5/B6."""


@dataclass(frozen=True)
class IndependentEpsilon:
    """Epsilon of one history by dp-accounting's RDP and PLD accountants.

    ``rdp`` is the minimum over the order grid. At fractional orders dp-accounting 0.6's
    series can be conservative or fail for small sigma and large q (it logs
    "_compute_log_a_frac failed to converge" and drops the order), so its ``rdp`` may exceed
    Opacus's; Opacus's fractional values match numerical integration (tests). At integer
    orders both libraries use the exact binomial expansion, so ``rdp_integer`` (minimum over
    the integer orders of the grid) is the like-for-like implementation check.
    """

    rdp: float
    pld: float
    delta: float
    rdp_integer: float = math.inf
    rdp_orders_dropped: tuple[float, ...] = ()


def dp_event(history: Iterable[Sequence[float | int]]) -> dpa.DpEvent:
    """Return the dp-accounting event of a DP-SGD history (consecutive equal triples merged)."""
    return dpa.ComposedDpEvent(
        [
            dpa.SelfComposedDpEvent(
                dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)), int(steps)
            )
            for sigma, q, steps in merge_history(history)
        ]
    )


def rdp_epsilon(
    history: Iterable[Sequence[float | int]],
    *,
    delta: float,
    orders: Sequence[float] | None = RDP_ORDERS,
) -> float:
    """Return dp-accounting's RDP epsilon (``orders=None``: dp-accounting's own default grid)."""
    merged = merge_history(history)
    if not merged:
        return 0.0
    acc = RdpAccountant(orders=list(orders) if orders is not None else None)
    acc.compose(dp_event(merged))
    return check_epsilon(acc.get_epsilon(delta), what="dp-accounting RDP epsilon")


def rdp_epsilon_by_order(
    history: Iterable[Sequence[float | int]],
    *,
    delta: float,
    orders: Sequence[float] = RDP_ORDERS,
) -> dict[float, float]:
    """Return dp-accounting's epsilon at each RDP order separately (``inf`` where it failed).

    One single-order ``RdpAccountant`` per order, so only public API is used; the minimum over
    the finite values equals ``rdp_epsilon`` on the same grid.
    """
    merged = merge_history(history)
    event = dp_event(merged)
    out: dict[float, float] = {}
    for order in orders:
        acc = RdpAccountant(orders=[float(order)])
        acc.compose(event)
        out[float(order)] = float(acc.get_epsilon(delta)) if merged else 0.0
    return out


def pld_epsilon(
    history: Iterable[Sequence[float | int]],
    *,
    delta: float,
    value_discretization_interval: float = PLD_DISCRETIZATION,
) -> float:
    """Return dp-accounting's PLD epsilon (pessimistic, i.e. an upper bound)."""
    merged = merge_history(history)
    if not merged:
        return 0.0
    acc = PLDAccountant(value_discretization_interval=value_discretization_interval)
    acc.compose(dp_event(merged))
    return check_epsilon(acc.get_epsilon(delta), what="dp-accounting PLD epsilon")


def independent_epsilon(
    history: Iterable[Sequence[float | int]],
    *,
    delta: float,
    pld_discretization: float = PLD_DISCRETIZATION,
    rdp_orders: Sequence[float] | None = RDP_ORDERS,
) -> IndependentEpsilon:
    """Return both independent epsilons for one history (RDP evaluated order by order)."""
    merged = merge_history(history)
    by_order = rdp_epsilon_by_order(
        merged, delta=delta, orders=RDP_ORDERS if rdp_orders is None else rdp_orders
    )
    finite = {a: e for a, e in by_order.items() if math.isfinite(e)}
    dropped = tuple(a for a in by_order if a not in finite)
    rdp = min(finite.values(), default=math.inf) if merged else 0.0
    integer = [e for a, e in finite.items() if a.is_integer()]
    rdp_integer = min(integer, default=math.inf) if merged else 0.0
    return IndependentEpsilon(
        rdp=check_epsilon(max(0.0, rdp), what="dp-accounting RDP epsilon"),
        pld=pld_epsilon(merged, delta=delta, value_discretization_interval=pld_discretization),
        delta=delta,
        rdp_integer=max(0.0, rdp_integer),
        rdp_orders_dropped=dropped,
    )


def epsilon_by_round(
    rounds: Sequence[Sequence[Sequence[float | int]]],
    *,
    delta: float,
    pld_discretization: float = PLD_DISCRETIZATION,
) -> list[IndependentEpsilon]:
    """Return the composed independent epsilon after each round (prefix compositions).

    ``rounds[i]`` is the history that round ``i`` added; result ``i`` covers rounds ``0..i``.
    """
    out: list[IndependentEpsilon] = []
    prefix: list[Triple] = []
    for round_history in rounds:
        prefix = merge_history([*prefix, *round_history])
        out.append(independent_epsilon(prefix, delta=delta, pld_discretization=pld_discretization))
    return out
