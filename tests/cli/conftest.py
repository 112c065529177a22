"""A small real federation driven through the CLI, in-process (typer's CliRunner)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedrema_cli.app import app

SITES = ("cleveland", "hungary", "switzerland", "va")


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout)


def run(*args: str | Path) -> Result:
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return Result(result.exit_code, result.stdout, result.stderr)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under a folder and the hash of its bytes: to prove nothing changed."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@dataclass
class Fed:
    root: Path
    hospitals: Path
    workspace: Path
    coordinator: Path

    def site(self, name: str) -> Path:
        return self.root / name

    def data(self, name: str, split: str = "train") -> Path:
        return self.hospitals / f"{name}_{split}.csv"


def make_federation(
    tmp: Path,
    *extra: str,
    sites: tuple[str, ...] = SITES,
    approve: bool = True,
    workspace: str | None = None,
) -> Fed:
    """Coordinator + sites through `init` (and `approve`); the workspace is a folder or a URL."""
    ws = workspace if workspace is not None else tmp / "ws"
    fed = Fed(tmp, tmp / "hospitals", ws, tmp / "coord")  # type: ignore[arg-type]
    assert run("prepare-data", "heart-disease", "--out", fed.hospitals).exit_code == 0
    out = run(
        "init",
        "-w",
        fed.workspace,
        "-s",
        fed.coordinator,
        "--preset",
        "heart-disease",
        "--rounds",
        "2",
        *extra,
    )
    assert out.exit_code == 0, out.stderr
    for s in sites:
        out = run(
            "init",
            "-w",
            fed.workspace,
            "-s",
            fed.site(s),
            "--site",
            s,
            "--train",
            fed.data(s),
            "--test",
            fed.data(s, "test"),
        )
        assert out.exit_code == 0, out.stderr
    if approve:
        assert run("approve", "-s", fed.coordinator, "--all").exit_code == 0
    return fed


@pytest.fixture
def federation(tmp_path: Path) -> Fed:
    """Four hospitals, secure aggregation on, no DP (fast), 2 rounds, roster approved."""
    return make_federation(tmp_path, "--no-dp")


@pytest.fixture
def private_fed(tmp_path: Path) -> Fed:
    """Four hospitals, DP at epsilon 3 over 2 planned rounds, secure aggregation on."""
    return make_federation(tmp_path, "--epsilon", "3")


@pytest.fixture
def cli() -> Callable[..., Result]:
    return run


def submit_all(fed: Fed, sites: tuple[str, ...] = SITES) -> None:
    """Every site sends what it can; 75 (nothing to send yet) is fine."""
    for s in sites:
        out = run("submit", "-s", fed.site(s))
        assert out.exit_code in (0, 75), out.stderr


def key_exchange(fed: Fed) -> None:
    """Round 1's key exchange: advertise, fix U1, share keys, fix U2."""
    for _ in range(2):
        submit_all(fed)
        assert run("aggregate", "-s", fed.coordinator).exit_code == 0


def train_and_submit(fed: Fed, sites: tuple[str, ...] = SITES) -> None:
    for s in sites:
        out = run("train-local", "-s", fed.site(s))
        assert out.exit_code == 0, out.stderr
    submit_all(fed, sites)


def full_round(fed: Fed) -> None:
    """Train, submit, close, reveal, finish: one round with every site."""
    train_and_submit(fed)
    assert run("aggregate", "-s", fed.coordinator).exit_code == 0
    submit_all(fed)
    assert run("aggregate", "-s", fed.coordinator).exit_code == 0


def run_rounds(fed: Fed, rounds: int) -> None:
    """Round 1's key exchange, then ``rounds`` full rounds with every site."""
    key_exchange(fed)
    for _ in range(rounds):
        full_round(fed)
