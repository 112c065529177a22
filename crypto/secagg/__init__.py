"""The Bonawitz et al. 2017 secure-aggregation protocol as client and server state machines.

Honest-but-curious variant, full communication graph, t-of-n (see ``crypto/README.md``).

>>> import numpy as np
>>> from crypto.secagg import (SecAggParams, RoundContext, start_round, fix_key_roster,
...     fix_masking_roster, route_ciphertexts, fix_survivors, finalize)
>>> params = SecAggParams(threshold=2, modulus_bits=32, dim=4, frac_bits=16, clip=1.0,
...                       max_weight=1.0)
>>> ctx = RoundContext("fed", 1, bytes(32), params, parties=(1, 2, 3))
>>> started = [start_round(ctx, p) for p in ctx.parties]
>>> u1 = fix_key_roster(ctx, [advert for _, advert in started])
>>> shared = [state.handle(u1) for state, _ in started]
>>> share_msgs = [msg for _, msg in shared]
>>> u2 = fix_masking_roster(ctx, u1, share_msgs)
>>> xs = {p: np.full(4, p, dtype=np.uint32) for p in ctx.parties}
>>> masked = [s.handle(u2, inbox=route_ciphertexts(u2, share_msgs, s.party), x=xs[s.party])
...           for s, _ in shared]
>>> request = fix_survivors(ctx, u2, [m for _, m in masked[:2]])   # party 3 drops out
>>> answers = [s.handle(request)[1] for s, _ in masked[:2]]
>>> finalize(ctx, u1, u2, request, [m for _, m in masked], answers).tolist()
[3, 3, 3, 3]
"""

from crypto.errors import (
    DecryptionError,
    DoubleRevealError,
    HeadroomError,
    InsufficientSurvivors,
    IntegrityError,
    InvalidShare,
    MalformedMessage,
    ParameterError,
    ProtocolAborted,
    SecAggError,
    StageError,
)
from crypto.secagg.client import (
    Aborted,
    AwaitingKeyRoster,
    AwaitingMaskingRoster,
    AwaitingUnmaskRequest,
    ClientState,
    Completed,
    load_client_state,
    start_round,
)
from crypto.secagg.messages import (
    KeyAdvert,
    KeyRoster,
    MaskedInput,
    MaskingRoster,
    Message,
    ShareKeysMsg,
    UnmaskRequest,
    UnmaskShares,
    parse_message,
)
from crypto.secagg.params import SUITE, RoundContext, SecAggParams, compute_session_id
from crypto.secagg.quantize import choose_width, decode_aggregate, encode_update
from crypto.secagg.server import (
    finalize,
    fix_key_roster,
    fix_masking_roster,
    fix_survivors,
    route_ciphertexts,
)

__all__ = [
    "SUITE",
    "Aborted",
    "AwaitingKeyRoster",
    "AwaitingMaskingRoster",
    "AwaitingUnmaskRequest",
    "ClientState",
    "Completed",
    "DecryptionError",
    "DoubleRevealError",
    "HeadroomError",
    "InsufficientSurvivors",
    "IntegrityError",
    "InvalidShare",
    "KeyAdvert",
    "KeyRoster",
    "MalformedMessage",
    "MaskedInput",
    "MaskingRoster",
    "Message",
    "ParameterError",
    "ProtocolAborted",
    "RoundContext",
    "SecAggError",
    "SecAggParams",
    "ShareKeysMsg",
    "StageError",
    "UnmaskRequest",
    "UnmaskShares",
    "choose_width",
    "compute_session_id",
    "decode_aggregate",
    "encode_update",
    "finalize",
    "fix_key_roster",
    "fix_masking_roster",
    "fix_survivors",
    "load_client_state",
    "parse_message",
    "route_ciphertexts",
    "start_round",
]
