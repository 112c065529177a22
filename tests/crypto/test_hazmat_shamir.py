"""Shamir over GF(2^521-1): any t shares recover, t-1 do not, shares are checked."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from secagg_harness import DeterministicRandom

from crypto.errors import InvalidShare, ParameterError
from crypto.hazmat import shamir
from crypto.hazmat.shamir import PRIME, SHARE_LEN, Share


def _recovers(shares: list[Share], secret: bytes) -> bool:
    """Whether ``shares`` interpolate to ``secret`` (InvalidShare: not even a 32-byte value)."""
    try:
        return shamir.combine(shares) == secret
    except InvalidShare:
        return False


@settings(deadline=None, max_examples=40)
@given(
    secret=st.binary(min_size=32, max_size=32),
    n=st.integers(2, 9),
    data=st.data(),
)
def test_every_t_subset_recovers_and_t_minus_1_does_not(secret: bytes, n: int, data) -> None:
    t = data.draw(st.integers(1, n))
    xs = data.draw(st.permutations(range(1, 40)))[:n]
    shares = shamir.split(secret, threshold=t, xs=xs, rng=os.urandom)
    assert sorted(shares) == sorted(xs)
    for subset in itertools.islice(itertools.combinations(shares.values(), t), 20):
        assert shamir.combine(subset) == secret
    assert shamir.combine(list(shares.values())) == secret  # more consistent shares: same
    if t > 1:
        assert not _recovers(list(shares.values())[: t - 1], secret)


def test_shares_serialize_to_fixed_length() -> None:
    shares = shamir.split(bytes(32), threshold=2, xs=[1, 2, 65535])
    for share in shares.values():
        raw = share.to_bytes()
        assert len(raw) == SHARE_LEN == 68
        assert Share.from_bytes(raw) == share


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        bytes(SHARE_LEN - 1),
        bytes(SHARE_LEN + 1),
        bytes(SHARE_LEN),  # x = 0 is the secret's coordinate, never a share
        (1).to_bytes(2, "big") + PRIME.to_bytes(66, "big"),  # y outside the field
    ],
)
def test_malformed_shares_are_rejected(raw: bytes) -> None:
    with pytest.raises(InvalidShare):
        Share.from_bytes(raw)


def test_tampered_share_never_yields_the_secret_silently() -> None:
    secret = bytes(range(32))
    shares = shamir.split(secret, threshold=3, xs=[1, 2, 3, 4])
    bad = Share(2, (shares[2].y + 1) % PRIME)
    assert not _recovers([shares[1], bad, shares[3]], secret)


def test_combine_rejects_duplicates_and_empty() -> None:
    shares = shamir.split(bytes(32), threshold=2, xs=[1, 2])
    with pytest.raises(InvalidShare):
        shamir.combine([shares[1], shares[1]])
    with pytest.raises(InvalidShare):
        shamir.combine([])


def test_coefficients_come_from_the_injected_source() -> None:
    a = shamir.split(bytes(32), threshold=3, xs=[1, 2, 3], rng=DeterministicRandom(5))
    b = shamir.split(bytes(32), threshold=3, xs=[1, 2, 3], rng=DeterministicRandom(5))
    c = shamir.split(bytes(32), threshold=3, xs=[1, 2, 3], rng=DeterministicRandom(6))
    assert a == b != c


@pytest.mark.parametrize(
    ("secret", "t", "xs"),
    [(bytes(31), 2, [1, 2]), (bytes(32), 3, [1, 2]), (bytes(32), 0, [1]), (bytes(32), 2, [1, 1])],
)
def test_split_rejects_bad_arguments(secret: bytes, t: int, xs: list[int]) -> None:
    with pytest.raises(ParameterError):
        shamir.split(secret, threshold=t, xs=xs)
