"""Canonical JSON: the one encoding every signature in fedrema covers, and its strict parser.

A signature is over bytes, so one value must have exactly one byte string: sorted keys, no
whitespace, UTF-8, no NaN or infinity. The parser is the other half: it reads what anyone
could have written into a shared folder, so it refuses, as a ``ValueError`` with a short
reason, everything that is not plain JSON of a sane shape (deep nesting that would exhaust
the stack, duplicate keys that two readers could resolve differently, non-finite numbers,
integers too long to convert, text that is not UTF-8) instead of letting it crash a reader.

>>> canonical_json({"b": 1, "a": [True, None]})
b'{"a":[true,null],"b":1}'
>>> parse_json(b'{"a": [[[1]]]}', max_depth=3)
Traceback (most recent call last):
...
ValueError: nested deeper than 3 levels
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

__all__ = ["MAX_DEPTH", "canonical_json", "parse_json"]

#: Nesting no fedrema file needs (envelopes, messages and ledger lines stay below 8).
MAX_DEPTH = 32


def canonical_json(obj: Any) -> bytes:
    """Serialize ``obj`` canonically (sorted keys, no whitespace, UTF-8, no NaN/inf)."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a key appears twice in one object")
    return dict(pairs)


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"non-finite number {name}")


def _depth_at_most(obj: Any, limit: int) -> None:
    """Walk without recursion, so a hostile shape cannot exhaust the stack here either."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                raise ValueError(f"nested deeper than {limit} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))


def parse_json(data: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse untrusted JSON bytes; ``ValueError`` (one short reason) for anything unsound.

    The result is also checked to re-encode canonically (``1e999`` parses as infinity, a
    lone surrogate as an unencodable string), so a signature check over it cannot crash.
    """
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None
    except ValueError as exc:  # our hooks, and integers of more than 4300 digits
        raise ValueError(str(exc).split(":")[0]) from None
    _depth_at_most(obj, max_depth)
    try:
        canonical_json(obj)
    except (ValueError, UnicodeEncodeError):
        raise ValueError("holds a number or string that has no canonical JSON") from None
    return obj
