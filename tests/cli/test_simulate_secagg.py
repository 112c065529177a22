"""`fedrema simulate` with and without secure aggregation, and with a hospital dropping out (#3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crypto.secagg._derive import SHARE_CIPHERTEXT_LEN
from tests.cli.conftest import SITES, run
from tests.signed_files import read_signed


def _simulate(*extra: str) -> dict:
    out = run(
        "simulate",
        "heart-disease",
        "--method",
        "fedavg",
        "--rounds",
        "3",
        "--seed",
        "2",
        "--no-dp",
        "--json",
        *extra,
    )
    assert out.exit_code == 0, out.stderr
    return out.json()


def test_secure_aggregation_changes_nothing_but_quantization_noise() -> None:
    wide = ("--secagg-bits", "64", "--broadcast", "float32")  # every round before #11
    masked = _simulate(*wide)
    plain = _simulate("--no-secure-aggregation", "--broadcast", "float32")
    assert masked["secure_aggregation"] and not plain["secure_aggregation"]
    # Fixed point at 2^-24 per coordinate: the models differ by ~1e-7, far below one test
    # sample; every prediction and so every accuracy is the same.
    for site in SITES:
        assert masked["sites"][site]["accuracy"] == plain["sites"][site]["accuracy"]
        assert masked["sites"][site]["auc"] == pytest.approx(plain["sites"][site]["auc"], abs=1e-4)
    # The default wire format (2^24 sums at 2^-10 under the tight public bounds simulate
    # declares, float16 model) cuts the big payloads and moves the models by rounding noise
    # only: the same accuracy, AUC within 0.005.
    narrow = _simulate()
    for site in SITES:
        assert narrow["sites"][site]["accuracy"] == plain["sites"][site]["accuracy"]
        assert narrow["sites"][site]["auc"] == pytest.approx(plain["sites"][site]["auc"], abs=5e-3)
    up = lambda r: r["communication"]["mean"]["up_by_kind"]  # noqa: E731
    down = lambda r: r["communication"]["mean"]["down_by_kind"]  # noqa: E731
    assert up(narrow)["masked-update"] < 0.4 * up(masked)["masked-update"]  # 3 bytes, not 8
    assert down(narrow)["model"] < 0.6 * down(masked)["model"]
    # A site checks its peers' keys by the advert signatures the key roster carries, and
    # reads only the n - 1 ciphertexts addressed to it, not their senders' envelopes.
    assert "key-advert" not in down(narrow)
    assert down(narrow)["shares"] == (len(SITES) - 1) * SHARE_CIPHERTEXT_LEN


def test_config_bounds_keep_the_32_bit_sum() -> None:
    """--secagg-bounds config (the defaults `fedrema init` writes: W = 100,000, C = 64) has
    no room for 2^24 with 4 fractional bits, so the sum stays 2^32: 4 bytes a word."""
    loose, tight = _simulate("--secagg-bounds", "config"), _simulate("--secagg-bits", "24")
    up = lambda r: r["communication"]["mean"]["up_by_kind"]["masked-update"]  # noqa: E731
    assert 0.74 < up(tight) / up(loose) < 0.76
    for site in SITES:
        assert tight["sites"][site]["accuracy"] == loose["sites"][site]["accuracy"]


@pytest.mark.parametrize(
    ("drop", "survivors_of_that_round", "in_round_3"),
    [
        # Dropped after submitting: its update is in the sum, it just never reveals (and so
        # never shares keys for round 3, which goes on without it).
        ("va:unmask@2", ["cleveland", "hungary", "switzerland", "va"], False),
        # Dropped before submitting: round 1 goes on without it; it advertises new keys,
        # misses round 2 (already keyed) and is back in round 3.
        ("switzerland:submit@1", ["cleveland", "hungary", "va"], True),
    ],
)
def test_the_federation_finishes_when_a_hospital_drops(
    drop: str, survivors_of_that_round: list[str], in_round_3: bool, tmp_path: Path
) -> None:
    result = _simulate("--drop", drop, "--workdir", str(tmp_path / "sim"))
    assert result["drops"] == [drop]
    assert all(result["sites"][s]["accuracy"] is not None for s in SITES)
    r = int(drop.split("@")[1])
    body = read_signed(tmp_path / "sim/workspace/rounds" / f"{r:04d}" / "result.json")
    assert body["body"]["survivors"] == survivors_of_that_round
    last = read_signed(tmp_path / "sim/workspace/rounds/0003/result.json")["body"]
    site = drop.split(":")[0]
    assert (site in last["survivors"]) is in_round_3
