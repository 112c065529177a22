"""Epsilon from a history: golden numbers, composition across rounds, fail-closed, monotonicity."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy import analysis
from privacy.accountant import SiteAccountant
from privacy.errors import AccountingError

DELTA = 1e-5

# (history, Opacus RDP, Opacus PRV) at delta=1e-5; secagg-and-dp.md B2 (RAN) and Opacus's own
# accountants_test.py value for sigma=1.5, q=0.04, 2250 steps.
GOLDEN = [
    ([(1.0, 0.01, 1000)], 2.1014, 1.8384),
    ([(1.1, 256 / 60000, 14100)], 2.6003, 2.3953),
    ([(0.8, 0.05, 300)], 10.4397, 9.3208),
    ([(5.0, 1.0, 50)], 7.0774, 6.5833),
    ([(1.0, 0.02, 400), (1.2, 0.01, 600), (0.9, 0.02, 200)], 3.9453, 3.4970),
]


@pytest.mark.parametrize(("history", "rdp", "prv"), GOLDEN)
def test_golden_epsilons(history, rdp, prv):
    assert analysis.epsilon(history, delta=DELTA, mechanism="rdp") == pytest.approx(rdp, abs=1e-4)
    assert analysis.epsilon(history, delta=DELTA, mechanism="prv") == pytest.approx(prv, abs=1e-4)


def test_opacus_published_value():
    eps, _ = analysis.rdp_epsilon([(1.5, 0.04, 2250)], delta=DELTA)
    assert eps == pytest.approx(7.32911117143, abs=1e-9)


def test_equals_opacus_accountant_bit_for_bit():
    from opacus.accountants import PRVAccountant, RDPAccountant

    history = [(1.0, 0.02, 400), (1.2, 0.01, 600), (0.9, 0.02, 200)]
    for cls, mech in ((RDPAccountant, "rdp"), (PRVAccountant, "prv")):
        acc = cls()
        acc.history = list(history)
        assert analysis.epsilon(history, delta=DELTA, mechanism=mech) == acc.get_epsilon(DELTA)


def test_twenty_rounds_report_the_composed_epsilon_not_the_last_round():
    # B5: 20 rounds x 50 steps, q=0.02, sigma=1.0 -> 4.3242 composed; one round alone 1.6073.
    acc = SiteAccountant(mechanism="rdp")
    per_round = []
    for _ in range(20):
        acc.extend([(1.0, 0.02, 50)])
        per_round.append(acc.epsilon(delta=DELTA))
    assert acc.history == [(1.0, 0.02, 1000)]
    assert per_round[0] == pytest.approx(1.6073, abs=1e-4)
    assert per_round[-1] == pytest.approx(4.3242, abs=1e-4)
    assert per_round == sorted(per_round)
    fresh = SiteAccountant(mechanism="rdp", history=[(1.0, 0.02, 50)])
    assert fresh.epsilon(delta=DELTA) < per_round[-1] / 2.5  # the ~3x under-report


def test_merge_is_composition_neutral():
    split = [(1.0, 0.02, 50)] * 20
    assert analysis.merge_history(split) == [(1.0, 0.02, 1000)]
    assert analysis.epsilon(split, delta=DELTA, mechanism="rdp") == analysis.epsilon(
        [(1.0, 0.02, 1000)], delta=DELTA, mechanism="rdp"
    )


def test_json_round_trip_lists_are_accepted():
    assert analysis.merge_history([[1.0, 0.02, 10], [1.0, 0.02, 5]]) == [(1.0, 0.02, 15)]


def test_empty_history_spends_nothing():
    assert analysis.epsilon([], delta=DELTA, mechanism="rdp") == 0.0
    assert analysis.epsilon([], delta=DELTA, mechanism="prv") == 0.0


@pytest.mark.parametrize(
    "bad",
    [
        [(0.0, 0.02, 10)],  # no noise
        [(float("nan"), 0.02, 10)],
        [(1.0, 0.0, 10)],
        [(1.0, 1.5, 10)],
        [(1.0, 0.02, 0)],
        [(1.0, 0.02, 2.5)],
        [(1.0, 0.02)],
        [(1.0, 0.02, True)],
    ],
)
def test_malformed_histories_fail_closed(bad):
    with pytest.raises(AccountingError):
        analysis.epsilon(bad, delta=DELTA, mechanism="rdp")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.1])
def test_check_epsilon_fails_closed(value):
    with pytest.raises(AccountingError):
        analysis.check_epsilon(value)


def test_nan_from_rdp_fails_closed(monkeypatch):
    from opacus.accountants.analysis import rdp as opacus_rdp

    monkeypatch.setattr(opacus_rdp, "get_privacy_spent", lambda **_: (math.nan, math.nan))
    with pytest.raises(AccountingError, match="fail closed"):
        analysis.epsilon([(1.0, 0.02, 10)], delta=DELTA, mechanism="rdp")


def test_negative_from_prv_fails_closed(monkeypatch):
    from opacus.accountants.prv import PRVAccountant

    monkeypatch.setattr(PRVAccountant, "get_epsilon", lambda self, **_: -0.25)
    with pytest.raises(AccountingError):
        analysis.epsilon([(1.0, 0.02, 10)], delta=DELTA, mechanism="prv")


def test_prv_exception_becomes_accounting_error(monkeypatch):
    from opacus.accountants.prv import PRVAccountant

    def boom(self, **_):
        raise ValueError("Cannot compute epsilon")

    monkeypatch.setattr(PRVAccountant, "get_epsilon", boom)
    with pytest.raises(AccountingError, match="PRV") as info:
        analysis.epsilon([(1.0, 0.02, 10)], delta=DELTA, mechanism="prv")
    assert "rdp" in (info.value.hint or "")


def test_unknown_mechanism_and_bad_delta():
    with pytest.raises(AccountingError):
        analysis.epsilon([(1.0, 0.02, 10)], delta=DELTA, mechanism="gdp")  # type: ignore[arg-type]
    with pytest.raises(AccountingError):
        analysis.epsilon([(1.0, 0.02, 10)], delta=1.0, mechanism="rdp")


# Less noise, more sampling or more steps never cost less budget (the PySyft#6914 oracle).
sigmas = st.floats(min_value=0.6, max_value=4.0)
rates = st.floats(min_value=1e-3, max_value=0.3)
steps = st.integers(min_value=1, max_value=3000)


@settings(derandomize=True, deadline=None, max_examples=10)
@given(s1=sigmas, s2=sigmas, q=rates, n=steps)
def test_rdp_monotone_in_sigma(s1, s2, q, n):
    lo, hi = sorted((s1, s2))
    assert analysis.epsilon([(lo, q, n)], delta=DELTA, mechanism="rdp") >= analysis.epsilon(
        [(hi, q, n)], delta=DELTA, mechanism="rdp"
    )


@settings(derandomize=True, deadline=None, max_examples=10)
@given(s=sigmas, q1=rates, q2=rates, n=steps)
def test_rdp_monotone_in_sample_rate(s, q1, q2, n):
    lo, hi = sorted((q1, q2))
    assert analysis.epsilon([(s, lo, n)], delta=DELTA, mechanism="rdp") <= analysis.epsilon(
        [(s, hi, n)], delta=DELTA, mechanism="rdp"
    )


@settings(derandomize=True, deadline=None, max_examples=10)
@given(s=sigmas, q=rates, n1=steps, n2=steps)
def test_rdp_monotone_in_steps(s, q, n1, n2):
    lo, hi = sorted((n1, n2))
    assert analysis.epsilon([(s, q, lo)], delta=DELTA, mechanism="rdp") <= analysis.epsilon(
        [(s, q, hi)], delta=DELTA, mechanism="rdp"
    )


@settings(derandomize=True, deadline=None, max_examples=4)
@given(
    s=st.floats(min_value=0.7, max_value=2.0),
    q=st.floats(min_value=0.005, max_value=0.1),
    n=st.integers(min_value=10, max_value=500),
    factor=st.floats(min_value=1.05, max_value=2.0),
)
def test_prv_monotone(s, q, n, factor):
    # PRV is a numerical upper bound (eps_error=0.01); compare clearly separated settings.
    base = analysis.epsilon([(s, q, n)], delta=DELTA, mechanism="prv")
    assert analysis.epsilon([(s / factor, q, n)], delta=DELTA, mechanism="prv") >= base
    assert analysis.epsilon([(s, min(1.0, q * factor), n)], delta=DELTA, mechanism="prv") >= base
    assert analysis.epsilon([(s, q, int(n * factor) + 1)], delta=DELTA, mechanism="prv") >= base
