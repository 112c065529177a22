"""What the coordinator holds at the end of a round does not reveal any site's input.

The server's whole view is: the key roster, every ShareKeys message (ciphertexts under keys
it does not have), the masking roster, the masked inputs, the unmask request, and every
unmasking answer. These tests count, per party, what that view lets it reconstruct, and
check that what it can strip off still leaves each input masked.
"""

from __future__ import annotations

import numpy as np
from secagg_harness import make_ctx, random_inputs, run_round

from crypto.hazmat import shamir
from crypto.secagg import _derive
from crypto.secagg.client import AwaitingMaskingRoster
from crypto.secagg.server import route_ciphertexts

CTX = make_ctx(6, 3, 512)
INPUTS = random_inputs(CTX, 11)
# Party 5 drops after ShareKeys; party 6 sends its masked input but never answers.
RESULT = run_round(CTX, INPUTS, {5: "after_share_keys", 6: "after_masked_input"}, seed=11)
SID = RESULT.key_roster.session_id(CTX)
T = CTX.threshold


def _revealed(kind: str, peer: int) -> dict[int, shamir.Share]:
    return {a.party: getattr(a, kind)[peer] for a in RESULT.answers if peer in getattr(a, kind)}


def _mostly_masked(masked: np.ndarray, x: np.ndarray) -> None:
    differs = np.count_nonzero(masked != x)
    assert differs >= 0.99 * x.size, differs
    # And the residual mask looks uniform: about half of all bits set.
    bits = np.unpackbits((masked - x).view(np.uint8))
    assert abs(bits.mean() - 0.5) < 0.02


def test_no_party_has_both_secrets_reconstructable() -> None:
    survivors, dropped = RESULT.request.survivors, RESULT.request.dropped
    assert survivors == (1, 2, 3, 4, 6) and dropped == (5,)
    for u in RESULT.masking_roster.participants:
        b_count = len(_revealed("self_seed_shares", u))
        sk_count = len(_revealed("key_shares", u))
        assert not (b_count >= T and sk_count >= T), u
        if u in survivors:
            assert sk_count == 0 and b_count == len(RESULT.answers) >= T
        else:
            assert b_count == 0 and sk_count >= T


def test_survivor_input_stays_masked_after_removing_its_self_mask() -> None:
    by_party = {m.party: m.vector for m in RESULT.masked_inputs}
    for u in RESULT.request.survivors:
        b_u = shamir.combine(list(_revealed("self_seed_shares", u).values())[:T])
        assert _derive.commitment_matches(SID, b_u, RESULT.masking_roster.commitments[u])
        without_self = by_party[u] - _derive.self_mask(b_u, SID, CTX.params)
        # Only the pairwise masks remain, and their keys s_u^SK were never revealed.
        _mostly_masked(without_self, INPUTS[u])


def test_a_late_masked_input_of_a_dropped_party_stays_masked() -> None:
    # Party 5 was declared dropped, so its s_5^SK is reconstructed. Had its masked input
    # arrived late, removing every pairwise mask would still leave PRG(b_5): b_5 is never
    # revealed for a dropped party (the double-masking rule).
    state = RESULT.states[5]
    assert isinstance(state, AwaitingMaskingRoster)
    inbox = route_ciphertexts(RESULT.masking_roster, RESULT.share_msgs, 5)
    _, late = state.handle(RESULT.masking_roster, inbox=inbox, x=INPUTS[5])
    s_sk = shamir.combine(list(_revealed("key_shares", 5).values())[:T])
    keys = RESULT.key_roster.keys()
    residual = late.vector.copy()
    for v in RESULT.masking_roster.participants:
        if v != 5:
            mask = _derive.pair_mask(s_sk, keys[v][1], SID, 5, v, CTX.params)
            _derive.add_pair_mask(residual, mask, v, 5)  # cancels 5's own term
    _mostly_masked(residual, INPUTS[5])
    assert _revealed("self_seed_shares", 5) == {}


def test_share_ciphertexts_do_not_carry_shares_in_the_clear() -> None:
    blobs = b"".join(c for m in RESULT.share_msgs for c in m.ciphertexts.values())
    for answer in RESULT.answers:
        for share in [*answer.self_seed_shares.values(), *answer.key_shares.values()]:
            assert share.to_bytes()[2:] not in blobs


def test_the_sum_is_all_that_is_left() -> None:
    expected = sum(INPUTS[u] for u in RESULT.request.survivors)
    np.testing.assert_array_equal(RESULT.total, expected)
