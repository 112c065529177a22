"""Canonical JSON and its strict parser: the bytes every signature covers, read safely."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto.canonical import MAX_DEPTH, canonical_json, parse_json


def test_canonical_json_is_stable_and_refuses_nan() -> None:
    assert canonical_json({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'.encode()
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),  # would exhaust the C stack
        (b'{"a":' * 40 + b"1" + b"}" * 40, "nested deeper"),  # parses, but too deep for us
        (b'{"a": 1, "a": 2}', "twice"),
        (b'{"a": NaN}', "non-finite"),
        (b'{"a": Infinity}', "non-finite"),
        (b'{"a": 1e999}', "no canonical JSON"),  # parses as inf
        (b'{"a": "\\ud800"}', "no canonical JSON"),  # a lone surrogate
        (b'{"a": ' + b"9" * 5000 + b"}", "integer string conversion"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{", "not JSON"),
        (b"", "not JSON"),
    ],
)
def test_parse_json_refuses_unsound_input_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_json(raw)


def test_parse_json_accepts_nesting_up_to_the_limit() -> None:
    raw = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert parse_json(raw) is not None
    with pytest.raises(ValueError):
        parse_json(b"[" + raw + b"]")


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(_json)
def test_canonical_round_trip(value: object) -> None:
    assert canonical_json(parse_json(canonical_json(value))) == canonical_json(value)


@given(st.binary(max_size=200))
def test_parse_json_never_raises_anything_but_value_error(raw: bytes) -> None:
    with contextlib.suppress(ValueError):
        parse_json(raw)
