"""SiteAccountant: history only, merged like Opacus, state as validated data."""

from __future__ import annotations

import json

import pytest

from privacy.accountant import ACCOUNTANT_SCHEMA, SiteAccountant
from privacy.errors import AccountingError, StateError


def test_step_and_extend_merge_like_opacus():
    from opacus.accountants import RDPAccountant

    ours, theirs = SiteAccountant(mechanism="rdp"), RDPAccountant()
    for sigma, q in [(1.0, 0.02)] * 3 + [(1.2, 0.02)] * 2 + [(1.0, 0.02)]:
        ours.step(noise_multiplier=sigma, sample_rate=q)
        theirs.step(noise_multiplier=sigma, sample_rate=q)
    assert ours.history == theirs.history == [(1.0, 0.02, 3), (1.2, 0.02, 2), (1.0, 0.02, 1)]
    assert ours.total_steps == 6
    assert ours.epsilon(delta=1e-5) == theirs.get_epsilon(1e-5)


def test_state_dict_is_a_tagged_json_copy():
    acc = SiteAccountant(mechanism="prv", history=[(1.0, 0.02, 50)])
    state = acc.state_dict()
    assert state == {"schema": ACCOUNTANT_SCHEMA, "mechanism": "prv", "history": [[1.0, 0.02, 50]]}
    state["history"].append([9.0, 0.5, 1])  # mutating the copy...
    acc.history.append((9.0, 0.5, 1))
    assert acc.history == [(1.0, 0.02, 50)]  # ...does not touch the accountant
    restored = SiteAccountant.from_state_dict(json.loads(json.dumps(acc.state_dict())))
    assert restored == acc
    assert restored.epsilon(delta=1e-5) == acc.epsilon(delta=1e-5)


@pytest.mark.parametrize(
    "state",
    [
        {"schema": "fedrema-accountant/0", "mechanism": "rdp", "history": []},
        {"schema": ACCOUNTANT_SCHEMA, "mechanism": "prv", "history": []},
        {"schema": ACCOUNTANT_SCHEMA, "mechanism": "rdp"},
        {"schema": ACCOUNTANT_SCHEMA, "mechanism": "rdp", "history": [[1.0, 0.02]]},
        {"schema": ACCOUNTANT_SCHEMA, "mechanism": "rdp", "history": [[0.0, 0.02, 1]]},
        {"schema": ACCOUNTANT_SCHEMA, "mechanism": "rdp", "history": [], "extra": 1},
        {"history": [], "mechanism": "rdp"},
        [],
    ],
)
def test_load_state_dict_validates_and_leaves_state_alone(state):
    acc = SiteAccountant(mechanism="rdp", history=[(1.0, 0.02, 5)])
    with pytest.raises(StateError):
        acc.load_state_dict(state)
    assert acc.history == [(1.0, 0.02, 5)]


def test_epsilon_if_does_not_mutate():
    acc = SiteAccountant(mechanism="rdp", history=[(1.0, 0.02, 50)])
    before = acc.epsilon(delta=1e-5)
    after = acc.epsilon_if([(1.0, 0.02, 50)], delta=1e-5)
    assert after > before
    assert acc.history == [(1.0, 0.02, 50)]


def test_bad_extend_changes_nothing():
    acc = SiteAccountant(mechanism="rdp", history=[(1.0, 0.02, 50)])
    with pytest.raises(AccountingError):
        acc.extend([(1.0, 0.02, 1), (float("nan"), 0.02, 1)])
    assert acc.history == [(1.0, 0.02, 50)]


def test_unknown_mechanism():
    with pytest.raises(StateError):
        SiteAccountant(mechanism="gdp")  # type: ignore[arg-type]
