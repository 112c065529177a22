"""What both roles share: opening a party's federation, round phases, time, model files."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from fedrema_cli.config import FederationConfig
from fedrema_cli.errors import IntegrityError
from fedrema_cli.learning.params import Params, load_params, save_params
from fedrema_cli.protocol import messages
from fedrema_cli.store.federation import Federation
from fedrema_cli.store.workspace import round_path

PARAMS = "params.safetensors"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def timestamp() -> str:
    return utcnow().isoformat(timespec="seconds")


def parse_time(text: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise IntegrityError(f"bad timestamp {text!r} in a signed file") from None


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from labelled parts: reproducible, and different per site and round."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class Phase(StrEnum):
    """Where a round is, read from which (verified) coordinator files exist."""

    WAITING = "waiting"  # nothing fixed yet: sites advertise keys
    KEYS = "keys"  # U1 fixed: sites share keys
    COLLECT = "collect"  # U2 fixed (or plaintext round open): sites submit updates
    UNMASK = "unmask"  # U3 fixed: survivors reveal unmasking shares
    DONE = "done"  # the result is out

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def evidence(self) -> str | None:
        """The artifact kind by which a site has acted in this phase."""
        return _EVIDENCE.get(self)

    @property
    def action(self) -> str:
        """What a site does in this phase, in words."""
        return _ACTIONS.get(self, "")


_LABELS = {
    Phase.WAITING: "not started",
    Phase.KEYS: "sharing keys",
    Phase.COLLECT: "collecting updates",
    Phase.UNMASK: "collecting unmasking shares",
    Phase.DONE: "finished",
}
_EVIDENCE = {
    Phase.WAITING: "key-advert",
    Phase.KEYS: "shares",
    Phase.COLLECT: "submission",
    Phase.UNMASK: "reveal",
}
_ACTIONS = {
    Phase.WAITING: "advertise keys",
    Phase.KEYS: "share keys",
    Phase.COLLECT: "submit an update",
    Phase.UNMASK: "reveal unmasking shares",
}


def phase_of(fed: Federation, r: int) -> Phase:
    if fed.exists("result", r):
        return Phase.DONE
    if fed.exists("unmask-request", r):
        return Phase.UNMASK
    if fed.exists("masking-roster", r):
        return Phase.COLLECT
    if fed.exists("key-roster", r):
        return Phase.KEYS
    return Phase.WAITING


@dataclass(frozen=True)
class Turn:
    """Who is expected in a phase, who acted, who is gone.

    The one rule the coordinator (when to close a phase), `status` (who is waited on) and a
    site (whether its part is done) all apply, so the three cannot disagree.
    """

    round: int
    phase: Phase
    expected: tuple[str, ...]
    acted: tuple[str, ...]
    gone: frozenset[str]

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(s for s in self.expected if s not in self.acted and s not in self.gone)


def gone_in(phase: Phase, r: int, withdrawn: Mapping[str, int]) -> frozenset[str]:
    """Sites no phase of round r waits for: withdrawn from round r or earlier. Not while
    unmasking: a survivor's update is in the sum, so its shares are awaited even after it
    withdrew."""
    if phase is Phase.UNMASK:
        return frozenset()
    return frozenset(s for s, first in withdrawn.items() if first <= r)


def expected_in(fed: Federation, r: int, phase: Phase) -> tuple[str, ...]:
    """The sites a phase waits for: round r's roster, then U1, then U2, then U3's survivors."""
    if phase is Phase.WAITING:
        return tuple(fed.roster_for(r).names)
    if phase is Phase.KEYS:
        return key_roster_parties(fed, r)
    if phase is Phase.COLLECT:
        return participants(fed, r)
    if phase is Phase.UNMASK:
        return survivors(fed, r)
    return ()


def turn(
    fed: Federation,
    r: int,
    *,
    withdrawn: Mapping[str, int],
    acted: Sequence[str] | None = None,
    phase: Phase | None = None,
) -> Turn:
    """Round r's current turn. ``acted``: who acted, if the caller judged it (the coordinator
    refuses some files); otherwise every expected site whose verified artifact is there."""
    phase = phase_of(fed, r) if phase is None else phase
    expected = expected_in(fed, r, phase)
    if acted is None:
        kind = phase.evidence
        acted = [s for s in fed.sites_with(kind, r) if s in expected] if kind else []
    return Turn(r, phase, expected, tuple(acted), gone_in(phase, r, withdrawn))


def key_roster_parties(fed: Federation, r: int) -> tuple[str, ...]:
    return messages.read(fed, "key-roster", r, messages.KeyRosterBody).parties


def participants(fed: Federation, r: int) -> tuple[str, ...]:
    return messages.read(fed, "masking-roster", r, messages.MaskingRosterBody).participants


def survivors(fed: Federation, r: int) -> tuple[str, ...]:
    return messages.read(fed, "unmask-request", r, messages.UnmaskRequestBody).survivors


def opened_at(fed: Federation, kind: str, r: int) -> str:
    """When the phase that ``kind`` (of round r) opened."""
    cls = {
        "key-roster": messages.KeyRosterBody,
        "masking-roster": messages.MaskingRosterBody,
        "unmask-request": messages.UnmaskRequestBody,
    }[kind]
    return str(messages.read(fed, kind, r, cls).opened_at)


def next_unstarted_round(fed: Federation) -> int | None:
    """The first round nobody has started its key exchange for (no key advert, no key
    roster, not open), or None when every round has: a roster change (a site added or
    removed, a key rotated) can only take effect there, since a round's session is bound to
    the roster it starts under."""
    r = current_round(fed)
    while r <= fed.config.rounds and (
        fed.present("key-roster", r)
        or fed.present("masking-roster", r)
        or fed.ws.names(round_path(r, "keys"))
    ):
        r += 1
    return r if r <= fed.config.rounds else None


def rejoin_round(fed: Federation, r: int) -> int | None:
    """The first round after r whose key roster is not fixed yet: the earliest a site left
    out of round r can take part again (None: no round is left for it)."""
    rounds = range(r + 1, fed.config.rounds + 1)
    return next((x for x in rounds if not fed.exists("key-roster", x)), None)


def rejoin_advice(fed: Federation, r: int) -> str:
    """What a site left out of round r is told (status, submit, train-local alike)."""
    x = rejoin_round(fed, r)
    if x is None:
        return "no round is left to rejoin; `fedrema personalize` once the federation completes"
    return f"`fedrema submit` to advertise keys and rejoin from round {x}"


def current_round(fed: Federation) -> int:
    """The first round without a verified result; ``rounds + 1`` once the federation is complete.

    Only a result that verifies moves a party forward (a planted ``result.json`` must never
    make a site delete the secrets of a round still being unmasked). Results are written in
    round order, so a binary search over the files *present* bounds the scan; each result
    below that is then verified (once per process: they are write-once).
    """
    total = fed.config.rounds
    lo, hi = 1, total + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if fed.present("result", mid):
            lo = mid + 1
        else:
            hi = mid
    for r in range(1, lo):
        if not fed.exists("result", r):
            return r
    return lo


def initial_params(config: FederationConfig) -> Params:
    from fedrema_cli.learning.models import (  # torch: only where a model is built
        build_model,
        get_part,
    )

    return get_part(build_model(config.model, seed=config.seed), "all")


def read_model(fed: Federation, r: int) -> Params:
    """Round r's global model, as float32 whatever width it travelled in (every party reads
    the same file, so every party starts from, and computes deltas against, the same values)."""
    art = fed.get("model", r, attachments=(PARAMS,))
    return {k: v.astype(np.float32) for k, v in load_params(art.attachments[PARAMS]).items()}


def model_attachment(
    params: Mapping[str, np.ndarray], config: FederationConfig, rng: np.random.Generator
) -> dict[str, bytes]:
    """The model file in the config's ``broadcast`` width: float32, or float16 rounded
    stochastically (unbiased; half the bytes of every model download)."""
    if config.broadcast == "float16":
        from fedrema_cli.merging.compress import round_float16

        params = {k: round_float16(v, rng) for k, v in params.items()}
    return {PARAMS: save_params(params)}


@dataclass
class Actions:
    """What a `submit` did and what the site waits for next."""

    done: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Withdrawal:
    """A site's signed notice that it takes part in no round from ``from_round`` on."""

    site: str
    from_round: int
    reason: str
    at: str

    def to_json(self) -> dict[str, object]:
        return {"from_round": self.from_round, "reason": self.reason, "at": self.at}


def read_withdrawal(fed: Federation, site: str) -> Withdrawal | None:
    """The site's withdrawal if it posted one, checked against its roster key."""
    if not fed.present("withdrawal", 0, site=site):
        return None  # present but unverifiable: `get` below raises, and the caller reports it
    body = fed.get("withdrawal", 0, site=site).body
    from_round, reason, at = body.get("from_round"), body.get("reason"), body.get("at")
    if (
        not isinstance(from_round, int)
        or isinstance(from_round, bool)
        or from_round < 1
        or not isinstance(reason, str)
        or not isinstance(at, str)
    ):
        raise IntegrityError(f"{site}'s withdrawal does not match the withdrawal schema")
    return Withdrawal(site=site, from_round=from_round, reason=reason, at=at)
