"""Round parameters, the round context and the session id.

:class:`SecAggParams` and :class:`RoundContext` are data only (pyca's descriptor/worker
split), so they can be hashed into the session id. The session id follows Google fcp
(``compute_session_id``): SHA-256 over a canonical encoding of everything the round depends
on — federation, round number, roster hash, parameters, party list — and every key advertised
in U1. Every derived key and every AEAD associated data contains it, so a message replayed
from another round, federation or key set fails to decrypt or to unmask.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from crypto.errors import MalformedMessage, ParameterError
from crypto.hazmat.fixed_point import check_headroom
from crypto.hazmat.kdf import encode_fields, u32
from crypto.hazmat.prg import uint_dtype
from crypto.secagg._wire import Reader, b64, canonical_json

__all__ = ["MAX_PARTY", "SUITE", "RoundContext", "SecAggParams", "compute_session_id"]

#: Version and algorithm marker carried by every message and persisted state.
SUITE = "fedrema-secagg/1:x25519+hkdf-sha256+aes-256-gcm+aes-256-ctr+shamir-p521"
#: Party indices are Shamir x-coordinates: 1..MAX_PARTY.
MAX_PARTY = 65535
_SESSION_LABEL = b"fedrema-secagg/1 session-id"


def _is_int(value: Any) -> bool:
    return type(value) is int


@dataclass(frozen=True)
class SecAggParams:
    """Public parameters of a SecAgg round (agreed before round 0, part of the session id).

    Attributes:
        threshold: t, the Shamir threshold and the minimum number of parties at every stage
            (Bonawitz et al. 2017 §4). At least 2.
        modulus_bits: k; inputs and masks live in Z_{2^k}, k in {24, 32, 64} (24-bit words
            are held in uint32 and packed into 3 bytes on the wire).
        dim: length of the masked vector. With :func:`crypto.secagg.encode_update` the last
            coordinate is the sample weight, so a model with m parameters uses ``dim = m + 1``.
        frac_bits: f, the fixed-point scale 2^f.
        clip: C, the per-coordinate bound applied before weighting.
        max_weight: W, the largest sample weight a site may contribute.
        suite: the algorithm marker; only :data:`SUITE` is accepted.
    """

    threshold: int
    modulus_bits: int
    dim: int
    frac_bits: int
    clip: float
    max_weight: float
    suite: str = SUITE

    def __post_init__(self) -> None:
        if self.suite != SUITE:
            raise ParameterError(f"unsupported suite {self.suite!r}")
        if not (_is_int(self.threshold) and 2 <= self.threshold <= MAX_PARTY):
            raise ParameterError("threshold must be an integer >= 2")
        if not (_is_int(self.modulus_bits)):
            raise ParameterError("modulus_bits must be 24, 32 or 64")
        uint_dtype(self.modulus_bits)
        if not (_is_int(self.dim) and 1 <= self.dim <= 2**31):
            raise ParameterError("dim must be a positive integer")
        if not (_is_int(self.frac_bits) and 0 <= self.frac_bits < self.modulus_bits):
            raise ParameterError("frac_bits must be an integer in [0, modulus_bits)")
        for name in ("clip", "max_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ParameterError(f"{name} must be a number")
            if not (math.isfinite(value) and value > 0):
                raise ParameterError(f"{name} must be positive and finite")
            object.__setattr__(self, name, float(value))

    @property
    def dtype(self) -> np.dtype[Any]:
        """The unsigned dtype of inputs, masks and sums (``<u4`` for 24 and 32 bits, ``<u8``)."""
        return uint_dtype(self.modulus_bits)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, read back by :meth:`from_reader`."""
        return {
            "threshold": self.threshold,
            "modulus_bits": self.modulus_bits,
            "dim": self.dim,
            "frac_bits": self.frac_bits,
            "clip": self.clip,
            "max_weight": self.max_weight,
            "suite": self.suite,
        }

    @classmethod
    def from_reader(cls, r: Reader) -> SecAggParams:
        """Rebuild from a :class:`~crypto.secagg._wire.Reader` over :meth:`to_json` output."""
        r.const("suite", SUITE)
        try:
            params = cls(
                threshold=r.int_("threshold", lo=2, hi=MAX_PARTY),
                modulus_bits=r.int_("modulus_bits", lo=24, hi=64),
                dim=r.int_("dim", lo=1, hi=2**31),
                frac_bits=r.int_("frac_bits", hi=63),
                clip=r.float_("clip"),
                max_weight=r.float_("max_weight"),
            )
        except ParameterError as exc:
            raise MalformedMessage(f"{r.what}: {exc}") from None
        r.done()
        return params


@dataclass(frozen=True)
class RoundContext:
    """Everything a round is bound to; both sides construct it from signed, public data.

    Construction checks ``threshold <= len(parties)`` and the fixed-point headroom
    (``n * W * max(C, 1) * 2^f < 2^(k-1)``; the ``max(C, 1)`` covers the weight coordinate),
    so an unsafe configuration fails before any key is generated.

    Attributes:
        federation_id: the federation's name or id.
        round: the training round this SecAgg session aggregates.
        roster_hash: SHA-256 of the signed roster (32 bytes), pinned by every site.
        params: the round's :class:`SecAggParams`.
        parties: every enrolled party index (sorted, 1..65535), not only those that show up.
    """

    federation_id: str
    round: int
    roster_hash: bytes
    params: SecAggParams
    parties: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.federation_id, str) or not self.federation_id:
            raise ParameterError("federation_id must be a non-empty string")
        if not (_is_int(self.round) and 0 <= self.round < 2**32):
            raise ParameterError("round must be an integer in [0, 2^32)")
        if not isinstance(self.roster_hash, bytes) or len(self.roster_hash) != 32:
            raise ParameterError("roster_hash must be 32 bytes")
        if not isinstance(self.params, SecAggParams):
            raise ParameterError("params must be SecAggParams")
        parties = tuple(self.parties)
        if not all(_is_int(p) and 1 <= p <= MAX_PARTY for p in parties):
            raise ParameterError(f"party indices must be integers in 1..{MAX_PARTY}")
        if list(parties) != sorted(set(parties)):
            raise ParameterError("parties must be strictly increasing")
        object.__setattr__(self, "parties", parties)
        if self.params.threshold > len(parties):
            raise ParameterError("threshold exceeds the number of parties")
        p = self.params
        check_headroom(len(parties), max(p.clip, 1.0), p.frac_bits, p.modulus_bits, p.max_weight)

    @property
    def threshold(self) -> int:
        """Shortcut for ``params.threshold``."""
        return self.params.threshold

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, read back by :meth:`from_reader`."""
        return {
            "federation_id": self.federation_id,
            "round": self.round,
            "roster_hash": b64(self.roster_hash),
            "params": self.params.to_json(),
            "parties": list(self.parties),
        }

    @classmethod
    def from_reader(cls, r: Reader) -> RoundContext:
        """Rebuild from a :class:`~crypto.secagg._wire.Reader` over :meth:`to_json` output."""
        federation_id = r.str_("federation_id")
        round_ = r.int_("round")
        roster_hash = r.bytes_("roster_hash", 32)
        params = SecAggParams.from_reader(r.sub("params"))
        parties = r.int_list("parties", hi=MAX_PARTY)
        r.done()
        try:
            return cls(federation_id, round_, roster_hash, params, parties)
        except ParameterError as exc:
            raise MalformedMessage(f"{r.what}: {exc}") from None

    def canonical_bytes(self) -> bytes:
        """The canonical JSON encoding hashed into the session id."""
        return canonical_json(self.to_json())


def compute_session_id(ctx: RoundContext, keys: Mapping[int, tuple[bytes, bytes]]) -> bytes:
    """SHA-256 over the context and every advertised ``(party, c_pk, s_pk)`` in U1.

    ``keys`` maps party index to its (c_pk, s_pk); the order of the mapping is irrelevant.
    """
    fields = [_SESSION_LABEL, ctx.canonical_bytes(), u32(len(keys))]
    for party in sorted(keys):
        c_pk, s_pk = keys[party]
        fields += [u32(party), c_pk, s_pk]
    return hashlib.sha256(encode_fields(fields)).digest()
