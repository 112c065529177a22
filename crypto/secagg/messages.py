"""The protocol's wire messages (Bonawitz et al. 2017, Rounds 0-4 minus the consistency check).

Each message is a frozen dataclass with ``to_bytes()`` / ``from_bytes()``. The encoding is
canonical JSON carrying the suite marker and the message type, with bytes in base64;
:class:`MaskedInput` appends its vector as raw little-endian words after a newline
(``header JSON || b"\\n" || payload``), so a 10^6-coordinate vector costs one copy, not a
JSON array; words of a 2^24 ring travel as 3 bytes each (``"dtype": "uint24"``).
``from_bytes`` raises :class:`~crypto.errors.MalformedMessage` on anything that is not
exactly a canonical encoding of a well-formed message; constructors check shapes (types,
lengths, ordering) and leave protocol semantics to the client and server.

Flow of one round (``s`` = site, ``c`` = coordinator):

=========================  ======  ===================================================
message                    route   meaning
=========================  ======  ===================================================
:class:`KeyAdvert`         s -> c  R0: fresh public keys c_pk, s_pk for this round
:class:`KeyRoster`         c -> s  U1: every accepted advert
:class:`ShareKeysMsg`      s -> c  R1: encrypted Shamir shares for each peer + commitment
:class:`MaskingRoster`     c -> s  U2 and the commitments (ciphertexts routed separately)
:class:`MaskedInput`       s -> c  R2: y_u = x_u + self mask + pairwise masks (mod 2^k)
:class:`UnmaskRequest`     c -> s  U3 (survivors) and U2 \\ U3 (dropped)
:class:`UnmaskShares`      s -> c  R4: b-shares of survivors, s_sk-shares of the dropped
=========================  ======  ===================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from crypto.canonical import parse_json
from crypto.errors import MalformedMessage
from crypto.hazmat.prg import UIntArray
from crypto.hazmat.shamir import Share
from crypto.secagg._wire import (
    Reader,
    b64,
    canonical_json,
    frozen_map,
    load_canonical,
    party_map_json,
)
from crypto.secagg.params import MAX_PARTY, SUITE, RoundContext, compute_session_id

__all__ = [
    "COMMITMENT_LEN",
    "PUBLIC_KEY_LEN",
    "KeyAdvert",
    "KeyRoster",
    "MaskedInput",
    "MaskingRoster",
    "Message",
    "ShareKeysMsg",
    "UnmaskRequest",
    "UnmaskShares",
    "parse_message",
]

PUBLIC_KEY_LEN = 32
COMMITMENT_LEN = 32
_DTYPES: dict[str, np.dtype[Any]] = {"uint32": np.dtype("<u4"), "uint64": np.dtype("<u8")}
#: Wire name of a 2^24 ring's words: each uint32 word's low 3 bytes, little-endian.
_UINT24 = "uint24"


def _pack24(words: UIntArray) -> bytes:
    """The low 3 bytes of each little-endian uint32 word, concatenated (one copy)."""
    return np.ascontiguousarray(words, dtype="<u4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()


def _unpack24(payload: memoryview, length: int) -> UIntArray:
    """Inverse of :func:`_pack24`: ``length`` uint32 words below 2^24."""
    out = np.zeros((length, 4), dtype=np.uint8)
    out[:, :3] = np.frombuffer(payload, dtype=np.uint8).reshape(length, 3)
    return out.view("<u4").reshape(length)


M = TypeVar("M", bound="Message")


def _fail(what: str, reason: str, party: int | None = None) -> MalformedMessage:
    return MalformedMessage(f"{what}: {reason}", party=party)


def _check_party(what: str, value: Any) -> int:
    if type(value) is not int or not 1 <= value <= MAX_PARTY:
        raise _fail(what, f"party must be an integer in 1..{MAX_PARTY}")
    return value


def _check_round(what: str, value: Any) -> int:
    if type(value) is not int or not 0 <= value < 2**32:
        raise _fail(what, "round must be an integer in [0, 2^32)")
    return value


def _check_bytes(what: str, value: Any, length: int) -> bytes:
    if not isinstance(value, bytes) or len(value) != length:
        raise _fail(what, f"expected {length} bytes")
    return value


def _check_parties(what: str, values: Any) -> tuple[int, ...]:
    items = tuple(_check_party(what, v) for v in values)
    if list(items) != sorted(set(items)):
        raise _fail(what, "party lists must be strictly increasing")
    return items


class Message:
    """Base of all messages: suite/type header, canonical JSON encoding."""

    TYPE: ClassVar[str]

    def _body(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _from_body(cls: type[M], r: Reader) -> M:
        raise NotImplementedError

    def _header(self) -> dict[str, Any]:
        return {"suite": SUITE, "type": self.TYPE, **self._body()}

    def to_bytes(self) -> bytes:
        """Canonical encoding (see module docstring)."""
        return canonical_json(self._header())

    @classmethod
    def _reader(cls, data: bytes) -> Reader:
        r = load_canonical(data, cls.TYPE)
        r.const("suite", SUITE)
        r.const("type", cls.TYPE)
        return r

    @classmethod
    def from_bytes(cls: type[M], data: bytes) -> M:
        """Parse :meth:`to_bytes` output; raises :class:`MalformedMessage` on anything else."""
        r = cls._reader(data)
        msg = cls._from_body(r)
        r.done()
        return msg


@dataclass(frozen=True)
class KeyAdvert(Message):
    """R0 AdvertiseKeys: party ``party``'s fresh X25519 public keys for ``round``."""

    TYPE: ClassVar[str] = "KeyAdvert"
    party: int
    round: int
    c_pk: bytes
    s_pk: bytes

    def __post_init__(self) -> None:
        _check_party(self.TYPE, self.party)
        _check_round(self.TYPE, self.round)
        _check_bytes(self.TYPE, self.c_pk, PUBLIC_KEY_LEN)
        _check_bytes(self.TYPE, self.s_pk, PUBLIC_KEY_LEN)

    def _body(self) -> dict[str, Any]:
        return {"party": self.party, "round": self.round, **self._keys_json()}

    def _keys_json(self) -> dict[str, Any]:
        return {"c_pk": b64(self.c_pk), "s_pk": b64(self.s_pk)}

    @classmethod
    def _from_body(cls, r: Reader) -> KeyAdvert:
        return cls(
            r.int_("party", lo=1, hi=MAX_PARTY),
            r.int_("round"),
            r.bytes_("c_pk", PUBLIC_KEY_LEN),
            r.bytes_("s_pk", PUBLIC_KEY_LEN),
        )


@dataclass(frozen=True)
class KeyRoster(Message):
    """U1, fixed by the coordinator: the accepted adverts, sorted by party."""

    TYPE: ClassVar[str] = "KeyRoster"
    round: int
    adverts: tuple[KeyAdvert, ...]

    def __post_init__(self) -> None:
        _check_round(self.TYPE, self.round)
        adverts = tuple(self.adverts)
        if not all(isinstance(a, KeyAdvert) for a in adverts):
            raise _fail(self.TYPE, "adverts must be KeyAdvert")
        _check_parties(self.TYPE, [a.party for a in adverts])
        if any(a.round != self.round for a in adverts):
            raise _fail(self.TYPE, "an advert is for another round")
        object.__setattr__(self, "adverts", adverts)

    @property
    def parties(self) -> tuple[int, ...]:
        """U1, sorted."""
        return tuple(a.party for a in self.adverts)

    def keys(self) -> dict[int, tuple[bytes, bytes]]:
        """``{party: (c_pk, s_pk)}``."""
        return {a.party: (a.c_pk, a.s_pk) for a in self.adverts}

    def session_id(self, ctx: RoundContext) -> bytes:
        """The round's session id: SHA-256 over ``ctx`` and every key in this roster."""
        return compute_session_id(ctx, self.keys())

    def _body(self) -> dict[str, Any]:
        entries = [{"party": a.party, **a._keys_json()} for a in self.adverts]
        return {"round": self.round, "adverts": entries}

    @classmethod
    def _from_body(cls, r: Reader) -> KeyRoster:
        round_ = r.int_("round")
        adverts = []
        for i, entry in enumerate(r.list_("adverts")):
            if not isinstance(entry, dict):
                r.fail("adverts must be objects")
            e = Reader(entry, f"{r.what}.adverts[{i}]")
            adverts.append(
                KeyAdvert(
                    e.int_("party", lo=1, hi=MAX_PARTY),
                    round_,
                    e.bytes_("c_pk", PUBLIC_KEY_LEN),
                    e.bytes_("s_pk", PUBLIC_KEY_LEN),
                )
            )
            e.done()
        return cls(round_, tuple(adverts))


@dataclass(frozen=True)
class ShareKeysMsg(Message):
    """R1 ShareKeys: one AES-GCM ciphertext of (u, v, b-share, s_sk-share) per peer v.

    ``ciphertexts`` maps each peer in U1 other than ``party`` to its ciphertext; the sender's
    own shares stay in its private state. ``commitment`` is SHA-256 over (sid, b_u) and lets
    the coordinator verify the reconstructed self-mask seed.
    """

    TYPE: ClassVar[str] = "ShareKeys"
    party: int
    round: int
    ciphertexts: Mapping[int, bytes]
    commitment: bytes

    def __post_init__(self) -> None:
        _check_party(self.TYPE, self.party)
        _check_round(self.TYPE, self.round)
        _check_bytes(self.TYPE, self.commitment, COMMITMENT_LEN)
        object.__setattr__(self, "ciphertexts", frozen_map(self.ciphertexts))
        for v, blob in self.ciphertexts.items():
            _check_party(self.TYPE, v)
            if not isinstance(blob, bytes):
                raise _fail(self.TYPE, "ciphertexts must be bytes", self.party)

    def _body(self) -> dict[str, Any]:
        return {
            "party": self.party,
            "round": self.round,
            "ciphertexts": party_map_json(self.ciphertexts),
            "commitment": b64(self.commitment),
        }

    @classmethod
    def _from_body(cls, r: Reader) -> ShareKeysMsg:
        return cls(
            r.int_("party", lo=1, hi=MAX_PARTY),
            r.int_("round"),
            r.party_map("ciphertexts"),
            r.bytes_("commitment", COMMITMENT_LEN),
        )


@dataclass(frozen=True)
class MaskingRoster(Message):
    """U2, fixed by the coordinator, with each participant's commitment to b_u.

    The ciphertexts addressed to one site are routed to it separately
    (:func:`crypto.secagg.route_ciphertexts`).
    """

    TYPE: ClassVar[str] = "MaskingRoster"
    round: int
    participants: tuple[int, ...]
    commitments: Mapping[int, bytes]

    def __post_init__(self) -> None:
        _check_round(self.TYPE, self.round)
        object.__setattr__(self, "participants", _check_parties(self.TYPE, self.participants))
        object.__setattr__(self, "commitments", frozen_map(self.commitments))
        for v, c in self.commitments.items():
            _check_party(self.TYPE, v)
            _check_bytes(self.TYPE, c, COMMITMENT_LEN)
        if set(self.commitments) != set(self.participants):
            raise _fail(self.TYPE, "exactly one commitment per participant")

    def _body(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "participants": list(self.participants),
            "commitments": party_map_json(self.commitments),
        }

    @classmethod
    def _from_body(cls, r: Reader) -> MaskingRoster:
        return cls(
            r.int_("round"),
            r.int_list("participants", hi=MAX_PARTY),
            r.party_map("commitments", COMMITMENT_LEN),
        )


@dataclass(frozen=True, eq=False)
class MaskedInput(Message):
    """R2 MaskedInputCollection: the masked vector y_u (uint32 or uint64, 1-D), words mod
    2^``modulus_bits`` (default: the dtype's width; 24 for a uint32 vector whose words are
    all below 2^24, which travel packed in 3 bytes each).

    ``from_bytes`` returns a read-only array backed by the input bytes (no copy), except for
    24-bit words, which are unpacked into a new uint32 array.
    """

    TYPE: ClassVar[str] = "MaskedInput"
    party: int
    round: int
    vector: UIntArray
    modulus_bits: int = 0

    def __post_init__(self) -> None:
        _check_party(self.TYPE, self.party)
        _check_round(self.TYPE, self.round)
        v = self.vector
        if not isinstance(v, np.ndarray) or v.ndim != 1 or v.dtype not in _DTYPES.values():
            raise _fail(self.TYPE, "vector must be a 1-D uint32 or uint64 array", self.party)
        if self.modulus_bits == 0:
            object.__setattr__(self, "modulus_bits", v.dtype.itemsize * 8)
        if self.modulus_bits == 24:
            if v.dtype != _DTYPES["uint32"] or (v.size and int(v.max()) >= 1 << 24):
                raise _fail(self.TYPE, "24-bit words must be uint32 values below 2^24", self.party)
        elif self.modulus_bits != v.dtype.itemsize * 8:
            raise _fail(self.TYPE, "modulus_bits does not match the vector's dtype", self.party)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MaskedInput):
            return NotImplemented
        return (
            (self.party, self.round, self.modulus_bits)
            == (other.party, other.round, other.modulus_bits)
            and self.vector.dtype == other.vector.dtype
            and np.array_equal(self.vector, other.vector)
        )

    __hash__ = None  # type: ignore[assignment]

    def _dtype_name(self) -> str:
        if self.modulus_bits == 24:
            return _UINT24
        return next(k for k, d in _DTYPES.items() if d == self.vector.dtype)

    def _body(self) -> dict[str, Any]:
        return {
            "party": self.party,
            "round": self.round,
            "dtype": self._dtype_name(),
            "length": int(self.vector.shape[0]),
        }

    def to_bytes(self) -> bytes:
        """``canonical JSON header || b"\\n" || little-endian words``, built in one copy."""
        name = self._dtype_name()
        if name == _UINT24:
            payload: Any = _pack24(self.vector)
        else:
            payload = np.ascontiguousarray(self.vector, dtype=_DTYPES[name]).data.cast("B")
        return b"".join((canonical_json(self._header()), b"\n", payload))

    @classmethod
    def from_bytes(cls, data: bytes) -> MaskedInput:
        """Parse :meth:`to_bytes` output; raises :class:`MalformedMessage` on anything else."""
        if not isinstance(data, bytes):
            raise _fail(cls.TYPE, "expected bytes")
        cut = data.find(b"\n")
        if cut < 0:
            raise _fail(cls.TYPE, "missing payload separator")
        r = cls._reader(data[:cut])
        party = r.int_("party", lo=1, hi=MAX_PARTY)
        round_ = r.int_("round")
        dtype_name = r.str_("dtype")
        if dtype_name not in (*_DTYPES, _UINT24):
            r.fail("dtype must be uint24, uint32 or uint64")
        itemsize = 3 if dtype_name == _UINT24 else _DTYPES[dtype_name].itemsize
        length = r.int_("length", hi=2**31)
        r.done()
        payload = memoryview(data)[cut + 1 :]
        if len(payload) != length * itemsize:
            raise _fail(cls.TYPE, "payload length does not match the header", party)
        if dtype_name == _UINT24:
            return cls(party, round_, _unpack24(payload, length), 24)
        return cls(party, round_, np.frombuffer(payload, dtype=_DTYPES[dtype_name]))


@dataclass(frozen=True)
class UnmaskRequest(Message):
    """U3 (``survivors``, whose masked inputs arrived) and ``dropped`` = U2 \\ U3."""

    TYPE: ClassVar[str] = "UnmaskRequest"
    round: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_round(self.TYPE, self.round)
        object.__setattr__(self, "survivors", _check_parties(self.TYPE, self.survivors))
        object.__setattr__(self, "dropped", _check_parties(self.TYPE, self.dropped))

    def _body(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "survivors": list(self.survivors),
            "dropped": list(self.dropped),
        }

    @classmethod
    def _from_body(cls, r: Reader) -> UnmaskRequest:
        return cls(
            r.int_("round"),
            r.int_list("survivors", hi=MAX_PARTY),
            r.int_list("dropped", hi=MAX_PARTY),
        )


@dataclass(frozen=True)
class UnmaskShares(Message):
    """R4 Unmasking: shares of b_v for survivors v, shares of s_v^SK for dropped v.

    Every share is a point at x = ``party`` (the sender holds the share at its own index).
    """

    TYPE: ClassVar[str] = "UnmaskShares"
    party: int
    round: int
    self_seed_shares: Mapping[int, Share]
    key_shares: Mapping[int, Share]

    def __post_init__(self) -> None:
        _check_party(self.TYPE, self.party)
        _check_round(self.TYPE, self.round)
        object.__setattr__(self, "self_seed_shares", frozen_map(self.self_seed_shares))
        object.__setattr__(self, "key_shares", frozen_map(self.key_shares))
        for mapping in (self.self_seed_shares, self.key_shares):
            for v, share in mapping.items():
                _check_party(self.TYPE, v)
                if not isinstance(share, Share) or share.x != self.party:
                    raise _fail(self.TYPE, "a share is not at the sender's index", self.party)
        if set(self.self_seed_shares) & set(self.key_shares):
            raise _fail(self.TYPE, "both secrets revealed for one peer", self.party)

    def _body(self) -> dict[str, Any]:
        def enc(m: Mapping[int, Share]) -> dict[str, str]:
            return party_map_json({v: s.to_bytes() for v, s in m.items()})

        return {
            "party": self.party,
            "round": self.round,
            "self_seed_shares": enc(self.self_seed_shares),
            "key_shares": enc(self.key_shares),
        }

    @classmethod
    def _from_body(cls, r: Reader) -> UnmaskShares:
        return cls(
            r.int_("party", lo=1, hi=MAX_PARTY),
            r.int_("round"),
            r.share_map("self_seed_shares"),
            r.share_map("key_shares"),
        )


_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        KeyAdvert,
        KeyRoster,
        ShareKeysMsg,
        MaskingRoster,
        MaskedInput,
        UnmaskRequest,
        UnmaskShares,
    )
}


def parse_message(data: bytes) -> Message:
    """Parse any message by its ``type`` field; raises :class:`MalformedMessage`."""
    if not isinstance(data, bytes):
        raise MalformedMessage("expected bytes")
    header = data.split(b"\n", 1)[0]
    try:
        kind = parse_json(header).get("type")
    except (ValueError, AttributeError):
        raise MalformedMessage("not a fedrema-secagg message") from None
    if not isinstance(kind, str) or kind not in _TYPES:
        raise MalformedMessage(f"unknown message type {kind!r}")
    return _TYPES[kind].from_bytes(data)
