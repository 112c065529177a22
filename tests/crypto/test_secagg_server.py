"""Coordinator functions: quorum at every barrier, refusal of bad messages, share checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from secagg_harness import expected_sum, make_ctx, random_inputs, run_round

from crypto.errors import (
    InsufficientSurvivors,
    InvalidShare,
    MalformedMessage,
    ParameterError,
)
from crypto.hazmat.shamir import PRIME, Share
from crypto.secagg import (
    KeyAdvert,
    MaskedInput,
    UnmaskRequest,
    finalize,
    fix_key_roster,
    fix_masking_roster,
    fix_survivors,
    route_ciphertexts,
)

CTX = make_ctx(5, 3, 12)
INPUTS = random_inputs(CTX, 1)
FULL = run_round(CTX, INPUTS)
ONE_DROP = run_round(CTX, INPUTS, {5: "after_share_keys"})


def _finalize(r, answers=None, masked=None):  # type: ignore[no-untyped-def]
    return finalize(
        r.ctx,
        r.key_roster,
        r.masking_roster,
        r.request,
        r.masked_inputs if masked is None else masked,
        r.answers if answers is None else answers,
    )


def test_sums_are_exact() -> None:
    np.testing.assert_array_equal(FULL.total, expected_sum(CTX, INPUTS, CTX.parties))
    np.testing.assert_array_equal(ONE_DROP.total, expected_sum(CTX, INPUTS, [1, 2, 3, 4]))
    assert ONE_DROP.request.dropped == (5,)


# --- fewer than t at each barrier ----------------------------------------------------------


def test_insufficient_survivors_at_every_barrier() -> None:
    r = FULL
    with pytest.raises(InsufficientSurvivors):
        fix_key_roster(CTX, r.key_roster.adverts[:2])
    with pytest.raises(InsufficientSurvivors):
        fix_masking_roster(CTX, r.key_roster, r.share_msgs[:2])
    with pytest.raises(InsufficientSurvivors):
        fix_survivors(CTX, r.masking_roster, r.masked_inputs[:2])
    with pytest.raises(InsufficientSurvivors):
        _finalize(r, answers=r.answers[:2])


@pytest.mark.parametrize("stage", ["before_advert", "after_advert", "after_share_keys"])
def test_round_with_too_many_dropouts_stops_cleanly(stage: str) -> None:
    with pytest.raises(InsufficientSurvivors):
        run_round(CTX, INPUTS, {4: stage, 5: stage, 3: stage})


def test_too_many_silent_survivors_gives_no_output() -> None:
    drops = {3: "after_masked_input", 4: "after_masked_input", 5: "after_masked_input"}
    with pytest.raises(InsufficientSurvivors):
        run_round(CTX, INPUTS, drops)


# --- messages the coordinator must refuse --------------------------------------------------


def test_bad_adverts() -> None:
    adverts = list(FULL.key_roster.adverts)
    cases = {
        "round": [*adverts[:4], dataclasses.replace(adverts[4], round=CTX.round + 1)],
        "unknown": [*adverts, KeyAdvert(9, CTX.round, b"\x01" * 32, b"\x02" * 32)],
        "conflict": [*adverts, dataclasses.replace(adverts[4], c_pk=b"\x03" * 32)],
        "reuse": [*adverts[:4], dataclasses.replace(adverts[4], s_pk=adverts[0].c_pk)],
        "same-pair": [*adverts[:4], dataclasses.replace(adverts[4], s_pk=adverts[4].c_pk)],
        # Points of small order (RFC 7748: 0 and 1 among them): every exchange gives zero.
        "small-order-c": [*adverts[:4], dataclasses.replace(adverts[4], c_pk=bytes(32))],
        "small-order-s": [
            *adverts[:4],
            dataclasses.replace(adverts[4], s_pk=(1).to_bytes(32, "little")),
        ],
    }
    for name, bad in cases.items():
        with pytest.raises(MalformedMessage) as info:
            fix_key_roster(CTX, bad)
        assert info.value.party in (5, 9), name
    # An identical duplicate is harmless.
    assert fix_key_roster(CTX, [*adverts, adverts[0]]) == FULL.key_roster


def test_bad_share_messages() -> None:
    msgs = list(FULL.share_msgs)
    last = msgs[-1]
    missing = dict(last.ciphertexts)
    del missing[1]
    short = {**last.ciphertexts, 1: last.ciphertexts[1][:-1]}
    for bad in (
        dataclasses.replace(last, ciphertexts=missing),
        dataclasses.replace(last, ciphertexts=short),
    ):
        with pytest.raises(MalformedMessage) as info:
            fix_masking_roster(CTX, FULL.key_roster, [*msgs[:-1], bad])
        assert info.value.party == last.party


def test_routing() -> None:
    inbox = route_ciphertexts(FULL.masking_roster, FULL.share_msgs, 2)
    assert sorted(inbox) == [1, 3, 4, 5]
    assert inbox[4] == FULL.share_msgs[3].ciphertexts[2]
    with pytest.raises(ParameterError):
        route_ciphertexts(ONE_DROP.masking_roster, ONE_DROP.share_msgs, 9)
    with pytest.raises(MalformedMessage):
        route_ciphertexts(FULL.masking_roster, FULL.share_msgs[1:], 2)


@pytest.mark.parametrize(
    "vector",
    [
        np.zeros(CTX.params.dim + 1, dtype=np.uint32),
        np.zeros(CTX.params.dim - 1, dtype=np.uint32),
        np.zeros(CTX.params.dim, dtype=np.uint64),
    ],
    ids=["too-long", "too-short", "wrong-dtype"],
)
def test_masked_input_of_wrong_shape_is_refused(vector: np.ndarray) -> None:
    bad = MaskedInput(3, CTX.round, vector)
    masked = [m for m in FULL.masked_inputs if m.party != 3] + [bad]
    with pytest.raises(MalformedMessage) as info:
        fix_survivors(CTX, FULL.masking_roster, masked)
    assert info.value.party == 3
    with pytest.raises(MalformedMessage):
        _finalize(FULL, masked=masked)


def test_a_second_different_masked_input_is_refused() -> None:
    first = FULL.masked_inputs[0]
    second = MaskedInput(first.party, first.round, first.vector + np.uint32(1))
    with pytest.raises(MalformedMessage):
        fix_survivors(CTX, FULL.masking_roster, [*FULL.masked_inputs, second])
    same = MaskedInput.from_bytes(first.to_bytes())
    assert fix_survivors(CTX, FULL.masking_roster, [*FULL.masked_inputs, same]) == FULL.request


def test_masked_input_from_outside_u2_or_another_round_is_refused() -> None:
    late = ONE_DROP.masked_inputs[0]
    with pytest.raises(MalformedMessage):
        fix_survivors(
            CTX, ONE_DROP.masking_roster, [*ONE_DROP.masked_inputs, MaskedInput(9, 1, late.vector)]
        )
    with pytest.raises(MalformedMessage):
        fix_survivors(CTX, ONE_DROP.masking_roster, [dataclasses.replace(late, round=2)])


def test_inconsistent_request_or_missing_input() -> None:
    r = ONE_DROP
    overlap = UnmaskRequest(CTX.round, (1, 2, 3, 4, 5), (5,))
    with pytest.raises(ParameterError):
        finalize(CTX, r.key_roster, r.masking_roster, overlap, r.masked_inputs, r.answers)
    with pytest.raises(ParameterError):
        _finalize(r, masked=r.masked_inputs[1:])


def test_answer_that_does_not_follow_the_request_is_refused() -> None:
    r = ONE_DROP
    bad = dataclasses.replace(r.answers[0], key_shares={})
    with pytest.raises(MalformedMessage) as info:
        _finalize(r, answers=[bad, *r.answers[1:]])
    assert info.value.party == r.answers[0].party


# --- wrong shares: detected by the commitment / public key, recovered around if possible ----


def _tamper(answer, peer: int, kind: str):  # type: ignore[no-untyped-def]
    shares = dict(getattr(answer, kind))
    shares[peer] = Share(answer.party, (shares[peer].y + 1) % PRIME)
    return dataclasses.replace(answer, **{kind: shares})


@pytest.mark.parametrize("kind", ["self_seed_shares", "key_shares"])
def test_tampered_share_with_spare_answers_is_worked_around(kind: str) -> None:
    r = ONE_DROP  # 4 answers, t = 3: one wrong share can be left out
    peer = 1 if kind == "self_seed_shares" else 5
    answers = [_tamper(r.answers[0], peer, kind), *r.answers[1:]]
    np.testing.assert_array_equal(_finalize(r, answers=answers), r.total)


@pytest.mark.parametrize("kind", ["self_seed_shares", "key_shares"])
def test_tampered_share_without_spare_answers_is_detected(kind: str) -> None:
    r = ONE_DROP
    peer = 2 if kind == "self_seed_shares" else 5
    answers = [_tamper(r.answers[1], peer, kind), *r.answers[2:]]  # exactly t answers
    with pytest.raises(InvalidShare, match=f"party {peer}"):
        _finalize(r, answers=answers)


def test_two_tampered_shares_among_many_answers() -> None:
    ctx = make_ctx(8, 3, 5)
    inputs = random_inputs(ctx, 2)
    r = run_round(ctx, inputs, {8: "after_share_keys"})
    answers = list(r.answers)
    answers[0] = _tamper(answers[0], 4, "self_seed_shares")
    answers[1] = _tamper(answers[1], 4, "self_seed_shares")
    answers[2] = _tamper(answers[2], 8, "key_shares")
    np.testing.assert_array_equal(_finalize(r, answers=answers), r.total)
    np.testing.assert_array_equal(r.total, expected_sum(ctx, inputs, range(1, 8)))
