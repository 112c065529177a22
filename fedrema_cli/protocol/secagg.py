"""Secure aggregation in the workspace: the crypto.secagg state machines, driven through files.

Sites keep their protocol state (with secrets) in their private folder, one file per round,
and persist each new state together with the artifact it produced *before* publishing it:
a crash between the two is repaired by the next run, which republishes the identical
bytes. Secrets of a round are deleted once its result is out (forward secrecy).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from crypto.errors import MalformedMessage, SecAggError
from crypto.secagg import (
    AwaitingKeyRoster,
    AwaitingMaskingRoster,
    AwaitingUnmaskRequest,
    ClientState,
    KeyAdvert,
    KeyRoster,
    MaskedInput,
    MaskingRoster,
    RoundContext,
    SecAggParams,
    ShareKeysMsg,
    UnmaskRequest,
    UnmaskShares,
    choose_width,
    decode_aggregate,
    encode_update,
    finalize,
    load_client_state,
    start_round,
)
from crypto.secagg import fix_key_roster as _fix_key_roster
from crypto.secagg import fix_masking_roster as _fix_masking_roster
from crypto.secagg import fix_survivors as _fix_survivors
from fedrema_cli.config import FederationConfig, default_threshold
from fedrema_cli.errors import ConfigError, IntegrityError, ProtocolAbortedError, StoreError
from fedrema_cli.identity import b64, unb64
from fedrema_cli.learning.modelspec import part_size
from fedrema_cli.methods import METHODS
from fedrema_cli.protocol import messages
from fedrema_cli.protocol.rounds import (
    Actions,
    Phase,
    key_roster_parties,
    participants,
    phase_of,
    rejoin_advice,
)
from fedrema_cli.store.envelope import sha256
from fedrema_cli.store.federation import Federation, Roster
from fedrema_cli.store.state import PartyState

MSG = "msg.bin"
MASKED = "masked.bin"


def _secrets(r: int) -> str:
    return f"secagg/{r:04d}.json"


def _dim(config: FederationConfig) -> int:
    part = METHODS[config.method].shared
    assert part is not None
    return part_size(config.model, part) + 1  # + the sample weight


def width(config: FederationConfig, n_sites: int) -> tuple[int, int]:
    """(modulus_bits, frac_bits) of the masked sum, from the signed config and the roster's
    size alone, so every party computes the same: "auto" takes the narrowest width the
    headroom rule allows above the precision floor; a fixed 24 or 32 takes the finest
    ``frac_bits`` (at most the configured one) that fits it; 64 takes ``frac_bits``."""
    c = config.secagg
    widths = (24, 32) if c.modulus_bits == "auto" else (c.modulus_bits,)
    try:
        if c.modulus_bits == 64:
            return 64, c.frac_bits
        bits, f = choose_width(
            n_sites,
            c.clip,
            c.max_weight,
            min_frac_bits=c.min_frac_bits,
            frac_bits_64=c.frac_bits,
            widths=widths,
        )
        if c.modulus_bits != "auto" and bits != c.modulus_bits:
            raise ConfigError(
                f"secure-aggregation parameters do not fit {c.modulus_bits}-bit words for "
                f"{n_sites} sites with at least {c.min_frac_bits} fractional bits",
                hint="use secagg.modulus_bits auto or 64, or lower clip or max_weight",
            )
        return (bits, f) if c.modulus_bits == "auto" else (bits, min(f, c.frac_bits))
    except SecAggError as e:
        raise ConfigError(
            f"secure-aggregation parameters do not work for {n_sites} sites: {e}"
        ) from None


def round_context(config: FederationConfig, roster: Roster, r: int) -> RoundContext:
    """Everything round r's SecAgg session is bound to, built from signed, public data."""
    c = config.secagg
    modulus_bits, frac_bits = width(config, len(roster.sites))
    params = SecAggParams(
        threshold=roster.threshold,
        modulus_bits=modulus_bits,
        dim=_dim(config),
        frac_bits=frac_bits,
        clip=c.clip,
        max_weight=c.max_weight,
    )
    return RoundContext(
        config.federation_id, r, roster.digest, params, tuple(s.index for s in roster.sites)
    )


def check_parameters(config: FederationConfig, roster: Roster) -> None:
    """Refuse an unsafe configuration (e.g. fixed-point headroom) before the roster is signed."""
    try:
        round_context(config, roster, 1)
    except SecAggError as e:
        raise ConfigError(
            f"secure-aggregation parameters do not work for {len(roster.sites)} sites: {e}"
        ) from None
    n, t = len(roster.sites), roster.threshold
    if config.secagg.consistency_check and 2 * t <= n:
        # Two disjoint groups of t sites could each be shown, and each sign, their own
        # survivor set: one group reveals a site's b-shares, the other its s_sk-shares.
        raise ConfigError(
            f"the consistency check needs a threshold above half the sites (t={t}, n={n})",
            hint=f"create the federation with `fedrema init --threshold {n // 2 + 1}` or more "
            f"(the default for {n} sites is {default_threshold(n)})",
        )


def _ctx(fed: Federation, r: int) -> RoundContext:
    """Round r's session: bound to the roster version in force for round r."""
    return round_context(fed.config, fed.roster_for(r), r)


def _index(fed: Federation, site: str, r: int) -> int:
    return fed.site_entry(site, r).index


def _names(fed: Federation, parties: tuple[int, ...], r: int) -> list[str]:
    roster = fed.roster_for(r)
    return [roster.by_index(p).name for p in parties]


# -- coordinator side ------------------------------------------------------------------------


def _advert(fed: Federation, r: int, site: str) -> KeyAdvert:
    body = messages.read(fed, "key-advert", r, messages.KeyAdvertBody, site=site)
    advert = KeyAdvert.from_bytes(unb64(body.advert, what=f"{site}'s key advert"))
    if advert.party != _index(fed, site, r) or advert.round != r:
        raise IntegrityError(f"round {r}: {site}'s key advert claims another party or round")
    return advert


def _message(fed: Federation, kind: str, r: int, site: str, name: str, cls: type) -> Any:
    art = fed.get(kind, r, site=site, attachments=(name,))
    msg = cls.from_bytes(art.attachments[name])
    if msg.party != _index(fed, site, r) or msg.round != r:
        raise IntegrityError(f"round {r}: {site}'s {kind} claims another party or round")
    return msg


#: Key shares travel one attachment per recipient (``to-<party index>.bin``, the raw AES-GCM
#: ciphertext), so a site downloads only the ciphertexts addressed to it, not every site's
#: whole message: n - 1 ciphertexts per round instead of (n - 1)^2. The coordinator reads them
#: all and rebuilds each ShareKeys message. (Files written before this are one ``msg.bin``.)
_TO = re.compile(r"to-([1-9][0-9]{0,4})\.bin")


def shares_parts(msg: ShareKeysMsg) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A ShareKeys message as a body (round, commitment) and one attachment per recipient."""
    body = {"round": msg.round, "commitment": b64(msg.commitment)}
    return body, {f"to-{v}.bin": ct for v, ct in sorted(msg.ciphertexts.items())}


def read_shares(fed: Federation, r: int, site: str, *, to: int | None = None) -> ShareKeysMsg:
    """``site``'s key shares of round r: every ciphertext, or only the one addressed ``to`` a
    party (all a recipient needs, and all it downloads). Signature and hashes checked."""
    head = fed.get("shares", r, site=site)
    listed = dict(head.envelope.header.get("attachments") or {})
    if MSG in listed:  # the single-file layout
        msg = _message(fed, "shares", r, site, MSG, ShareKeysMsg)
        if to is None:
            return msg
        cts = {to: msg.ciphertexts[to]} if to in msg.ciphertexts else {}
        return ShareKeysMsg(msg.party, msg.round, cts, msg.commitment)
    recipients = {}
    for name in listed:
        m = _TO.fullmatch(name)
        if m is None:
            raise IntegrityError(f"round {r}: {site}'s key shares carry an unknown part {name!r}")
        recipients[int(m.group(1))] = name
    wanted = recipients if to is None else {to: recipients[to]} if to in recipients else {}
    art = fed.get("shares", r, site=site, attachments=tuple(wanted.values()))
    body = messages.read(fed, "shares", r, messages.SharesBody, site=site)
    if body.round != r:
        raise IntegrityError(f"round {r}: {site}'s key shares claim another round")
    return ShareKeysMsg(
        _index(fed, site, r),
        r,
        {v: art.attachments[name] for v, name in wanted.items()},
        unb64(body.commitment, what=f"{site}'s commitment"),
    )


def _inbox(fed: Federation, r: int, senders: list[str], me: int) -> dict[int, bytes]:
    """The key-share ciphertexts addressed to party ``me``, one per sender in U2.

    Each is read without the sender's signed envelope: it is AES-GCM under a key only the
    sender and ``me`` can derive (X25519 of the keys in the verified key roster, each signed
    by its site), with the session id and both parties in its associated data, so anything
    else in its place fails decryption and the site aborts the round, as it would on a bad
    signature. The envelope's commitment is for the coordinator, not the recipient. Shares
    written in the single-file layout are read through the envelope as before.
    """
    inbox = {}
    for s in senders:
        ct = fed.read_self_authenticating("shares", r, f"to-{me}.bin", site=s)
        if ct is None:
            msg = read_shares(fed, r, s, to=me)
            if me not in msg.ciphertexts:
                raise IntegrityError(f"round {r}: {s}'s key shares hold none for this site")
            ct = msg.ciphertexts[me]
        inbox[_index(fed, s, r)] = ct
    return inbox


_MESSAGES: dict[str, tuple[type, str]] = {
    "submission": (MaskedInput, MASKED),
    "reveal": (UnmaskShares, MSG),
}


def read_message(fed: Federation, kind: str, r: int, site: str) -> Any:
    """One site's protocol message of round r, signature checked and parsed.

    Raises IntegrityError or a SecAggError when the file is not acceptable; the coordinator
    then treats it as never sent.
    """
    if kind == "key-advert":
        return _advert(fed, r, site)
    if kind == "shares":
        return read_shares(fed, r, site)
    cls, name = _MESSAGES[kind]
    return _message(fed, kind, r, site, name, cls)


Rejected = dict[str, str]
"""Site -> why the protocol refused its message at a barrier."""


def _without_refused(
    fed: Federation, r: int, sites: list[str], build: Callable[[list[str]], Any]
) -> tuple[Any, Rejected]:
    """``build(sites)``, leaving out every site whose message the protocol refuses.

    The server functions name the author of a message they cannot accept (a ciphertext
    missing for a peer, a key of small order, a second different message); that message is
    dropped as if it had never arrived, as Bonawitz et al. prescribe, and the barrier is
    computed again from the others (fewer than t left: InsufficientSurvivors).
    """
    sites, rejected = list(sites), {}
    while True:
        try:
            return build(sites), rejected
        except MalformedMessage as e:
            if e.party is None:
                raise
            name = fed.roster_for(r).by_index(e.party).name
            if name not in sites:
                raise
            sites.remove(name)
            rejected[name] = str(e)


def key_roster(fed: Federation, r: int) -> KeyRoster:
    body = messages.read(fed, "key-roster", r, messages.KeyRosterBody)
    return KeyRoster.from_bytes(unb64(body.roster, what="U1"))


def masking_roster(fed: Federation, r: int) -> MaskingRoster:
    body = messages.read(fed, "masking-roster", r, messages.MaskingRosterBody)
    if body.roster is None:
        raise IntegrityError(f"round {r}'s masking roster carries no secure-aggregation roster")
    return MaskingRoster.from_bytes(unb64(body.roster, what="U2"))


def unmask_request(fed: Federation, r: int) -> UnmaskRequest:
    body = messages.read(fed, "unmask-request", r, messages.UnmaskRequestBody)
    return UnmaskRequest.from_bytes(unb64(body.request, what="U3"))


def verified_key_roster(fed: Federation, r: int) -> KeyRoster:
    """U1, with every advert in it checked against the one its site signed.

    The key roster is signed by the coordinator only. Without this check a coordinator can
    put keys of its own in it for an enrolled site (one that did not advertise, or, shown to
    other sites only, one that did) and so receive every site's Shamir shares of b_u and
    s_u^SK for that party: with t such parties it unmasks individual updates (the
    signed-advert requirement of Bonawitz et al. 2017's actively secure variant).

    The key roster carries each advert's signature by its site: the site rebuilds the
    advert's envelope from the roster's keys and checks that signature with the peer's
    enrolled key, the same check as reading the advert file, without downloading n - 1
    of them. A roster written without signatures is checked against the advert files.
    """
    roster = key_roster(fed, r)
    signed = messages.read(fed, "key-roster", r, messages.KeyRosterBody).advert_signatures
    signatures = signed or {}
    for advert in roster.adverts:
        name = fed.roster_for(r).by_index(advert.party).name
        if name in signatures:  # the advert's own signature, carried: the same check, no download
            try:
                fed.verify_detached(
                    "key-advert", r, _advert_body(advert), signatures[name], site=name
                )
                continue
            except IntegrityError:
                pass
        elif fed.exists("key-advert", r, site=name) and _advert(fed, r, name) == advert:
            continue
        raise IntegrityError(
            f"round {r}: the key roster carries keys for {name} that {name} did not sign; "
            "no key shares are sent"
        )
    return roster


def _advert_body(advert: KeyAdvert) -> dict[str, Any]:
    """The body of the key-advert artifact a site signs for this advert (deterministic)."""
    return {"round": advert.round, "advert": b64(advert.to_bytes())}


def _read_all(fed: Federation, kind: str, r: int, sites: list[str]) -> list[Any]:
    return [read_message(fed, kind, r, s) for s in sites]


def _read_each(fed: Federation, kind: str, r: int, sites: list[str]) -> Iterator[Any]:
    """The messages read one at a time as they are reached: a masked input is model-sized,
    and the protocol streams them, so the coordinator holds one, not all n."""
    return (read_message(fed, kind, r, s) for s in sites)


def fix_key_roster(
    fed: Federation, r: int, advertised: list[str]
) -> tuple[dict[str, Any], Rejected]:
    roster, rejected = _without_refused(
        fed,
        r,
        advertised,
        lambda sites: _fix_key_roster(_ctx(fed, r), _read_all(fed, "key-advert", r, sites)),
    )
    names = _names(fed, roster.parties, r)
    body = {
        "round": r,
        "parties": names,
        "roster": b64(roster.to_bytes()),
        # each site's signature of its advert: peers check them without downloading adverts
        "advert_signatures": {
            s: fed.get("key-advert", r, site=s).envelope.signature for s in names
        },
    }
    return body, rejected


def fix_masking_roster(
    fed: Federation, r: int, shared: list[str]
) -> tuple[dict[str, Any], Rejected]:
    u1 = set(key_roster_parties(fed, r))
    roster, rejected = _without_refused(
        fed,
        r,
        [s for s in shared if s in u1],
        lambda sites: _fix_masking_roster(
            _ctx(fed, r), key_roster(fed, r), _read_all(fed, "shares", r, sites)
        ),
    )
    body = {
        "round": r,
        "participants": _names(fed, roster.participants, r),
        "roster": b64(roster.to_bytes()),
    }
    return body, rejected


def fix_survivors(fed: Federation, r: int, submitted: list[str]) -> tuple[dict[str, Any], Rejected]:
    request, rejected = _without_refused(
        fed,
        r,
        submitted,
        lambda sites: _fix_survivors(
            _ctx(fed, r), masking_roster(fed, r), _read_each(fed, "submission", r, sites)
        ),
    )
    body = {
        "round": r,
        "survivors": _names(fed, request.survivors, r),
        "dropped": _names(fed, request.dropped, r),
        "request": b64(request.to_bytes()),
    }
    return body, rejected


def unmask_sum(fed: Federation, r: int, revealed: list[str]) -> tuple[np.ndarray, float]:
    """The sum over survivors of weight * delta, and the sum of weights (nothing else).

    ``revealed``: the survivors whose unmasking shares were accepted; any the protocol still
    refuses are left out, and t of the rest suffice.
    """
    ctx = _ctx(fed, r)
    request = unmask_request(fed, r)
    survivors = _names(fed, request.survivors, r)
    total, _ = _without_refused(
        fed,
        r,
        [s for s in revealed if s in survivors],
        lambda sites: finalize(
            ctx,
            key_roster(fed, r),
            masking_roster(fed, r),
            request,
            _read_each(fed, "submission", r, survivors),
            _read_all(fed, "reveal", r, sites),
        ),
    )
    return decode_aggregate(ctx.params, total)


# -- site side -------------------------------------------------------------------------------


class _Secrets:
    """One round's private protocol state and the artifacts it produced (the outbox).

    ``secagg/<r>.json`` holds the client state and, per artifact, its body and the SHA-256
    of each attachment; the attachment bytes (a masked update is 8 bytes per parameter) sit
    beside it as their own files, ``secagg/<r>.<kind>.<name>``, exactly as published. Base64
    inside the JSON made a 10^7-parameter update a 107 MB string, parsed and decoded again
    on every `submit` (benchmarks/scale.py --probe-cli-site).
    """

    def __init__(self, state: PartyState, r: int) -> None:
        self.state, self.r, self.path = state, r, _secrets(r)
        data = state.read_json(self.path) if state.exists(self.path) else None
        self.client: ClientState | None = (
            load_client_state(unb64(data["client"], what="protocol state")) if data else None
        )
        self.outbox: dict[str, dict[str, Any]] = dict(data["outbox"]) if data else {}
        #: attachments written by this process, kept to publish without reading them back
        self._fresh: dict[str, bytes] = {}

    def _file(self, kind: str, name: str) -> str:
        return _attachment(self.r, kind, name)

    def save(
        self,
        client: ClientState,
        kind: str | None = None,
        body: dict | None = None,
        attachments: dict[str, bytes] | None = None,
    ) -> None:
        """Persist the state (and the artifact it came with): attachments first, each
        replaced atomically, then the JSON whose new version completes the step."""
        self.client = client
        if kind is not None:
            files = {}
            for name, data in (attachments or {}).items():
                path = self._file(kind, name)
                self.state.write_bytes(path, data)
                self._fresh[path] = data
                files[name] = sha256(data)
            self.outbox[kind] = {"body": body or {}, "files": files}
        self.state.write_json(self.path, {"client": b64(client.to_bytes()), "outbox": self.outbox})

    def advance(
        self,
        fed: Federation,
        step: tuple[ClientState, Any],
        kind: str,
        body: dict[str, Any],
        name: str,
    ) -> None:
        """Persist the state a protocol step produced with its message, then publish it.

        A step that aborted (no message) is persisted too, and raised.
        """
        client, msg = step
        if msg is None:
            self.save(client)
            _raise_if_aborted(client, self.r)
        self.save(client, kind, body, {name: msg.to_bytes()})
        self.flush(fed)

    def _attachments(self, kind: str, item: dict[str, Any]) -> dict[str, bytes]:
        if "attachments" in item:  # written before attachments had files of their own
            return {k: unb64(v, what="outbox") for k, v in item["attachments"].items()}
        out = {}
        for name, digest in item["files"].items():
            path = self._file(kind, name)
            data = self._fresh.get(path)
            if data is None:
                data = self.state.read_bytes(path)
                if sha256(data) != digest:
                    raise StoreError(
                        f"{self.state.root / path} is damaged (it no longer matches the "
                        "hash recorded with it)",
                        hint="restore this state folder from its backup",
                    )
            out[name] = data
        return out

    def flush(self, fed: Federation) -> None:
        """Publish every artifact this round produced (identical bytes: a no-op if present)."""
        for kind, item in self.outbox.items():
            fed.put(kind, self.r, item["body"], attachments=self._attachments(kind, item))


def _attachment(r: int, kind: str, name: str) -> str:
    return f"secagg/{r:04d}.{kind}.{name}"


def _raise_if_aborted(client: ClientState, r: int) -> None:
    if client.is_aborted:
        raise ProtocolAbortedError(
            f"round {r}: secure aggregation aborted at this site: {client.reason}"
        )  # type: ignore[union-attr]


def advertise(fed: Federation, state: PartyState, r: int) -> None:
    """Round 0 for round r: fresh key pairs, kept here; the advert goes to the workspace."""
    secrets = _Secrets(state, r)
    if secrets.client is None:
        client, advert = start_round(_ctx(fed, r), _index(fed, fed.me, r), rng=os.urandom)
        secrets.save(client, "key-advert", _advert_body(advert))
    secrets.flush(fed)


@dataclass(frozen=True)
class SiteUpdate:
    """A trained round, ready to send: the shared part's delta, its weight, the body."""

    delta: np.ndarray
    weight: float
    body: dict[str, Any]  # the submission's body (with the sealed personal part, if any)


@dataclass(frozen=True)
class SiteRound:
    """What a site's SecAgg driver needs, as values: its view, its private folder, the last
    round it takes part in, and the updates it has trained (by round)."""

    fed: Federation
    state: PartyState
    last: int
    updates: Mapping[int, SiteUpdate]
    first: int = 1  # the first round this site is in the roster for

    @property
    def name(self) -> str:
        return self.fed.me


def site_steps(site: SiteRound, r: int, actions: Actions) -> None:
    """Every SecAgg step this site can take now, for round r and the next round."""
    fed, state = site.fed, site.state
    last = site.last
    for rr in (r, r + 1):
        if rr > last:
            break
        if rr < site.first:
            continue
        secrets = _Secrets(state, rr)
        secrets.flush(fed)
        if secrets.client is None:
            if rr == r and not fed.exists("key-roster", rr):
                advertise(fed, state, rr)
                actions.done.append(f"round {rr}: key pair advertised")
                actions.waiting.append(f"round {rr}: the coordinator to fix the key roster")
            continue
        _raise_if_aborted(secrets.client, rr)
        _share_keys(site, rr, secrets, actions)
        _submit_masked(site, rr, secrets, actions)
        _reveal(site, rr, secrets, actions)
    forget_secrets(state, before=r)
    _rejoin(site, max(r, site.first), last, actions)


def forget_secrets(state: PartyState, *, before: int, start: int = 1) -> None:
    """Delete the protocol state of rounds ``start`` .. ``before - 1``: none will be needed.

    A state still waiting for an unmask request holds every peer's shares of b_v and
    s_v^SK; with the masked inputs in the workspace those unmask single updates later.
    """
    names = state.list("secagg")
    for rr in range(start, before):
        state.delete(_secrets(rr))  # first: an attachment left by a crash is an orphan, and
        prefix = f"{rr:04d}."  # the listing below removes it next time, state or not
        for name in names:
            if name.startswith(prefix):
                state.delete(f"secagg/{name}")


def _share_keys(site: SiteRound, r: int, secrets: _Secrets, actions: Actions) -> None:
    fed = site.fed
    if not isinstance(secrets.client, AwaitingKeyRoster):
        return
    if not fed.exists("key-roster", r):
        actions.waiting.append(f"round {r}: the coordinator to fix the key roster")
        return
    if site.name not in key_roster_parties(fed, r):
        return
    if _left_out(site, r):  # the phase closed without this site's shares
        actions.waiting.append(f"round {r}: closed without this site; {rejoin_advice(fed, r)}")
        return
    client, msg = secrets.client.handle(verified_key_roster(fed, r), rng=os.urandom)
    if msg is None:
        secrets.save(client)
        _raise_if_aborted(client, r)
    body, parts = shares_parts(msg)
    secrets.save(client, "shares", body, parts)
    secrets.flush(fed)
    actions.done.append(f"round {r}: key shares sent to peers (encrypted)")


def _submit_masked(site: SiteRound, r: int, secrets: _Secrets, actions: Actions) -> None:
    fed = site.fed
    if not isinstance(secrets.client, AwaitingMaskingRoster):
        return
    if not fed.exists("masking-roster", r):
        actions.waiting.append(f"round {r}: the coordinator to open the round (other sites' keys)")
        return
    roster = masking_roster(fed, r)
    me = _index(fed, site.name, r)
    if me not in roster.participants:
        return
    if fed.exists("unmask-request", r):
        actions.waiting.append(f"round {r}: closed without this site; {rejoin_advice(fed, r)}")
        return
    update = site.updates.get(r)
    if update is None:
        actions.waiting.append(f"round {r}: run `fedrema train-local`, then `fedrema submit`")
        return
    delta, weight = update.delta, update.weight
    ctx = _ctx(fed, r)
    x = encode_update(
        ctx.params,
        delta,
        weight=weight,
        rng=np.random.default_rng(int.from_bytes(os.urandom(16), "big")),
    )
    senders = [s for s in _names(fed, roster.participants, r) if s != site.name]
    inbox = _inbox(fed, r, senders, me)
    step = secrets.client.handle(roster, inbox=inbox, x=x)
    if r < site.last and step[1] is not None:
        advertise(fed, site.state, r + 1)  # keys for the next round travel with this update
    secrets.advance(fed, step, "submission", update.body, MASKED)
    actions.done.append(f"round {r}: masked update submitted")
    actions.waiting.append(f"round {r}: the coordinator to close the round")


def _reveal(site: SiteRound, r: int, secrets: _Secrets, actions: Actions) -> None:
    fed = site.fed
    if not isinstance(secrets.client, AwaitingUnmaskRequest):
        return
    if not fed.exists("unmask-request", r):
        return
    request = unmask_request(fed, r)
    if _index(fed, site.name, r) not in request.survivors:
        actions.waiting.append(f"round {r}: closed without this site's update (too late)")
        return
    if fed.config.secagg.consistency_check and not _consistent(site, r, request, actions):
        return
    secrets.advance(fed, secrets.client.handle(request), "reveal", {"round": r}, MSG)
    actions.done.append(f"round {r}: unmasking shares revealed")
    actions.waiting.append(f"round {r}: the coordinator to finish the round")


def _consistent(site: SiteRound, r: int, request: UnmaskRequest, actions: Actions) -> bool:
    """Bonawitz et al. 2017 round 3 (ConsistencyCheck), over the workspace.

    Sign the survivor set this site was shown; go on only once t survivors have signed the
    same set. A different set signed by any survivor means the coordinator (or the storage)
    showed different sites different survivor sets: refuse, and reveal nothing.
    """
    fed = site.fed
    digest = sha256(request.to_bytes())
    if not fed.exists("survivors-signed", r, site=site.name):
        fed.put("survivors-signed", r, {"round": r, "unmask_request_sha256": digest})
        actions.done.append(f"round {r}: survivor set signed (consistency check)")
    survivors = _names(fed, request.survivors, r)
    # Every signer counts as a witness, not only the survivors of this site's view: a site
    # signs only a set that lists it as a survivor, so any other digest is equivocation.
    everyone = fed.sites_with("survivors-signed", r)
    signed = [s for s in everyone if s in survivors]
    for other in everyone:
        seen = messages.read(
            fed, "survivors-signed", r, messages.SurvivorsSignedBody, site=other
        ).unmask_request_sha256
        if seen != digest:
            raise IntegrityError(
                f"round {r}: {other} was shown a different survivor set than this site: the "
                "coordinator or the storage equivocates; no unmasking share is revealed"
            )
    t = fed.roster_for(r).threshold
    if len(signed) < t:
        actions.waiting.append(
            f"round {r}: {t - len(signed)} more survivors to sign the "
            "survivor set (then `fedrema submit` again)"
        )
        return False
    return True


def _rejoin(site: SiteRound, r: int, last: int, actions: Actions) -> None:
    """A site left out of every open round advertises keys for the next round it can join."""
    fed = site.fed
    if any(site.state.exists(_secrets(k)) and not _left_out(site, k) for k in range(r, last + 1)):
        return  # still part of a round in progress
    for rr in range(r, last + 1):
        if phase_of(fed, rr) is Phase.WAITING and not fed.exists("key-roster", rr):
            advertise(fed, site.state, rr)
            actions.done.append(f"round {rr}: keys advertised to rejoin the federation")
            return


def _left_out(site: SiteRound, r: int) -> bool:
    """Whether this site can no longer contribute to round r (so should not wait for it)."""
    fed = site.fed
    if fed.exists("key-roster", r) and site.name not in key_roster_parties(fed, r):
        return True
    if fed.exists("masking-roster", r) and site.name not in participants(fed, r):
        return True
    return fed.exists("unmask-request", r) and site.name not in _names(
        fed, unmask_request(fed, r).survivors, r
    )
