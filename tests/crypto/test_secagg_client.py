"""Client state machine: stage errors, every abort rule, the double-masking rule, persistence."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
from secagg_harness import DeterministicRandom, make_ctx, random_inputs, run_round

from crypto.errors import (
    DoubleRevealError,
    MalformedMessage,
    ParameterError,
    ProtocolAborted,
    StageError,
)
from crypto.secagg import (
    Aborted,
    AwaitingKeyRoster,
    Completed,
    KeyAdvert,
    KeyRoster,
    MaskingRoster,
    UnmaskRequest,
    fix_key_roster,
    fix_masking_roster,
    fix_survivors,
    load_client_state,
    route_ciphertexts,
    start_round,
)

CTX = make_ctx(4, 3, 8)
U = 1  # the site under test


def setup_round(ctx=CTX, seed: int = 0, keys=None) -> SimpleNamespace:  # type: ignore[no-untyped-def]
    """Run a round up to the unmask request; ``keys`` forces given (c_sk, s_sk) per party."""
    rng = DeterministicRandom(seed)
    if keys is None:
        started = {u: start_round(ctx, u, rng=rng)[0] for u in ctx.parties}
    else:
        started = {u: AwaitingKeyRoster(ctx, u, *keys[u]) for u in ctx.parties}
    roster = fix_key_roster(ctx, [s.advert() for s in started.values()])
    shared = {u: s.handle(roster, rng=rng) for u, s in started.items()}
    share_msgs = [m for _, m in shared.values()]
    masking = fix_masking_roster(ctx, roster, share_msgs)
    inputs = random_inputs(ctx, seed)
    inboxes = {u: route_ciphertexts(masking, share_msgs, u) for u in ctx.parties}
    masked = {u: s.handle(masking, inbox=inboxes[u], x=inputs[u]) for u, (s, _) in shared.items()}
    request = fix_survivors(ctx, masking, [m for _, m in masked.values()])
    return SimpleNamespace(
        started=started,
        roster=roster,
        shared={u: s for u, (s, _) in shared.items()},
        share_msgs=share_msgs,
        masking=masking,
        inputs=inputs,
        inboxes=inboxes,
        masked={u: s for u, (s, _) in masked.items()},
        request=request,
    )


R = setup_round()


def assert_aborted(result: tuple, fragment: str) -> None:
    state, message = result
    assert isinstance(state, Aborted) and state.is_aborted, state
    assert message is None
    assert fragment in state.reason, state.reason
    with pytest.raises(ProtocolAborted):
        state.handle(R.request)


# --- stage errors --------------------------------------------------------------------------


def test_wrong_message_type_raises_stage_error() -> None:
    completed, _ = R.masked[U].handle(R.request)
    masking_kwargs = {"inbox": R.inboxes[U], "x": R.inputs[U]}
    cases = [
        (R.started[U], [R.masking, R.request, R.share_msgs[0]], {}),
        (R.shared[U], [R.roster, R.request], masking_kwargs),
        (R.masked[U], [R.roster, R.masking], {}),
        (completed, [R.roster, R.masking], {}),
    ]
    for state, wrong, kwargs in cases:
        for message in wrong:
            with pytest.raises(StageError):
                state.handle(message, **kwargs)


def test_start_round_needs_an_enrolled_party() -> None:
    with pytest.raises(ParameterError):
        start_round(CTX, 9)
    a, b = start_round(CTX, 1)[1], start_round(CTX, 1)[1]
    assert a.c_pk != b.c_pk and a.s_pk != b.s_pk  # fresh keys every call


# --- Round 1 checks on the key roster ------------------------------------------------------


def _roster_with(adverts: list[KeyAdvert], round_: int = CTX.round) -> KeyRoster:
    return KeyRoster(round_, tuple(sorted(adverts, key=lambda a: a.party)))


def test_key_roster_aborts() -> None:
    adverts = list(R.roster.adverts)
    own = adverts[0]
    other_round = [dataclasses.replace(a, round=CTX.round + 1) for a in adverts]
    altered = [dataclasses.replace(own, c_pk=bytes([own.c_pk[0] ^ 1]) + own.c_pk[1:])]
    altered += adverts[1:]
    duplicate = [*adverts[:3], dataclasses.replace(adverts[3], s_pk=adverts[2].s_pk)]
    outsider = [*adverts[:3], KeyAdvert(9, CTX.round, b"\x09" * 32, b"\x0a" * 32)]
    state = R.started[U]
    assert_aborted(state.handle(_roster_with(other_round, CTX.round + 1)), "round")
    assert_aborted(state.handle(_roster_with(adverts[1:])), "own key advert")
    assert_aborted(state.handle(_roster_with(altered)), "own key advert")
    assert_aborted(state.handle(_roster_with(adverts[:2])), "fewer than t")
    assert_aborted(state.handle(_roster_with(duplicate)), "twice")
    assert_aborted(state.handle(_roster_with(outsider)), "outside the round")


def test_small_order_encryption_key_aborts() -> None:
    adverts = list(R.roster.adverts)
    adverts[1] = dataclasses.replace(adverts[1], c_pk=bytes(32))
    assert_aborted(R.started[U].handle(_roster_with(adverts)), "invalid encryption key")


# --- Round 2 checks on the masking roster and the routed ciphertexts -----------------------


def _masking(participants: tuple[int, ...], commitments=None) -> MaskingRoster:  # type: ignore[no-untyped-def]
    commitments = commitments or {p: R.masking.commitments[p] for p in participants}
    return MaskingRoster(CTX.round, participants, commitments)


def test_masking_roster_aborts() -> None:
    state, inbox, x = R.shared[U], R.inboxes[U], R.inputs[U]
    wrong = dict(R.masking.commitments)
    wrong[U] = bytes(32)
    other_round = dataclasses.replace(R.masking, round=CTX.round + 1)
    assert_aborted(state.handle(other_round, inbox=inbox, x=x), "round")
    assert_aborted(state.handle(_masking((2, 3, 4)), inbox=inbox, x=x), "not in the masking")
    assert_aborted(state.handle(_masking((1, 2)), inbox={2: inbox[2]}, x=x), "fewer than t")
    assert_aborted(
        state.handle(_masking((1, 2, 3, 4), wrong), inbox=inbox, x=x), "wrong commitment"
    )
    missing = {v: c for v, c in inbox.items() if v != 4}
    assert_aborted(state.handle(R.masking, inbox=missing, x=x), "do not match U2")
    assert_aborted(state.handle(R.masking, inbox={**inbox, 5: b"x"}, x=x), "do not match U2")


def test_tampered_ciphertext_aborts() -> None:
    inbox = dict(R.inboxes[U])
    blob = bytearray(inbox[3])
    blob[20] ^= 0x01
    inbox[3] = bytes(blob)
    result = R.shared[U].handle(R.masking, inbox=inbox, x=R.inputs[U])
    assert_aborted(result, "party 3 are invalid")


def test_ciphertexts_swapped_between_senders_abort() -> None:
    inbox = dict(R.inboxes[U])
    inbox[2], inbox[3] = inbox[3], inbox[2]
    assert_aborted(R.shared[U].handle(R.masking, inbox=inbox, x=R.inputs[U]), "invalid")


@pytest.mark.parametrize(
    "other_ctx",
    [
        dataclasses.replace(CTX, round=CTX.round + 1),
        dataclasses.replace(CTX, federation_id="other-federation"),
        dataclasses.replace(CTX, roster_hash=bytes(32)),
    ],
    ids=["other-round", "other-federation", "other-roster"],
)
def test_ciphertext_replayed_from_another_session_aborts(other_ctx) -> None:  # type: ignore[no-untyped-def]
    # Even with the *same* keys in both sessions (which honest sites never do), a
    # ciphertext from one session does not open in another: sid is in the key and the AAD.
    keys = {u: (bytes([u]) * 32, bytes([16 + u]) * 32) for u in CTX.parties}
    a = setup_round(CTX, seed=1, keys=keys)
    b = setup_round(other_ctx, seed=2, keys=keys)
    result = b.shared[U].handle(b.masking, inbox=a.inboxes[U], x=b.inputs[U])
    assert_aborted(result, "invalid")


def test_wrong_input_vector_raises() -> None:
    state, inbox = R.shared[U], R.inboxes[U]
    dim = CTX.params.dim
    for bad in [
        np.zeros(dim + 1, dtype=np.uint32),
        np.zeros(dim - 1, dtype=np.uint32),
        np.zeros(dim, dtype=np.uint64),
        np.zeros(dim, dtype=np.int32),
        [0] * dim,
    ]:
        with pytest.raises(ParameterError):
            state.handle(R.masking, inbox=inbox, x=bad)  # type: ignore[arg-type]


def test_masking_is_deterministic_and_does_not_touch_the_input() -> None:
    x = R.inputs[U].copy()
    x.setflags(write=False)
    first = R.shared[U].handle(R.masking, inbox=R.inboxes[U], x=x)[1]
    again = R.shared[U].handle(R.masking, inbox=R.inboxes[U], x=x)[1]
    assert first.to_bytes() == again.to_bytes()
    np.testing.assert_array_equal(x, R.inputs[U])


# --- Round 4: the unmask request and the double-masking rule -------------------------------


def _request(survivors: tuple[int, ...], dropped: tuple[int, ...], round_=CTX.round):  # type: ignore[no-untyped-def]
    return UnmaskRequest(round_, survivors, dropped)


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (_request((1, 2, 3), (3, 4)), "both secrets"),
        (_request((1, 2, 3, 4), (2,)), "both secrets"),
        (_request((2, 3, 4), (1,)), "lists this site as dropped"),
        (_request((1, 2, 3), (1, 4)), "lists this site as dropped"),
        (_request((2, 3, 4), ()), "not list this site"),
        (_request((1, 2, 3, 9), (4,)), "outside U2"),
        (_request((1, 2, 3), (4, 9)), "outside U2"),
        (_request((1, 2, 3), ()), "not exactly U2"),
        (_request((1, 2), (3,)), "not exactly U2"),
        (_request((1, 2), (3, 4)), "fewer than t"),
        (_request((1, 2, 3, 4), (), CTX.round + 1), "round"),
    ],
)
def test_unmask_request_refusals(request_: UnmaskRequest, fragment: str) -> None:
    assert_aborted(R.masked[U].handle(request_), fragment)


def test_reveals_exactly_one_secret_per_peer() -> None:
    request = _request((1, 2, 4), (3,))
    state, reply = R.masked[U].handle(request)
    assert isinstance(state, Completed) and state.is_completed
    assert sorted(reply.self_seed_shares) == [1, 2, 4]
    assert sorted(reply.key_shares) == [3]
    assert all(s.x == U for s in [*reply.self_seed_shares.values(), *reply.key_shares.values()])


def test_second_request_identical_is_replayed_different_is_refused() -> None:
    first = _request((1, 2, 3, 4), ())
    state, reply = R.masked[U].handle(first)
    # Re-delivery of the same request (also after a restart) gives the same bytes.
    restored = load_client_state(state.to_bytes())
    for s in (state, restored):
        again_state, again = s.handle(_request((1, 2, 3, 4), ()))
        assert again.to_bytes() == reply.to_bytes()
        assert again_state.to_bytes() == state.to_bytes()
        # A different request would now reveal s_sk shares of peers whose b is revealed.
        for other in [_request((1, 2, 3), (4,)), _request((1, 2, 3, 4), (), CTX.round + 1)]:
            with pytest.raises(DoubleRevealError):
                s.handle(other)


# --- persistence ---------------------------------------------------------------------------


def _all_states() -> list:  # type: ignore[type-arg]
    completed, _ = R.masked[U].handle(R.request)
    aborted, _ = R.masked[U].handle(_request((2, 3, 4), (1,)))
    return [R.started[U], R.shared[U], R.masked[U], completed, aborted]


@pytest.mark.parametrize("state", _all_states(), ids=lambda s: type(s).__name__)
def test_every_state_round_trips(state) -> None:  # type: ignore[no-untyped-def]
    raw = state.to_bytes()
    restored = load_client_state(raw)
    assert type(restored) is type(state)
    assert restored == state
    assert restored.to_bytes() == raw


def test_restored_states_continue_identically() -> None:
    rng_a, rng_b = DeterministicRandom(9), DeterministicRandom(9)
    a = R.started[U].handle(R.roster, rng=rng_a)
    b = load_client_state(R.started[U].to_bytes()).handle(R.roster, rng=rng_b)
    assert a[1].to_bytes() == b[1].to_bytes()
    restored = load_client_state(R.shared[U].to_bytes())
    x = R.inputs[U]
    assert (
        restored.handle(R.masking, inbox=R.inboxes[U], x=x)[1].to_bytes()
        == R.shared[U].handle(R.masking, inbox=R.inboxes[U], x=x)[1].to_bytes()
    )


def test_corrupted_state_bytes_are_refused() -> None:
    raw = R.shared[U].to_bytes()
    for bad in [
        raw[:-1],
        raw.replace(b'"state":"AwaitingMaskingRoster"', b'"state":"Nope"'),
        raw.replace(b'"state":"AwaitingMaskingRoster"', b'"state":"AwaitingKeyRoster"'),
        raw.replace(b'"party":1', b'"party":7'),
        raw.replace(b"fedrema-secagg-client-state/1", b"fedrema-secagg-client-state/2"),
    ]:
        with pytest.raises(MalformedMessage):
            load_client_state(bad)


def test_secrets_stay_out_of_repr() -> None:
    state = R.shared[U]
    text = repr(state)
    for secret in (state.c_sk, state.s_sk, state.b_u):
        assert secret.hex() not in text and str(secret) not in text


def test_a_whole_round_replays_byte_for_byte() -> None:
    ctx = make_ctx(5, 3, 16)
    inputs = random_inputs(ctx, 3)
    drops = {2: "after_share_keys", 5: "after_advert"}
    a, b = run_round(ctx, inputs, drops, seed=4), run_round(ctx, inputs, drops, seed=4)
    c = run_round(ctx, inputs, drops, seed=5)
    assert [m.to_bytes() for m in a.share_msgs] == [m.to_bytes() for m in b.share_msgs]
    assert [m.to_bytes() for m in a.masked_inputs] == [m.to_bytes() for m in b.masked_inputs]
    assert [m.to_bytes() for m in a.masked_inputs] != [m.to_bytes() for m in c.masked_inputs]
    np.testing.assert_array_equal(a.total, c.total)
