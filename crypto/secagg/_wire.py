"""Canonical JSON for messages and persisted states: strict in what it accepts.

Every encoding is canonical (sorted keys, no spaces, UTF-8, standard base64 with padding),
and a decoder re-encodes what it parsed and refuses input that differs. So one value has
exactly one byte string, which makes write-once files, signatures and replay checks exact.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, NoReturn

from crypto.canonical import canonical_json, parse_json
from crypto.errors import InvalidShare, MalformedMessage
from crypto.hazmat.shamir import SHARE_LEN, Share

__all__ = ["Reader", "b64", "canonical_json", "frozen_map", "load_canonical", "party_map_json"]

_MAX_INT = 2**32 - 1


def b64(data: bytes) -> str:
    """Standard base64 with padding."""
    return base64.b64encode(data).decode("ascii")


def load_canonical(data: bytes, what: str) -> Reader:
    """Parse canonical JSON bytes holding an object; raises :class:`MalformedMessage`."""
    if not isinstance(data, bytes | bytearray):
        raise MalformedMessage(f"{what}: expected bytes")
    try:
        obj = parse_json(bytes(data))
    except ValueError as exc:
        raise MalformedMessage(f"{what}: not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise MalformedMessage(f"{what}: expected a JSON object")
    if canonical_json(obj) != bytes(data):
        raise MalformedMessage(f"{what}: not in canonical encoding")
    return Reader(obj, what)


class Reader:
    """Typed access to a parsed JSON object; :meth:`done` refuses keys nobody asked for."""

    def __init__(self, obj: Mapping[str, Any], what: str) -> None:
        self._obj = obj
        self._seen: set[str] = set()
        self.what = what

    def fail(self, reason: str) -> NoReturn:
        raise MalformedMessage(f"{self.what}: {reason}")

    def _get(self, key: str) -> Any:
        if key not in self._obj:
            self.fail(f"missing field {key!r}")
        self._seen.add(key)
        return self._obj[key]

    def done(self) -> None:
        extra = set(self._obj) - self._seen
        if extra:
            self.fail(f"unexpected fields {sorted(extra)}")

    def const(self, key: str, expected: str) -> None:
        if self._get(key) != expected:
            self.fail(f"field {key!r} must be {expected!r}")

    def int_(self, key: str, *, lo: int = 0, hi: int = _MAX_INT) -> int:
        return self.check_int(self._get(key), key, lo=lo, hi=hi)

    def check_int(self, value: Any, key: str, *, lo: int = 0, hi: int = _MAX_INT) -> int:
        if type(value) is not int or not lo <= value <= hi:
            self.fail(f"field {key!r} must be an integer in [{lo}, {hi}]")
        return value

    def float_(self, key: str) -> float:
        value = self._get(key)
        if type(value) is not float or not math.isfinite(value):
            self.fail(f"field {key!r} must be a finite float")
        return value

    def str_(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            self.fail(f"field {key!r} must be a string")
        return value

    def bytes_(self, key: str, length: int | None = None) -> bytes:
        return self.check_bytes(self._get(key), key, length)

    def check_bytes(self, value: Any, key: str, length: int | None = None) -> bytes:
        if not isinstance(value, str):
            self.fail(f"field {key!r} must be base64 text")
        try:
            raw = base64.b64decode(value.encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error):
            self.fail(f"field {key!r} is not valid base64")
        if b64(raw) != value:
            self.fail(f"field {key!r} is not canonical base64")
        if length is not None and len(raw) != length:
            self.fail(f"field {key!r} must be {length} bytes")
        return raw

    def int_list(self, key: str, *, lo: int = 1, hi: int = _MAX_INT) -> tuple[int, ...]:
        value = self._get(key)
        if not isinstance(value, list):
            self.fail(f"field {key!r} must be a list")
        items = tuple(self.check_int(v, key, lo=lo, hi=hi) for v in value)
        if list(items) != sorted(set(items)):
            self.fail(f"field {key!r} must be strictly increasing")
        return items

    def list_(self, key: str) -> Sequence[Any]:
        value = self._get(key)
        if not isinstance(value, list):
            self.fail(f"field {key!r} must be a list")
        return value

    def sub(self, key: str) -> Reader:
        value = self._get(key)
        if not isinstance(value, dict):
            self.fail(f"field {key!r} must be an object")
        return Reader(value, f"{self.what}.{key}")

    def party_map(self, key: str, length: int | None = None) -> dict[int, bytes]:
        """An object mapping decimal party ids (no leading zeros) to base64 bytes."""
        value = self._get(key)
        if not isinstance(value, dict):
            self.fail(f"field {key!r} must be an object")
        out: dict[int, bytes] = {}
        for k, v in value.items():
            if not (k.isascii() and k.isdigit() and len(k) <= 10 and str(int(k)) == k):
                self.fail(f"field {key!r} has a key that is not a party id")
            out[self.check_int(int(k), key, lo=1)] = self.check_bytes(v, key, length)
        return dict(sorted(out.items()))

    def share(self, key: str) -> Share:
        """One base64 Shamir share."""
        return self._parse_share(self.bytes_(key, SHARE_LEN))

    def share_map(self, key: str) -> dict[int, Share]:
        """An object mapping party ids to base64 Shamir shares."""
        return {v: self._parse_share(raw) for v, raw in self.party_map(key, SHARE_LEN).items()}

    def _parse_share(self, raw: bytes) -> Share:
        try:
            return Share.from_bytes(raw)
        except InvalidShare as exc:
            self.fail(str(exc))


def party_map_json(mapping: Mapping[int, bytes]) -> dict[str, str]:
    """The JSON form read back by :meth:`Reader.party_map`."""
    return {str(k): b64(v) for k, v in sorted(mapping.items())}


def frozen_map(mapping: Mapping[int, Any]) -> Mapping[int, Any]:
    """A read-only copy of ``mapping`` sorted by key (for frozen dataclass fields)."""
    if not isinstance(mapping, Mapping):
        raise MalformedMessage(f"expected a mapping, got {type(mapping).__name__}")
    try:
        return MappingProxyType(dict(sorted(mapping.items())))
    except TypeError:
        raise MalformedMessage("mapping keys must be party ids") from None
