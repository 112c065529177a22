"""The coordinator side of Bonawitz et al. 2017 as pure functions of collected messages.

The coordinator re-reads the messages from the workspace on every CLI invocation, so each
barrier is a function of what has been collected so far:

====================================  ==========================================  ========
function                              returns                                     paper
====================================  ==========================================  ========
:func:`fix_key_roster`                U1 as a :class:`KeyRoster`                  Round 0
:func:`fix_masking_roster`            U2 as a :class:`MaskingRoster`              Round 1
:func:`route_ciphertexts`             the ciphertexts addressed to one site       Round 1
:func:`fix_survivors`                 U3 and U2 \\ U3 as an :class:`UnmaskRequest`  Round 2
:func:`finalize`                      sum over U3 of the inputs, mod 2^k          Round 4
====================================  ==========================================  ========

Fewer than ``t`` parties at any barrier raises :class:`~crypto.errors.InsufficientSurvivors`
and produces nothing. A message that is not acceptable (wrong round, unknown party, wrong
shape, a second different message from the same party) raises
:class:`~crypto.errors.MalformedMessage` with ``.party`` set: the caller rejects that file
and calls again without it, exactly as if it had never arrived. Identical duplicates are
harmless and collapse to one.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

import numpy as np

from crypto.errors import InsufficientSurvivors, InvalidShare, MalformedMessage, ParameterError
from crypto.hazmat import shamir, x25519
from crypto.hazmat.prg import UIntArray
from crypto.hazmat.shamir import Share
from crypto.secagg import _derive
from crypto.secagg.messages import (
    KeyAdvert,
    KeyRoster,
    MaskedInput,
    MaskingRoster,
    ShareKeysMsg,
    UnmaskRequest,
    UnmaskShares,
)
from crypto.secagg.params import RoundContext

__all__ = [
    "MAX_RECONSTRUCTION_ATTEMPTS",
    "finalize",
    "fix_key_roster",
    "fix_masking_roster",
    "fix_survivors",
    "route_ciphertexts",
]

#: How many t-subsets :func:`finalize` tries per secret before declaring its shares invalid.
MAX_RECONSTRUCTION_ATTEMPTS = 4096

_M = TypeVar("_M", KeyAdvert, ShareKeysMsg, MaskedInput, UnmaskShares)


def _by_party(
    messages: Iterable[_M], kind: type[_M], round_: int, allowed: Iterable[int]
) -> dict[int, _M]:
    """Index messages by author; refuse wrong type/round/author and conflicting duplicates."""
    allowed_set = set(allowed)
    out: dict[int, _M] = {}
    for m in messages:
        if not isinstance(m, kind):
            raise MalformedMessage(f"expected {kind.__name__}, got {type(m).__name__}")
        if m.round != round_:
            raise MalformedMessage(f"{kind.__name__} for round {m.round}", party=m.party)
        if m.party not in allowed_set:
            raise MalformedMessage(
                f"{kind.__name__} from party {m.party}, who is not expected", party=m.party
            )
        if m.party in out and out[m.party] != m:
            raise MalformedMessage(
                f"two different {kind.__name__} messages from party {m.party}", party=m.party
            )
        out[m.party] = m
    return dict(sorted(out.items()))


def _require_quorum(what: str, parties: Sequence[int], ctx: RoundContext) -> None:
    if len(parties) < ctx.threshold:
        raise InsufficientSurvivors(
            f"{what}: {len(parties)} parties, fewer than the threshold t={ctx.threshold}"
        )


def _check_round(ctx: RoundContext, *messages: KeyRoster | MaskingRoster | UnmaskRequest) -> None:
    for m in messages:
        if m.round != ctx.round:
            raise ParameterError(f"{type(m).__name__} is for round {m.round}, not {ctx.round}")


def fix_key_roster(ctx: RoundContext, adverts: Iterable[KeyAdvert]) -> KeyRoster:
    """Fix U1 from the key adverts received (Round 0 barrier).

    Raises :class:`MalformedMessage` for an advert reusing a public key already advertised,
    and :class:`InsufficientSurvivors` if fewer than t parties advertised.
    """
    by_party = _by_party(adverts, KeyAdvert, ctx.round, ctx.parties)
    seen: set[bytes] = set()
    for party, advert in by_party.items():
        if advert.c_pk == advert.s_pk or advert.c_pk in seen or advert.s_pk in seen:
            raise MalformedMessage(f"party {party} reuses an advertised public key", party=party)
        try:  # a small-order key would make every honest site abort the round
            x25519.check_public_key(advert.c_pk)
            x25519.check_public_key(advert.s_pk)
        except ParameterError:
            raise MalformedMessage(
                f"party {party} advertised a public key of small order", party=party
            ) from None
        seen.update((advert.c_pk, advert.s_pk))
    _require_quorum("key roster", list(by_party), ctx)
    return KeyRoster(ctx.round, tuple(by_party.values()))


def fix_masking_roster(
    ctx: RoundContext, key_roster: KeyRoster, share_msgs: Iterable[ShareKeysMsg]
) -> MaskingRoster:
    """Fix U2 from the ShareKeys messages received (Round 1 barrier).

    Each message must carry exactly one ciphertext of the right length for every other
    member of U1, and a commitment; U2 must have at least t members.
    """
    _check_round(ctx, key_roster)
    u1 = key_roster.parties
    by_party = _by_party(share_msgs, ShareKeysMsg, ctx.round, u1)
    for party, msg in by_party.items():
        if set(msg.ciphertexts) != set(u1) - {party}:
            raise MalformedMessage(
                f"party {party} did not send one ciphertext per U1 peer", party=party
            )
        if any(len(c) != _derive.SHARE_CIPHERTEXT_LEN for c in msg.ciphertexts.values()):
            raise MalformedMessage(f"party {party} sent a ciphertext of wrong length", party=party)
    participants = tuple(by_party)
    _require_quorum("masking roster", participants, ctx)
    commitments = {p: m.commitment for p, m in by_party.items()}
    return MaskingRoster(ctx.round, participants, commitments)


def route_ciphertexts(
    masking_roster: MaskingRoster, share_msgs: Iterable[ShareKeysMsg], recipient: int
) -> dict[int, bytes]:
    """The ciphertexts addressed to ``recipient``: ``{sender: ciphertext}`` for U2 \\ {recipient}.

    This is the ``inbox`` argument of :meth:`AwaitingMaskingRoster.handle`.
    """
    if recipient not in masking_roster.participants:
        raise ParameterError(f"party {recipient} is not in the masking roster")
    by_party = _by_party(
        share_msgs, ShareKeysMsg, masking_roster.round, masking_roster.participants
    )
    inbox = {}
    for sender in masking_roster.participants:
        if sender == recipient:
            continue
        if sender not in by_party or recipient not in by_party[sender].ciphertexts:
            raise MalformedMessage(f"no ciphertext from {sender} to {recipient}", party=sender)
        inbox[sender] = by_party[sender].ciphertexts[recipient]
    return inbox


def _check_masked_input(ctx: RoundContext, masking_roster: MaskingRoster, m: MaskedInput) -> None:
    """Refuse a masked input of the wrong type, round, author, dtype or length."""
    _by_party([m], MaskedInput, ctx.round, masking_roster.participants)
    params = ctx.params
    if (
        m.vector.dtype != params.dtype
        or m.vector.shape != (params.dim,)
        or m.modulus_bits != params.modulus_bits
    ):
        raise MalformedMessage(
            f"masked input of party {m.party} is not {params.modulus_bits}-bit words "
            f"[{params.dim}]",
            party=m.party,
        )


def fix_survivors(
    ctx: RoundContext, masking_roster: MaskingRoster, masked_inputs: Iterable[MaskedInput]
) -> UnmaskRequest:
    """Fix U3 from the masked inputs received (Round 2 barrier); the rest of U2 is dropped.

    A second, different masked input from one party is refused (it would reveal the
    difference of the two inputs); an identical one is harmless. The inputs are read once,
    as a stream, and only a SHA-256 of each is kept, so a lazy iterable that loads one
    input at a time keeps the coordinator's memory at one input.
    """
    _check_round(ctx, masking_roster)
    digests: dict[int, bytes] = {}
    for m in masked_inputs:
        _check_masked_input(ctx, masking_roster, m)
        digest = hashlib.sha256(np.ascontiguousarray(m.vector).data).digest()
        if digests.setdefault(m.party, digest) != digest:
            raise MalformedMessage(
                f"two different MaskedInput messages from party {m.party}", party=m.party
            )
        del m  # let this input go before the iterable loads the next one
    survivors = tuple(sorted(digests))
    _require_quorum("survivors", survivors, ctx)
    dropped = tuple(p for p in masking_roster.participants if p not in survivors)
    return UnmaskRequest(ctx.round, survivors, dropped)


def _candidate_subsets(holders: Sequence[int], t: int) -> Iterator[tuple[int, ...]]:
    """Every t-subset of ``holders`` exactly once, ordered by the last holder it uses.

    The first candidate is the first t holders; then each further holder is brought in with
    every choice of t-1 earlier ones. With b wrong shares a correct subset is reached
    within about C(t+b-1, b) candidates.
    """
    yield tuple(holders[:t])
    for last in range(t, len(holders)):
        for chosen in itertools.combinations(holders[:last], t - 1):
            yield (*chosen, holders[last])


def _public_key_matches(expected: bytes, private_key: bytes) -> bool:
    """Whether a reconstructed X25519 private key belongs to the advertised public key."""
    return hmac.compare_digest(x25519.public_key(private_key), expected)


def _reconstruct(
    shares: Mapping[int, Share], t: int, verify: Callable[[bytes], bool], what: str
) -> bytes:
    """Recover a secret from >= t shares, accepting only a result that ``verify`` confirms."""
    holders = sorted(shares)
    if len(holders) < t:
        raise InsufficientSurvivors(f"{what}: {len(holders)} shares, fewer than t={t}")
    candidates = _candidate_subsets(holders, t)
    for subset in itertools.islice(candidates, MAX_RECONSTRUCTION_ATTEMPTS):
        try:
            secret = shamir.combine([shares[h] for h in subset])
        except InvalidShare:
            continue
        if verify(secret):
            return secret
    raise InvalidShare(f"{what}: no subset of the {len(holders)} shares verifies")


def _sum_survivors(
    ctx: RoundContext,
    masking_roster: MaskingRoster,
    survivors: Sequence[int],
    masked_inputs: Iterable[MaskedInput],
) -> UIntArray:
    """Sum the survivors' masked inputs, reading each one once and keeping none of them.

    Only the running sum is held, so a caller that loads each input when the iteration
    reaches it (one file at a time) needs memory for one input, not for all of them. Being
    a stream, it cannot compare a repeated input with the first: a party that appears twice
    is refused.
    """
    params, wanted = ctx.params, set(survivors)
    total = np.zeros(params.dim, dtype=params.dtype)
    seen: set[int] = set()
    for m in masked_inputs:
        _check_masked_input(ctx, masking_roster, m)
        if m.party in seen:
            raise MalformedMessage(
                f"masked input of party {m.party} given twice to finalize", party=m.party
            )
        seen.add(m.party)
        if m.party in wanted:
            np.add(total, m.vector, out=total)
        del m  # let this input go before the iterable loads the next one
    missing = [u for u in survivors if u not in seen]
    if missing:
        raise ParameterError(f"masked inputs of survivors {missing} are missing")
    return total


def finalize(
    ctx: RoundContext,
    key_roster: KeyRoster,
    masking_roster: MaskingRoster,
    unmask_request: UnmaskRequest,
    masked_inputs: Iterable[MaskedInput],
    unmask_shares: Iterable[UnmaskShares],
) -> UIntArray:
    """Unmask the sum over U3 of the sites' inputs, mod 2^k (Round 4, server side).

    For each survivor u, b_u is reconstructed from the revealed shares and checked against
    u's commitment, and PRG(b_u) is removed. For each dropped d, s_d^SK is reconstructed
    and checked by re-deriving d's advertised public key, and the pairwise masks the
    survivors added for d are removed. If a reconstruction fails its check and more than t
    shares are available, other t-subsets are tried (up to
    :data:`MAX_RECONSTRUCTION_ATTEMPTS`) before :class:`InvalidShare` is raised.

    Memory stays bounded at scale: every secret is recovered first, then ``masked_inputs``
    is read once, in order, into a running sum (pass a lazy iterable to load one input at
    a time; each party at most once), and every mask is removed in one streamed pass of
    cache-sized chunks. Beyond the sum itself that needs one input and one chunk.

    With :func:`crypto.secagg.encode_update`, the last coordinate of the result is the sum
    of the weights; :func:`crypto.secagg.decode_aggregate` splits it off.

    Raises:
        InsufficientSurvivors: fewer than t survivors or fewer than t answers.
        MalformedMessage: an unexpected or conflicting message (``.party`` says whose).
        InvalidShare: the shares of some secret do not reconstruct a verifiable value.
        ParameterError: the rosters and the request do not belong together.
    """
    _check_round(ctx, key_roster, masking_roster, unmask_request)
    t, params = ctx.threshold, ctx.params
    u1, u2 = set(key_roster.parties), set(masking_roster.participants)
    survivors, dropped = unmask_request.survivors, unmask_request.dropped
    if not u2 <= u1:
        raise ParameterError("the masking roster is not within the key roster")
    if set(survivors) & set(dropped) or set(survivors) | set(dropped) != u2:
        raise ParameterError("the unmask request does not split U2 into survivors and dropped")
    _require_quorum("survivors", survivors, ctx)

    answers = _by_party(unmask_shares, UnmaskShares, ctx.round, survivors)
    for party, a in answers.items():
        if set(a.self_seed_shares) != set(survivors) or set(a.key_shares) != set(dropped):
            raise MalformedMessage(f"party {party} did not answer the unmask request", party=party)
    _require_quorum("unmasking answers", list(answers), ctx)

    sid = key_roster.session_id(ctx)
    keys = key_roster.keys()
    masks: list[tuple[bytes, int]] = []
    for u in survivors:
        commitment = masking_roster.commitments[u]
        b_u = _reconstruct(
            {h: a.self_seed_shares[u] for h, a in answers.items()},
            t,
            functools.partial(_derive.commitment_matches, sid, expected=commitment),
            f"self-mask seed of party {u}",
        )
        masks.append((_derive.self_mask_key(b_u, sid), -1))
    for d in dropped:
        s_pk = keys[d][1]
        s_sk = _reconstruct(
            {h: a.key_shares[d] for h, a in answers.items()},
            t,
            functools.partial(_public_key_matches, s_pk),
            f"mask key of dropped party {d}",
        )
        for v in survivors:
            # Survivor v added Δ_{v,d}·mask; adding d's own term Δ_{d,v}·mask cancels it.
            key = _derive.pair_mask_key(s_sk, keys[v][1], sid, d, v)
            masks.append((key, _derive.pair_sign(d, v)))

    total = _sum_survivors(ctx, masking_roster, survivors, masked_inputs)
    _derive.apply_masks(total, masks, params.modulus_bits)
    return total
