"""Differential privacy through the CLI: the gate, the ledger, restarts, reports, audits (#4)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pypdf import PdfReader

from fedrema_cli.data.tables import fingerprint
from privacy import PrivacyPolicy, plan_round
from privacy.analysis import epsilon as opacus_epsilon
from tests.cli.conftest import (
    SITES,
    Fed,
    full_round,
    key_exchange,
    make_federation,
    run,
    run_rounds,
    snapshot,
)
from tests.signed_files import read_signed, write_signed


def _ledger_lines(fed: Fed, site: str) -> list[str]:
    return (fed.site(site) / "ledger.jsonl").read_text().splitlines(keepends=True)


def test_two_private_rounds_compose_and_stay_within_budget(private_fed: Fed) -> None:
    fed = private_fed
    run_rounds(fed, 1)
    first = json.loads(_ledger_lines(fed, "va")[0])
    full_round(fed)
    lines = _ledger_lines(fed, "va")
    assert len(lines) == 2
    second = json.loads(lines[1])
    # Composed, not last-round: the second entry spends more than the first ...
    assert second["epsilon_after"] > first["epsilon_after"]
    # ... equals the accountant over both rounds ...
    history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in (first, second)]
    assert second["epsilon_after"] == pytest.approx(
        opacus_epsilon(history, delta=1e-5, mechanism="rdp"), abs=1e-9
    )
    # ... and lands at (not over) the target the planner aimed for.
    assert 2.9 < second["epsilon_after"] <= 3.0 + 1e-9
    # The site's own record: what ran is what Opacus counted for this dataset size.
    plan = plan_round(
        PrivacyPolicy(
            target_epsilon=3,
            delta=1e-5,
            max_grad_norm=1.0,
            planned_rounds=2,
            local_epochs=1,
            batch_size=16,
        ),
        dataset_size=85,
    )
    assert (second["steps"], second["sample_rate"]) == (plan.steps_per_round, plan.sample_rate)
    # Every entry is published for auditors, and the report agrees with the ledgers.
    published = sorted(p.name for p in (fed.workspace / "ledger" / "va").iterdir())
    assert published == ["0001.json", "0002.json"]
    pdf = fed.root / "report.pdf"
    report = run(
        "privacy", "report", "-w", fed.workspace, "--json", "--html", fed.root / "report.html",
        "--pdf", pdf,
    )  # fmt: skip
    assert report.exit_code == 0, report.stderr
    data = report.json()
    assert data["verified"] and [s["site"] for s in data["sites"]] == sorted(SITES)
    va = next(s for s in data["sites"] if s["site"] == "va")
    assert va["epsilon"] == pytest.approx(second["epsilon_after"], abs=1e-9)
    html = (fed.root / "report.html").read_text()
    assert "data:image/png;base64," in html and "add/remove one record" in html
    assert "label counts" not in html  # no round-0 release here, so no legend entry for one
    assert "several records is protected at about that many times" in html
    # Who and when: the keys a person compared at approval, the coordinator's round times.
    status = run("status", "-s", fed.site("va"), "--json").json()
    assert data["coordinator_fingerprint"] == status["coordinator_fingerprint"]
    enrolled = run("approve", "-s", fed.coordinator, "--json").json()["enrollments"]
    assert {s["site"]: s["fingerprint"] for s in data["sites"]} == {
        e["site"]: e["fingerprint"] for e in enrolled
    }
    assert [r["round"] for r in data["round_results"]] == [1, 2]
    assert all(r["closed_at"] for r in va["rounds"])
    # The filed PDF is the same document: its text has delta, the rounds, pages, the digest.
    text = " ".join(" ".join(p.extract_text() for p in PdfReader(pdf).pages).split())
    assert pdf.read_bytes().startswith(b"%PDF") and "δ = 1e-05" in text
    assert "page 1 of " in text and data["federation"] in text
    assert data["digest"] in text.replace(" ", "")
    for s in data["sites"]:
        assert s["fingerprint"] in text
        for r in s["rounds"]:
            assert f"{r['steps']} {r['sample_rate']:.4g} {r['noise_multiplier']:.4g}" in text
    # Run again later: the same ledgers give the same digest (how a DPO checks a filed copy).
    again = run("privacy", "report", "-w", fed.workspace, "--json")
    assert again.json()["digest"] == data["digest"]
    # A filed report is not overwritten unnoticed, and never a link or a device.
    filed = (fed.root / "report.html").read_bytes()
    over = run("privacy", "report", "-w", fed.workspace, "--html", fed.root / "report.html")
    assert over.exit_code == 1 and "exists; refusing to overwrite" in over.stderr
    assert (fed.root / "report.html").read_bytes() == filed
    (fed.root / "link.html").symlink_to(fed.root / "report.html")
    for target in (fed.root / "link.html", Path("/dev/null")):
        out = run("privacy", "report", "-w", fed.workspace, "--html", target, "--force")
        assert out.exit_code == 1 and "refusing to replace it" in out.stderr, out.stderr
    assert (fed.root / "link.html").is_symlink() and Path("/dev/null").is_char_device()
    # Both asked for, the second refused: refused before anything is written.
    fresh = fed.root / "fresh.html"
    both = run("privacy", "report", "-w", fed.workspace, "--html", fresh, "--pdf", pdf)
    assert both.exit_code == 1 and "--pdf" in both.stderr and not fresh.exists()
    forced = run("privacy", "report", "-w", fed.workspace, "--html", fed.root / "report.html",
                 "--force")  # fmt: skip
    assert forced.exit_code == 0 and (fed.root / "report.html").read_bytes() != filed


def test_the_budget_gate_refuses_a_round_that_would_cross_it(private_fed: Fed) -> None:
    fed = private_fed
    run_rounds(fed, 1)
    # The hospital's table shrinks to 30 records: a larger sampling rate per round, so the
    # second round would spend more than the budget has left.
    data = fed.data("va")
    rows = data.read_text().splitlines(keepends=True)
    data.write_text("".join(rows[:31]))
    # A changed file is refused first (exit 1, tests/cli/test_unattended.py); here the site's
    # record says it joined with the smaller file, so the budget gate is what answers.
    meta_path = fed.site("va") / "site.json"
    meta = json.loads(meta_path.read_text())
    meta["data_sha256"]["train"] = fingerprint(data)
    meta_path.write_text(json.dumps(meta))
    before = snapshot(fed.site("va")), snapshot(fed.workspace)
    out = run("train-local", "-s", fed.site("va"))
    assert out.exit_code == 4, out.stderr
    assert "epsilon" in out.stderr and "budget" in out.stderr.lower()
    assert "(next: this site can train no more rounds; `fedrema withdraw`" in out.stderr
    # status says the same, instead of sending the site back to `train-local`
    status = run("status", "-s", fed.site("va"), "--json").json()
    assert status["next"].startswith("privacy budget spent") and "train-local" not in status["next"]
    assert "`fedrema personalize`" in status["next"]
    assert (snapshot(fed.site("va")), snapshot(fed.workspace)) == before
    assert "budget spent" in run("status", "-s", fed.site("va")).stdout
    # ... and once the round closes without it, status does not ask it to rejoin
    others = ("cleveland", "hungary", "switzerland")
    for s in others:
        assert run("train-local", "-s", fed.site(s)).exit_code == 0
        assert run("submit", "-s", fed.site(s)).exit_code == 0
    assert run("aggregate", "-s", fed.coordinator).exit_code == 75  # va is waited for ...
    out = run("withdraw", "-s", fed.site("va"), "--yes", "--json")  # ... until it withdraws
    assert out.exit_code == 0 and out.json()["reason"] == "privacy budget spent", out.stderr
    out = run("aggregate", "-s", fed.coordinator)
    assert out.exit_code == 0 and "not waiting for va" in out.stdout, out.stderr
    status = run("status", "-s", fed.site("va"), "--json").json()
    assert status["next"].startswith("withdrew from round 2") and "rejoin" not in status["next"]
    out = run("personalize", "-s", fed.site("va"), "--json")  # what it can still do
    assert out.exit_code == 0 and out.json()["after_round"] == 1, out.stderr


def test_a_site_restarted_without_its_cache_continues_its_spend(private_fed: Fed) -> None:
    fed = private_fed
    run_rounds(fed, 1)
    (fed.site("va") / "accountant.json").unlink()  # only a cache: the ledger is the truth
    full_round(fed)
    first, second = (json.loads(line) for line in _ledger_lines(fed, "va"))
    assert second["epsilon_after"] > first["epsilon_after"] > 0


def test_a_crash_before_the_ledger_append_is_repaired_not_lost(private_fed: Fed) -> None:
    fed = private_fed
    key_exchange(fed)
    assert run("train-local", "-s", fed.site("va")).exit_code == 0
    # Simulate a crash right after the update was saved but before the ledger append.
    (fed.site("va") / "ledger.jsonl").write_text("")
    (fed.site("va") / "accountant.json").unlink()
    assert run("submit", "-s", fed.site("va")).exit_code == 0
    lines = _ledger_lines(fed, "va")
    assert len(lines) == 1 and json.loads(lines[0])["round"] == 1
    assert (fed.workspace / "ledger" / "va" / "0001.json").exists()


@pytest.mark.parametrize("edit", ["edit", "delete", "reorder"])
def test_audit_names_the_line_of_a_tampered_ledger(private_fed: Fed, edit: str) -> None:
    fed = private_fed
    run_rounds(fed, 2)
    assert run("audit", "-s", fed.site("va")).exit_code == 0
    path = fed.site("va") / "ledger.jsonl"
    lines = _ledger_lines(fed, "va")
    if edit == "edit":
        entry = json.loads(lines[0])
        entry["noise_multiplier"] *= 2  # claims more noise than ran
        lines[0] = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
    elif edit == "delete":
        del lines[0]
    else:
        lines.reverse()
    path.write_text("".join(lines))
    out = run("audit", "-s", fed.site("va"))
    assert out.exit_code == 3, out.stdout + out.stderr
    assert "va" in out.stderr and "line 1" in out.stderr
    # In plain words: no internal problem codes.
    assert not any(c in out.stderr for c in ("bad_signature", "chain_broken", "edited:"))
    # No spend figure a script could file: only what the verified entries prove.
    for cmd in (("audit",), ("privacy", "report")):
        doc = run(*cmd, "-s", fed.site("va"), "--json").json()
        (va,) = doc["sites"]
        assert va["verified"] is False if "verified" in va else va["status"] != "verified"
        assert va["epsilon"] is None and va["epsilon_verified_at_least"] is None  # line 1 fails
        assert doc["federation"] and doc["generated_at"]


def test_audit_of_the_workspace_names_the_site_and_entry(private_fed: Fed) -> None:
    fed = private_fed
    run_rounds(fed, 1)
    assert run("audit", "-w", fed.workspace).exit_code == 0
    path = fed.workspace / "ledger" / "hungary" / "0001.json"
    doc = read_signed(path)
    doc["body"]["steps"] -= 1  # under-reports the spend
    write_signed(path, doc)
    out = run("audit", "-w", fed.workspace)
    assert out.exit_code == 3
    assert "hungary" in out.stderr and "0001" in out.stderr


def test_simulate_reports_each_sites_epsilon() -> None:
    out = run(
        "simulate",
        "heart-disease",
        "--method",
        "fedavg",
        "--rounds",
        "2",
        "--epsilon",
        "3",
        "--lr",
        "0.07",
        "--json",
    )
    assert out.exit_code == 0, out.stderr
    result = out.json()
    for site in SITES:
        eps = result["sites"][site]["epsilon"]
        assert 2.9 < eps <= 3.0 + 1e-9
    assert result["privacy"] == {"epsilon": 3.0, "delta": 1e-5}
    # what ran, as signed: enough for a script to re-create the run
    config = result["config"]
    assert config["training"]["lr"] == 0.07 and config["training"]["local_epochs"] == 1
    assert config["privacy"]["max_grad_norm"] == 1.0 and config["privacy"]["planned_rounds"] == 2
    assert config["method_options"] == {} and config["finetune_rounds"] == 0
    assert config["secagg"]["enabled"] is True and config["broadcast"] == "float16"


def test_simulated_dp_replays_from_the_seed_but_real_sites_draw_fresh_noise(
    tmp_path: Path,
) -> None:
    args = (
        "simulate",
        "heart-disease",
        "--method",
        "fedavg",
        "--rounds",
        "2",
        "--seed",
        "4",
        "--epsilon",
        "3",
        "--no-secure-aggregation",
        "--json",
    )
    first, second = run(*args).json(), run(*args).json()
    assert first["sites"] == second["sites"]  # a simulation can be reproduced exactly
    # Two real federations, identical in every input: without DP they train the same model,
    # with DP the noise comes from the operating system and the models differ.
    trained = {}
    for dp in ("--no-dp", "--epsilon=3"):
        for k in range(2):
            fed = make_federation(tmp_path / f"{dp}-{k}", dp)
            key_exchange(fed)
            assert run("train-local", "-s", fed.site("va")).exit_code == 0
            trained[dp, k] = (fed.site("va") / "rounds/0001/trained.safetensors").read_bytes()
    assert trained["--no-dp", 0] == trained["--no-dp", 1]
    assert trained["--epsilon=3", 0] != trained["--epsilon=3", 1]


# WeasyPrint opens Pango through cffi when it is imported; on a machine without the library
# the loader fails there. This stands in for that machine: the same failure, at the same call.
_WITHOUT_PANGO = """
import sys, cffi
real = cffi.FFI.dlopen
def dlopen(self, name, *args, **kwargs):
    if "pango" in str(name):
        raise OSError(f"cannot load library {name!r}: cannot open shared object file")
    return real(self, name, *args, **kwargs)
cffi.FFI.dlopen = dlopen
from fedrema_cli.app import main
sys.argv = ["fedrema", *sys.argv[1:]]
main()
"""


def test_a_pdf_without_pango_is_one_clear_error(tmp_path: Path) -> None:
    pdf = tmp_path / "report.pdf"
    out = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PANGO, "privacy", "report", "-w", str(tmp_path / "ws"),
         "--pdf", str(pdf)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert out.stdout == ""  # WeasyPrint's own help block is not printed
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("fedrema: error: cannot write a PDF: WeasyPrint cannot load the Pango")
    assert "apt-get install -y libpango-1.0-0 libpangoft2-1.0-0" in line
    assert "--html writes the same report" in line and not pdf.exists()
