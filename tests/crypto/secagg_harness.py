"""Test helpers: vector files, a replayable randomness source and a one-machine round driver.

Every message and every client state goes through ``to_bytes``/``from_bytes`` on the way,
as it would between CLI invocations, so the driver also exercises persistence.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crypto.secagg import (
    KeyRoster,
    MaskedInput,
    MaskingRoster,
    RoundContext,
    SecAggParams,
    ShareKeysMsg,
    UnmaskRequest,
    UnmaskShares,
    finalize,
    fix_key_roster,
    fix_masking_roster,
    fix_survivors,
    load_client_state,
    parse_message,
    route_ciphertexts,
    start_round,
)
from crypto.secagg.client import ClientState

VECTORS = Path(__file__).with_name("vectors")


def load_vectors(name: str) -> dict[str, Any]:
    """Load ``tests/crypto/vectors/<name>.json``; every file must say where it comes from."""
    doc = json.loads((VECTORS / f"{name}.json").read_text())
    assert doc.get("provenance"), f"{name}.json has no provenance"
    return doc


# Stages at which a party can drop out of a round.
STAYS = "stays"
BEFORE_ADVERT = "before_advert"  # never in U1
AFTER_ADVERT = "after_advert"  # in U1, not in U2
AFTER_SHARE_KEYS = "after_share_keys"  # in U2, not in U3
AFTER_MASKED_INPUT = "after_masked_input"  # in U3, never answers the unmask request
DROP_STAGES = (BEFORE_ADVERT, AFTER_ADVERT, AFTER_SHARE_KEYS, AFTER_MASKED_INPUT)


class DeterministicRandom:
    """A replayable byte source (SHAKE-256 of seed and counter). For tests only."""

    def __init__(self, seed: int | bytes = 0) -> None:
        self._seed = seed if isinstance(seed, bytes) else seed.to_bytes(8, "big")
        self._counter = 0

    def __call__(self, n: int) -> bytes:
        self._counter += 1
        material = self._seed + self._counter.to_bytes(8, "big")
        return hashlib.shake_256(material).digest(n)


def make_ctx(
    n: int,
    t: int,
    dim: int,
    *,
    modulus_bits: int = 32,
    frac_bits: int = 16,
    clip: float = 1.0,
    max_weight: float = 1.0,
    round_: int = 1,
    federation: str = "fed-test",
) -> RoundContext:
    params = SecAggParams(
        threshold=t,
        modulus_bits=modulus_bits,
        dim=dim,
        frac_bits=frac_bits,
        clip=clip,
        max_weight=max_weight,
    )
    roster_hash = hashlib.sha256(f"roster:{federation}:{n}".encode()).digest()
    return RoundContext(federation, round_, roster_hash, params, tuple(range(1, n + 1)))


def random_inputs(ctx: RoundContext, seed: int) -> dict[int, np.ndarray]:
    gen = np.random.default_rng(seed)
    p = ctx.params
    return {u: gen.integers(0, 2**p.modulus_bits, size=p.dim, dtype=p.dtype) for u in ctx.parties}


def _wire(msg):  # type: ignore[no-untyped-def]
    """Send a message 'over the wire': bytes out, parsed back in."""
    back = parse_message(msg.to_bytes())
    assert back == msg
    return back


def _persist(state: ClientState) -> ClientState:
    """Store and reload a client state, as between two CLI invocations."""
    back = load_client_state(state.to_bytes())
    assert back.to_bytes() == state.to_bytes()
    return back


@dataclass
class RoundResult:
    """Everything the coordinator holds at the end of a round, plus the clients' states."""

    ctx: RoundContext
    key_roster: KeyRoster
    share_msgs: list[ShareKeysMsg]
    masking_roster: MaskingRoster
    masked_inputs: list[MaskedInput]
    request: UnmaskRequest
    answers: list[UnmaskShares]
    total: np.ndarray
    states: dict[int, ClientState] = field(default_factory=dict)

    @property
    def survivors(self) -> tuple[int, ...]:
        return self.request.survivors


def expected_sum(ctx: RoundContext, inputs: Mapping[int, np.ndarray], parties: Iterable[int]):
    total = np.zeros(ctx.params.dim, dtype=ctx.params.dtype)
    for u in parties:
        total += inputs[u]
    return total


def run_round(
    ctx: RoundContext,
    inputs: Mapping[int, np.ndarray],
    drops: Mapping[int, str] | None = None,
    *,
    seed: int = 0,
) -> RoundResult:
    """Drive one full round; ``drops`` maps a party to the stage it drops out at."""
    drops = dict(drops or {})
    rng = DeterministicRandom(seed)

    def alive(u: int, stage: str) -> bool:
        order = (BEFORE_ADVERT, AFTER_ADVERT, AFTER_SHARE_KEYS, AFTER_MASKED_INPUT)
        d = drops.get(u, STAYS)
        return d == STAYS or order.index(d) > order.index(stage)

    states: dict[int, ClientState] = {}
    adverts = []
    for u in ctx.parties:
        if alive(u, BEFORE_ADVERT):
            state, advert = start_round(ctx, u, rng=rng)
            states[u] = _persist(state)
            adverts.append(_wire(advert))
    key_roster = _wire(fix_key_roster(ctx, adverts))

    share_msgs = []
    for u in key_roster.parties:
        if alive(u, AFTER_ADVERT):
            state, msg = states[u].handle(key_roster, rng=rng)
            assert msg is not None, state
            states[u] = _persist(state)
            share_msgs.append(_wire(msg))
    masking_roster = _wire(fix_masking_roster(ctx, key_roster, share_msgs))

    masked = []
    for u in masking_roster.participants:
        if alive(u, AFTER_SHARE_KEYS):
            inbox = route_ciphertexts(masking_roster, share_msgs, u)
            state, msg = states[u].handle(masking_roster, inbox=inbox, x=inputs[u])
            assert msg is not None, state
            states[u] = _persist(state)
            masked.append(_wire(msg))
    request = _wire(fix_survivors(ctx, masking_roster, masked))

    answers = []
    for u in request.survivors:
        if alive(u, AFTER_MASKED_INPUT):
            state, msg = states[u].handle(request)
            assert msg is not None, state
            states[u] = _persist(state)
            answers.append(_wire(msg))
    total = finalize(ctx, key_roster, masking_roster, request, masked, answers)
    return RoundResult(
        ctx, key_roster, share_msgs, masking_roster, masked, request, answers, total, states
    )
