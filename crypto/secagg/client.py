"""The site side of Bonawitz et al. 2017 (honest-but-curious variant), one class per state.

A round walks through these states (Google fcp's layout: each state names what it waits for)::

    start_round() -> AwaitingKeyRoster          sends KeyAdvert        (Round 0)
      .handle(KeyRoster)  -> AwaitingMaskingRoster   sends ShareKeysMsg     (Round 1)
      .handle(MaskingRoster, inbox=, x=)
                          -> AwaitingUnmaskRequest   sends MaskedInput      (Round 2)
      .handle(UnmaskRequest) -> Completed            sends UnmaskShares     (Round 4)
    any check failing   -> Aborted (no message)

Rules (fcp's ``SecAggClientState`` contract):

* a message of the wrong type for the state raises :class:`~crypto.errors.StageError`;
* a message of the right type with bad contents returns :class:`Aborted` and no message;
* an input vector that does not match the parameters raises :class:`~crypto.errors.ParameterError`.

The double-masking rule (Bonawitz §4, Round 4) lives here: a site reveals, for each peer,
the share of its self-mask seed *or* of its mask key, never both, and answers one unmask
request per round. :class:`Completed` remembers the answer: the identical request gets the
identical bytes again, any other request raises :class:`~crypto.errors.DoubleRevealError`.

Every state is immutable and serializes with ``to_bytes()``; :func:`load_client_state`
restores it, so each stage can run in a separate CLI invocation. The bytes contain secrets:
store them privately. Persist the new state *before* publishing the message it came with.
Secrets are dropped as soon as they are no longer needed: after masking, the state keeps
only the peers' shares, not ``b_u``, ``s_u^SK`` or ``c_u^SK``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from crypto.errors import (
    DecryptionError,
    DoubleRevealError,
    InvalidShare,
    MalformedMessage,
    ParameterError,
    ProtocolAborted,
    StageError,
)
from crypto.hazmat import aead, shamir, x25519
from crypto.hazmat.prg import UIntArray
from crypto.hazmat.randomness import RandomSource, random_bytes
from crypto.hazmat.shamir import Share
from crypto.secagg import _derive
from crypto.secagg._wire import (
    Reader,
    b64,
    canonical_json,
    frozen_map,
    load_canonical,
    party_map_json,
)
from crypto.secagg.messages import (
    KeyAdvert,
    KeyRoster,
    MaskedInput,
    MaskingRoster,
    ShareKeysMsg,
    UnmaskRequest,
    UnmaskShares,
)
from crypto.secagg.params import MAX_PARTY, SUITE, RoundContext

__all__ = [
    "STATE_FORMAT",
    "Aborted",
    "AwaitingKeyRoster",
    "AwaitingMaskingRoster",
    "AwaitingUnmaskRequest",
    "ClientState",
    "Completed",
    "load_client_state",
    "start_round",
]

#: Marker of a persisted client state.
STATE_FORMAT = "fedrema-secagg-client-state/1"


def _expect(state: _State, message: object, kind: type) -> None:
    if not isinstance(message, kind):
        raise StageError(f"{state.STAGE} expects {kind.__name__}, got {type(message).__name__}")


def _shares_json(shares: Mapping[int, Share]) -> dict[str, str]:
    return party_map_json({v: s.to_bytes() for v, s in shares.items()})


@dataclass(frozen=True)
class _State:
    """Common fields and serialization of every client state."""

    STAGE: ClassVar[str]
    ctx: RoundContext
    party: int

    @property
    def is_aborted(self) -> bool:
        """True for :class:`Aborted`."""
        return False

    @property
    def is_completed(self) -> bool:
        """True for :class:`Completed`."""
        return False

    def _abort(self, reason: str) -> tuple[Aborted, None]:
        return Aborted(self.ctx, self.party, stage=self.STAGE, reason=reason), None

    def _fields(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Canonical JSON of the whole state, secrets in base64. Store it privately."""
        return canonical_json(
            {
                "format": STATE_FORMAT,
                "suite": SUITE,
                "state": type(self).__name__,
                "ctx": self.ctx.to_json(),
                "party": self.party,
                **self._fields(),
            }
        )


def start_round(
    ctx: RoundContext, party: int, *, rng: RandomSource = os.urandom
) -> tuple[AwaitingKeyRoster, KeyAdvert]:
    """Round 0 (AdvertiseKeys): fresh X25519 pairs (c, s) for this round, and their advert.

    Keys are never reused across rounds (forward secrecy; research notes pitfall 2).
    """
    if party not in ctx.parties:
        raise ParameterError(f"party {party} is not in the round's parties")
    state = AwaitingKeyRoster(
        ctx,
        party,
        c_sk=x25519.generate_private_key(rng),
        s_sk=x25519.generate_private_key(rng),
    )
    return state, state.advert()


@dataclass(frozen=True)
class AwaitingKeyRoster(_State):
    """Keys advertised; waiting for U1 (the :class:`KeyRoster`)."""

    STAGE: ClassVar[str] = "R0_AWAITING_KEY_ROSTER"
    c_sk: bytes = field(repr=False)
    s_sk: bytes = field(repr=False)

    def advert(self) -> KeyAdvert:
        """This site's :class:`KeyAdvert` (deterministic: safe to re-send)."""
        return KeyAdvert(
            self.party, self.ctx.round, x25519.public_key(self.c_sk), x25519.public_key(self.s_sk)
        )

    def handle(
        self, message: KeyRoster, *, rng: RandomSource = os.urandom
    ) -> tuple[AwaitingMaskingRoster, ShareKeysMsg] | tuple[Aborted, None]:
        """Round 1 (ShareKeys): check U1, draw b_u, share b_u and s_u^SK, encrypt to each peer.

        Checks (fcp ``r1_share_keys_base_state``): right round; own advert present and
        unchanged; |U1| >= t; every party enrolled; no public key appears twice.
        """
        _expect(self, message, KeyRoster)
        ctx, u, t = self.ctx, self.party, self.ctx.threshold
        if message.round != ctx.round:
            return self._abort(f"key roster is for round {message.round}, not {ctx.round}")
        keys = message.keys()
        own = self.advert()
        if keys.get(u) != (own.c_pk, own.s_pk):
            return self._abort("own key advert is missing or altered in the key roster")
        if len(keys) < t:
            return self._abort(f"key roster has {len(keys)} parties, fewer than t={t}")
        if not set(keys) <= set(ctx.parties):
            return self._abort("key roster names a party outside the round")
        all_keys = [k for pair in keys.values() for k in pair]
        if len(set(all_keys)) != len(all_keys):
            return self._abort("a public key appears twice in the key roster")

        sid = message.session_id(ctx)
        b_u = random_bytes(rng, shamir.SECRET_LEN)
        xs = message.parties
        b_shares = shamir.split(b_u, threshold=t, xs=xs, rng=rng)
        sk_shares = shamir.split(self.s_sk, threshold=t, xs=xs, rng=rng)
        ciphertexts = {}
        for v in xs:
            if v == u:
                continue
            try:
                key = _derive.share_key(self.c_sk, keys[v][0], sid, u, v)
            except ParameterError:
                return self._abort(f"party {v} advertised an invalid encryption key")
            plaintext = _derive.pack_shares(u, v, b_shares[v], sk_shares[v])
            ciphertexts[v] = aead.encrypt(key, plaintext, aad=_derive.share_aad(sid, u, v), rng=rng)
        out = ShareKeysMsg(u, ctx.round, ciphertexts, _derive.commitment(sid, b_u))
        state = AwaitingMaskingRoster(
            ctx,
            u,
            session_id=sid,
            c_sk=self.c_sk,
            s_sk=self.s_sk,
            b_u=b_u,
            peers=keys,
            own_b_share=b_shares[u],
            own_sk_share=sk_shares[u],
        )
        return state, out

    def _fields(self) -> dict[str, Any]:
        return {"c_sk": b64(self.c_sk), "s_sk": b64(self.s_sk)}

    @classmethod
    def _load(cls, ctx: RoundContext, party: int, r: Reader) -> AwaitingKeyRoster:
        return cls(ctx, party, c_sk=r.bytes_("c_sk", 32), s_sk=r.bytes_("s_sk", 32))


@dataclass(frozen=True)
class AwaitingMaskingRoster(_State):
    """Shares sent; waiting for U2, the ciphertexts addressed to this site, and the input."""

    STAGE: ClassVar[str] = "R1_AWAITING_MASKING_ROSTER"
    session_id: bytes
    c_sk: bytes = field(repr=False)
    s_sk: bytes = field(repr=False)
    b_u: bytes = field(repr=False)
    peers: Mapping[int, tuple[bytes, bytes]] = field(repr=False)
    own_b_share: Share = field(repr=False)
    own_sk_share: Share = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "peers", frozen_map(self.peers))

    def handle(
        self, message: MaskingRoster, *, inbox: Mapping[int, bytes], x: UIntArray
    ) -> tuple[AwaitingUnmaskRequest, MaskedInput] | tuple[Aborted, None]:
        """Round 2 (MaskedInputCollection): check U2, decrypt peers' shares, mask the input.

        Args:
            message: U2 with the commitments.
            inbox: ``{sender: ciphertext}`` for every sender in U2 other than this site
                (see :func:`crypto.secagg.route_ciphertexts`).
            x: the encoded input, ``params.dtype`` with shape ``(params.dim,)``; with
                :func:`crypto.secagg.encode_update` its last coordinate is the weight.

        Returns ``y = x + PRG(b_u) + sum_{v in U2, v != u} ±PRG(s_{u,v}) mod 2^k``.
        """
        _expect(self, message, MaskingRoster)
        ctx, u, t, sid = self.ctx, self.party, self.ctx.threshold, self.session_id
        params = ctx.params
        if not isinstance(x, np.ndarray) or x.dtype != params.dtype or x.shape != (params.dim,):
            raise ParameterError(f"input must be a {params.dtype} vector of length {params.dim}")
        if message.round != ctx.round:
            return self._abort(f"masking roster is for round {message.round}, not {ctx.round}")
        u2 = message.participants
        if u not in u2:
            return self._abort("this site is not in the masking roster")
        if not set(u2) <= set(self.peers):
            return self._abort("masking roster names a party outside the key roster")
        if len(u2) < t:
            return self._abort(f"masking roster has {len(u2)} parties, fewer than t={t}")
        if not _derive.commitment_matches(sid, self.b_u, message.commitments[u]):
            return self._abort("masking roster carries a wrong commitment for this site")
        senders = set(u2) - {u}
        if set(inbox) != senders:
            return self._abort("the ciphertexts routed to this site do not match U2")

        b_shares = {u: self.own_b_share}
        sk_shares = {u: self.own_sk_share}
        for v in sorted(senders):
            try:
                key = _derive.share_key(self.c_sk, self.peers[v][0], sid, v, u)
                plaintext = aead.decrypt(key, inbox[v], aad=_derive.share_aad(sid, v, u))
                b_shares[v], sk_shares[v] = _derive.unpack_shares(plaintext, v, u)
            except (DecryptionError, ParameterError, InvalidShare) as exc:
                return self._abort(f"shares from party {v} are invalid: {exc}")

        masks = [(_derive.self_mask_key(self.b_u, sid), 1)]
        for v in sorted(senders):
            try:
                key = _derive.pair_mask_key(self.s_sk, self.peers[v][1], sid, u, v)
            except ParameterError:
                return self._abort(f"party {v} advertised an invalid mask key")
            masks.append((key, _derive.pair_sign(u, v)))
        y = x.astype(params.dtype, order="C", copy=True)
        _derive.apply_masks(y, masks, params.modulus_bits)  # streamed: one chunk of scratch
        state = AwaitingUnmaskRequest(
            ctx, u, participants=u2, b_shares=b_shares, sk_shares=sk_shares
        )
        return state, MaskedInput(u, ctx.round, y, params.modulus_bits)

    def _fields(self) -> dict[str, Any]:
        return {
            "session_id": b64(self.session_id),
            "c_sk": b64(self.c_sk),
            "s_sk": b64(self.s_sk),
            "b_u": b64(self.b_u),
            "peers": party_map_json({v: c + s for v, (c, s) in self.peers.items()}),
            "own_b_share": b64(self.own_b_share.to_bytes()),
            "own_sk_share": b64(self.own_sk_share.to_bytes()),
        }

    @classmethod
    def _load(cls, ctx: RoundContext, party: int, r: Reader) -> AwaitingMaskingRoster:
        return cls(
            ctx,
            party,
            session_id=r.bytes_("session_id", 32),
            c_sk=r.bytes_("c_sk", 32),
            s_sk=r.bytes_("s_sk", 32),
            b_u=r.bytes_("b_u", 32),
            peers={v: (k[:32], k[32:]) for v, k in r.party_map("peers", 64).items()},
            own_b_share=r.share("own_b_share"),
            own_sk_share=r.share("own_sk_share"),
        )


@dataclass(frozen=True)
class AwaitingUnmaskRequest(_State):
    """Masked input sent; holds every U2 peer's shares until the one unmask request."""

    STAGE: ClassVar[str] = "R2_AWAITING_UNMASK_REQUEST"
    participants: tuple[int, ...]
    b_shares: Mapping[int, Share] = field(repr=False)
    sk_shares: Mapping[int, Share] = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "participants", tuple(self.participants))
        object.__setattr__(self, "b_shares", frozen_map(self.b_shares))
        object.__setattr__(self, "sk_shares", frozen_map(self.sk_shares))

    def handle(
        self, message: UnmaskRequest
    ) -> tuple[Completed, UnmaskShares] | tuple[Aborted, None]:
        """Round 4 (Unmasking): reveal b-shares for U3 and s_sk-shares for U2 \\ U3, never both.

        Checks (fcp ``r3_unmasking_state``): right round; this site is a survivor; U3 and the
        dropped list are disjoint, both within U2, and together exactly U2; |U3| >= t.
        """
        _expect(self, message, UnmaskRequest)
        ctx, u, t = self.ctx, self.party, self.ctx.threshold
        survivors, dropped = set(message.survivors), set(message.dropped)
        u2 = set(self.participants)
        if message.round != ctx.round:
            return self._abort(f"unmask request is for round {message.round}, not {ctx.round}")
        if u in dropped:
            return self._abort("unmask request lists this site as dropped")
        if u not in survivors:
            return self._abort("unmask request does not list this site as a survivor")
        if survivors & dropped:
            return self._abort("unmask request asks for both secrets of one peer")
        if not survivors <= u2 or not dropped <= u2:
            return self._abort("unmask request names parties outside U2")
        if dropped != u2 - survivors:
            return self._abort("unmask request's dropped list is not exactly U2 minus U3")
        if len(survivors) < t:
            return self._abort(f"unmask request has {len(survivors)} survivors, fewer than t={t}")
        reply = UnmaskShares(
            u,
            ctx.round,
            self_seed_shares={v: self.b_shares[v] for v in message.survivors},
            key_shares={v: self.sk_shares[v] for v in message.dropped},
        )
        return Completed(ctx, u, request=message, response=reply), reply

    def _fields(self) -> dict[str, Any]:
        return {
            "participants": list(self.participants),
            "b_shares": _shares_json(self.b_shares),
            "sk_shares": _shares_json(self.sk_shares),
        }

    @classmethod
    def _load(cls, ctx: RoundContext, party: int, r: Reader) -> AwaitingUnmaskRequest:
        return cls(
            ctx,
            party,
            participants=r.int_list("participants", hi=MAX_PARTY),
            b_shares=r.share_map("b_shares"),
            sk_shares=r.share_map("sk_shares"),
        )


@dataclass(frozen=True)
class Completed(_State):
    """Unmasking shares sent. Remembers the request and the answer to refuse a second one."""

    STAGE: ClassVar[str] = "COMPLETED"
    request: UnmaskRequest
    response: UnmaskShares = field(repr=False)

    @property
    def is_completed(self) -> bool:
        """True for :class:`Completed`."""
        return True

    def handle(self, message: UnmaskRequest) -> tuple[Completed, UnmaskShares]:
        """Re-deliver the same answer to the same request; refuse any other request."""
        _expect(self, message, UnmaskRequest)
        if message != self.request:
            raise DoubleRevealError(
                "this site already answered a different unmask request for this round"
            )
        return self, self.response

    def _fields(self) -> dict[str, Any]:
        return {
            "request": self.request.to_bytes().decode("utf-8"),
            "response": self.response.to_bytes().decode("utf-8"),
        }

    @classmethod
    def _load(cls, ctx: RoundContext, party: int, r: Reader) -> Completed:
        return cls(
            ctx,
            party,
            request=UnmaskRequest.from_bytes(r.str_("request").encode("utf-8")),
            response=UnmaskShares.from_bytes(r.str_("response").encode("utf-8")),
        )


@dataclass(frozen=True)
class Aborted(_State):
    """Terminal: a check failed at ``stage``; no further message will ever be produced."""

    STAGE: ClassVar[str] = "ABORTED"
    stage: str
    reason: str

    @property
    def is_aborted(self) -> bool:
        """True for :class:`Aborted`."""
        return True

    def handle(self, message: object, **_: object) -> tuple[Aborted, None]:
        """Always raises :class:`ProtocolAborted`: an aborted round stays aborted."""
        raise ProtocolAborted(f"round {self.ctx.round} aborted at {self.stage}: {self.reason}")

    def _fields(self) -> dict[str, Any]:
        return {"stage": self.stage, "reason": self.reason}

    @classmethod
    def _load(cls, ctx: RoundContext, party: int, r: Reader) -> Aborted:
        return cls(ctx, party, stage=r.str_("stage"), reason=r.str_("reason"))


#: Any client state.
ClientState = (
    AwaitingKeyRoster | AwaitingMaskingRoster | AwaitingUnmaskRequest | Completed | Aborted
)

_STATES: dict[str, Any] = {
    cls.__name__: cls
    for cls in (AwaitingKeyRoster, AwaitingMaskingRoster, AwaitingUnmaskRequest, Completed, Aborted)
}


def load_client_state(data: bytes) -> ClientState:
    """Restore a state from :meth:`to_bytes` output; raises :class:`MalformedMessage`."""
    r = load_canonical(data, "client state")
    r.const("format", STATE_FORMAT)
    r.const("suite", SUITE)
    name = r.str_("state")
    if name not in _STATES:
        r.fail(f"unknown state {name!r}")
    ctx = RoundContext.from_reader(r.sub("ctx"))
    party = r.int_("party", lo=1, hi=MAX_PARTY)
    if party not in ctx.parties:
        r.fail("party is not in the round's parties")
    try:
        state: ClientState = _STATES[name]._load(ctx, party, r)
    except (ParameterError, MalformedMessage) as exc:
        raise MalformedMessage(f"client state: {exc}") from None
    r.done()
    return state
