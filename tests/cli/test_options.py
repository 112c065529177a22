"""Out-of-range option values: one line naming the option, exit 2 (usage), nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import run


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--epsilon", "-1"], "--epsilon"),
        (["--delta", "2"], "--delta"),
        (["--max-grad-norm", "0"], "--max-grad-norm"),
        (["--threshold", "1"], "--threshold"),
        (["--round-timeout", "-5"], "--round-timeout"),
        (["--lr", "0"], "--lr"),
    ],
)
def test_init_names_the_bad_option(tmp_path: Path, args: list[str], option: str) -> None:
    out = run(
        "init",
        "-w",
        tmp_path / "ws",
        "-s",
        tmp_path / "coord",
        "--preset",
        "heart-disease",
        *args,
    )
    assert out.exit_code == 2, (out.stdout, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"fedrema: error: {option}:"), out.stderr
    assert not (tmp_path / "ws" / "federation.json").exists()


def test_init_says_what_is_wrong_with_a_table_description(tmp_path: Path) -> None:
    out = run(
        "init",
        "-w",
        tmp_path / "ws",
        "-s",
        tmp_path / "coord",
        "--features",
        "a,b",
        "--label",
        "y",
        "--classes",
        "0,0",
    )
    assert out.exit_code == 2
    assert "classes must be unique" in out.stderr


def test_simulate_names_the_bad_option() -> None:
    out = run("simulate", "heart-disease", "--rounds", "1", "--epsilon", "-1")
    assert out.exit_code == 2, (out.stdout, out.stderr)
    assert out.stderr.startswith("fedrema: error: --epsilon:")


@pytest.mark.parametrize(
    ("method", "pair", "named"),
    [
        ("mr-mtl", "lam=abc", "--option lam: input should be a valid number"),
        ("mr-mtl", "lam=-1", "--option lam: input should be greater than or equal to 0"),
        ("pfednet", "k=0", "--option k:"),
        ("fedrema", "similarity=foo", "--option similarity:"),
        ("fedavg", "lam=1", "fedavg has no option lam"),
        ("mr-mtl", "lam", "use KEY=VALUE"),
    ],
)
def test_a_bad_method_option_is_a_usage_error_before_anything_is_written(
    tmp_path: Path, method: str, pair: str, named: str
) -> None:
    """A method option's value is checked with the command's other options: exit 2, one line
    naming it, and no folder made (a second try with the fixed value into the same
    --workdir works)."""
    sim = run(
        "simulate", "heart-disease", "--method", method, "--rounds", "1", "--option", pair,
        "--workdir", tmp_path / "w",
    )  # fmt: skip
    init = run(
        "init", "-w", tmp_path / "ws", "-s", tmp_path / "c", "--preset", "heart-disease",
        "--method", method, "--option", pair,
    )  # fmt: skip
    for out in (sim, init):
        assert out.exit_code == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and named in lines[0], out.stderr
    assert not (tmp_path / "w").exists()
    assert not (tmp_path / "ws").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (("--epsilon", "0"), "--epsilon"),
        (("--epsilon", "nan"), "--epsilon"),
        (("--epsilon", "inf"), "--epsilon"),
        (("--epsilon", "3", "--delta", "2"), "delta"),
        (("--epsilon", "3", "--max-grad-norm", "-1"), "--max-grad-norm"),
    ],
)
def test_init_refuses_a_privacy_policy_out_of_range(
    tmp_path: Path, options: tuple[str, ...], named: str
) -> None:
    out = run(
        "init", "-w", tmp_path / "ws", "-s", tmp_path / "c", "--preset", "heart-disease", *options
    )
    assert out.exit_code == 2, out.stderr
    assert named in out.stderr
    assert not (tmp_path / "ws" / "federation.json").exists()


@pytest.mark.parametrize("command", ["init", "simulate"])
def test_no_dp_with_an_epsilon_is_refused_the_same_way(tmp_path: Path, command: str) -> None:
    where = (
        ("init", "-w", tmp_path / "ws", "-s", tmp_path / "coord", "--preset", "heart-disease")
        if command == "init"
        else ("simulate", "heart-disease", "--rounds", "1")
    )
    out = run(*where, "--no-dp", "--epsilon", "5")
    assert out.exit_code == 2, (out.stdout, out.stderr)
    refusal = "fedrema: error: --no-dp and --epsilon contradict each other"
    assert out.stderr.splitlines() == [refusal]
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_an_epsilon_that_is_not_a_finite_number_says_so(tmp_path: Path, value: str) -> None:
    out = run("init", "-w", tmp_path / "ws", "-s", tmp_path / "c", "--preset", "heart-disease",
              "--epsilon", value)  # fmt: skip
    assert out.exit_code == 2 and "finite number" in out.stderr, out.stderr
    assert not (tmp_path / "ws").exists()


def test_a_fixed_threshold_is_pointed_out_at_init(tmp_path: Path) -> None:
    """t set at init cannot change: say so while the federation can still be made anew."""
    out = run("init", "-w", tmp_path / "ws", "-s", tmp_path / "c", "--preset", "heart-disease",
              "--threshold", "10", "--json")  # fmt: skip
    assert out.exit_code == 0, out.stderr
    assert any("fixed at t = 10" in w for w in out.json()["warnings"])
    out = run("init", "-w", tmp_path / "ws2", "-s", tmp_path / "c2", "--preset", "heart-disease",
              "--json")  # fmt: skip
    assert not any("threshold" in w for w in out.json()["warnings"])
