"""What both roles share: opening a party's federation, round phases, time, model files."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedrema_cli.config import FederationConfig
from fedrema_cli.errors import IntegrityError
from fedrema_cli.learning.params import Params, load_params, save_params
from fedrema_cli.store.federation import Federation

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


@dataclass(frozen=True)
class Phase:
    """Where round r is, read from which coordinator files exist."""

    round: int
    name: str  # "waiting" | "keys" | "collect" | "unmask" | "done"

    @property
    def label(self) -> str:
        return {
            "waiting": "not started",
            "keys": "sharing keys",
            "collect": "collecting updates",
            "unmask": "collecting unmasking shares",
            "done": "finished",
        }[self.name]


def phase_of(fed: Federation, r: int) -> Phase:
    if fed.exists("result", r):
        return Phase(r, "done")
    if fed.exists("unmask-request", r):
        return Phase(r, "unmask")
    if fed.exists("masking-roster", r):
        return Phase(r, "collect")
    if fed.exists("key-roster", r):
        return Phase(r, "keys")
    return Phase(r, "waiting")


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
    art = fed.get("model", r, attachments=(PARAMS,))
    return load_params(art.attachments[PARAMS])


def model_attachment(params: Mapping[str, np.ndarray]) -> dict[str, bytes]:
    return {PARAMS: save_params(params)}


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
