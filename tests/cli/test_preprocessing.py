"""Preprocessing that DP covers: public feature ranges instead of each site's own statistics.

A site's own mean and std are a function of its records that DP-SGD's accounting does not
cover (and they are written into exported models). With ranges fixed by the federation from
public knowledge, every site applies the same map whatever its records, and the privacy report
lists preprocessing as covered.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedrema_cli.data.datasets import heart_disease
from tests.cli.conftest import SITES, Fed, run, run_rounds

TABLE = ("--features", "age,chol,thalach", "--label", "target", "--classes", "0,1")


def _init(tmp_path: Path, *extra: str) -> tuple[int, str, str]:
    out = run("init", "-w", tmp_path / "ws", "-s", tmp_path / "coord", *TABLE, *extra)
    return out.exit_code, out.stdout, out.stderr


def test_public_ranges_are_part_of_the_signed_federation(tmp_path: Path) -> None:
    code, stdout, _ = _init(
        tmp_path, "--epsilon", "3", "--feature-ranges", "thalach=60:220, age=20:80,chol=0:600,",
        "--json",
    )  # fmt: skip
    assert code == 0 and json.loads(stdout)["warnings"] == []
    body = json.loads((tmp_path / "ws" / "federation.json").read_text())["body"]
    ranges = body["data"]["feature_ranges"]["ranges"]
    assert ranges == [[20.0, 80.0], [0.0, 600.0], [60.0, 220.0]]  # in feature order


def test_dp_with_fitted_statistics_is_created_with_a_warning(tmp_path: Path) -> None:
    code, _, stderr = _init(tmp_path, "--epsilon", "3")
    assert code == 0
    assert "the DP guarantee does not cover" in stderr and "--feature-ranges" in stderr
    code, stdout, _ = _init(tmp_path / "2", "--no-dp", "--json")
    assert code == 0 and json.loads(stdout)["warnings"] == []  # no DP: nothing to cover


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("age=20:80,chol=0:600", "missing: thalach"),
        ("age=20:80,chol=0:600,thalach=60:220,bmi=10:60", "not features: bmi"),
        ("age=20-80,chol=0:600,thalach=60:220", "'age=20-80' is not NAME=LOW:HIGH"),
        ("age=80:20,chol=0:600,thalach=60:220", "finite low < high"),
        ("age=20:80,age=30:70,chol=0:600,thalach=60:220", "gives 'age' twice"),
    ],
)
def test_bad_ranges_get_one_line_and_nothing_is_written(
    tmp_path: Path, spec: str, message: str
) -> None:
    code, _, stderr = _init(tmp_path, "--feature-ranges", spec)
    assert code == 2 and message in stderr  # a bad option value: a usage error
    assert len([line for line in stderr.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "ws" / "federation.json").exists()


def test_a_preset_brings_its_own_ranges(tmp_path: Path) -> None:
    out = run("init", "-w", tmp_path / "ws", "-s", tmp_path / "c", "--preset", "heart-disease",
              "--feature-ranges", "age=0:1")  # fmt: skip
    assert out.exit_code == 2 and "a preset has its own" in out.stderr


def test_every_hospital_scales_alike_and_the_report_says_it_is_covered(private_fed: Fed) -> None:
    fed = private_fed
    run_rounds(fed, 1)
    public = heart_disease.SCHEMA.feature_ranges
    assert public is not None
    cards = []
    for s in SITES:
        out = run("personalize", "-s", fed.site(s), "--export", fed.root / f"model-{s}")
        assert out.exit_code == 0, out.stderr
        cards.append(json.loads((fed.root / f"model-{s}" / "model-card.json").read_text()))
    # the exported map is the public one at every hospital: nothing fitted on any record
    assert all(c["standardizer"] == public.standardizer().model_dump(mode="json") for c in cards)
    report = run("privacy", "report", "-w", fed.workspace, "--json")
    assert report.exit_code == 0, report.stderr
    assumptions = report.json()["assumptions"]
    assert any("preprocessing, a fixed map" in c for c in assumptions["covered"])
    assert not any("preprocessing" in c for c in assumptions["not_covered"])
