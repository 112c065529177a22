"""Privacy records under attack or loss: nothing makes a site's spend look smaller, nothing crashes.

Each test damages one thing (a ledger line, a published entry, a lost folder) and checks that
the commands exit 3 naming it, and that nothing is trained or reported green meanwhile.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil

import pytest

from tests.cli.conftest import Fed, run, run_rounds
from tests.signed_files import plain, read_signed, write_signed


def test_a_ledger_with_bytes_that_are_not_utf8_is_named_not_a_crash(private_fed: Fed) -> None:
    fed = private_fed
    run_rounds(fed, 1)
    path = fed.site("va") / "ledger.jsonl"
    raw = bytearray(path.read_bytes())
    raw[raw.index(b'"site":"va"') + 8] = 0xFF  # one flipped byte inside a signed string
    path.write_bytes(bytes(raw))
    for cmd in (("audit",), ("privacy", "report"), ("submit",), ("train-local",)):
        out = run(*cmd, "-s", fed.site("va"))
        assert out.exit_code == 3, (cmd, out.stderr)
        assert "line 1" in out.stdout + out.stderr, (cmd, out.stderr)


def test_audit_names_a_published_entry_holding_infinity(private_fed: Fed) -> None:
    fed = private_fed
    run_rounds(fed, 1)
    path = fed.workspace / "ledger" / "va" / "0001.json"
    doc = read_signed(path)
    doc["body"]["noise_multiplier"] = float("inf")  # json writes Infinity
    write_signed(path, doc)
    for cmd in (("audit",), ("privacy", "report")):
        out = run(*cmd, "-w", fed.workspace)  # a finding, not a traceback
        assert out.exit_code == 3, out.stderr
    out = run("audit", "-w", fed.workspace)
    assert "va" in out.stderr and "0001" in out.stderr


def test_audit_of_the_workspace_catches_dropped_final_entries(private_fed: Fed) -> None:
    fed = private_fed
    run_rounds(fed, 2)
    assert run("audit", "-w", fed.workspace).exit_code == 0
    # Whoever can write the workspace deletes va's last published entry: the remaining chain
    # is valid and shorter, so va would look as if it had spent one round less.
    (fed.workspace / "ledger" / "va" / "0002.json").unlink()
    for cmd in (("audit",), ("privacy", "report")):
        out = run(*cmd, "-w", fed.workspace)
        assert out.exit_code == 3, (cmd, out.stdout)
    out = run("audit", "-w", fed.workspace)
    assert "va" in out.stderr and "round 2" in out.stderr


@pytest.mark.parametrize("anchor", ["accountant cache", "published copies"])
def test_a_site_that_lost_its_ledger_does_not_start_its_spend_again(
    private_fed: Fed, anchor: str
) -> None:
    fed = private_fed
    run_rounds(fed, 1)
    # The site's ledger and round records are lost (a bad backup restore, a wiped folder);
    # one anchor of its spend is left: its accountant cache or its signed published copies.
    site = fed.site("va")
    (site / "ledger.jsonl").unlink()
    (site / "rounds" / "0001" / "training.json").unlink()
    if anchor == "accountant cache":
        (fed.workspace / "ledger" / "va" / "0001.json").unlink()
    else:
        (site / "accountant.json").unlink()
    out = run("train-local", "-s", site)
    assert out.exit_code == 3, out.stdout + out.stderr  # not a fresh accountant for round 2
    assert not (site / "rounds" / "0002" / "training.json").exists()
    if anchor == "published copies":  # the one line says how to recover
        assert "(next: restore ledger.jsonl" in out.stderr, out.stderr


@pytest.mark.parametrize("anchor", ["accountant cache", "published copies"])
def test_audit_of_a_site_catches_its_dropped_final_entry(private_fed: Fed, anchor: str) -> None:
    fed = private_fed
    run_rounds(fed, 2)
    assert run("audit", "-s", fed.site("va")).exit_code == 0
    path = fed.site("va") / "ledger.jsonl"
    path.write_text(path.read_text().splitlines(keepends=True)[0])  # a valid, shorter chain
    if anchor == "accountant cache":
        (fed.workspace / "ledger" / "va" / "0002.json").unlink()
    else:
        (fed.site("va") / "accountant.json").unlink()
    for cmd in (("audit",), ("privacy", "report")):
        out = run(*cmd, "-s", fed.site("va"))
        assert out.exit_code == 3, (cmd, out.stdout)
    lines = run("audit", "-s", fed.site("va"), "--json").json()["problem_lines"]
    named = "round 2" if anchor == "published copies" else "accountant"
    assert any(line.startswith("va") and named in line for line in lines), lines


def test_the_filed_report_is_not_green_when_a_published_envelope_fails(private_fed: Fed) -> None:
    fed = private_fed
    run_rounds(fed, 1)
    path = fed.workspace / "ledger" / "va" / "0001.json"
    doc = read_signed(path)
    doc["header"]["author"] = "site:hungary"  # the envelope no longer verifies; the entry does
    write_signed(path, doc)
    html = fed.root / "report.html"
    out = run("privacy", "report", "-w", fed.workspace, "--json", "--html", html)
    assert out.exit_code == 3
    assert out.json()["verified"] is False
    text = html.read_text()
    assert "NOT VERIFIED" in text and "All site ledgers verified" not in text
    assert "ledger/va/0001.json" in text
    audit = run("audit", "-w", fed.workspace)
    assert audit.exit_code == 3 and "ledger/va/0001.json" in audit.stderr


def test_a_finished_round_deleted_from_the_workspace_is_not_reported_verified(
    private_fed: Fed,
) -> None:
    """Round 2's folder and every site's round-2 entry deleted: the chains still verify (they
    are only shorter), but round 3's signed model vouches that round 2 finished, so the report
    and the audit fail (exit 3) instead of filing a lower spend."""
    fed = private_fed
    run_rounds(fed, 2)
    assert (fed.workspace / "rounds" / "0003" / "model.json").exists()
    shutil.rmtree(fed.workspace / "rounds" / "0002")
    for entry in fed.workspace.glob("ledger/*/0002.json"):
        entry.unlink()
    for args in (("privacy", "report"), ("audit",)):
        out = run(*args, "-w", fed.workspace)
        assert out.exit_code == 3, (args, out.stdout, out.stderr)
        assert "rounds/0002/result.json: missing" in out.stderr
        # No site's figure passes as its spend: each fails, with only its proven lower bound.
        for site in run(*args, "-w", fed.workspace, "--json").json()["sites"]:
            assert site["status"] == "failed" and site["epsilon"] is None, site
            assert 0 < site["epsilon_verified_at_least"] < 3.0
    # The site's own ledger still holds round 2, and says the workspace lacks it.
    own = run("privacy", "report", "-s", fed.site("va"), "-w", fed.workspace, "--json")
    assert own.exit_code == 3
    lines = own.json()["problem_lines"]
    assert any("not published (verified) as ledger/va/0002.json" in p for p in lines), lines


def test_published_ledger_entries_do_not_carry_the_raw_hash_of_the_patient_file(
    private_fed: Fed,
) -> None:
    fed = private_fed
    run_rounds(fed, 1)
    published = read_signed(fed.workspace / "ledger" / "va" / "0001.json")["body"]
    file_hash = hashlib.sha256(fed.data("va").read_bytes()).hexdigest()
    assert published["dataset_fingerprint"] != file_hash  # not testable by a data holder
    key = json.loads((fed.site("va") / "ledger-fingerprint-key.json").read_text())
    keyed = hmac.new(
        bytes.fromhex(key["hmac_sha256_key"]), bytes.fromhex(file_hash), hashlib.sha256
    )
    assert published["dataset_fingerprint"] == keyed.hexdigest()  # the site can re-derive it


def test_audit_catches_a_deleted_last_entry_even_with_the_update_deleted_too(
    private_fed: Fed,
) -> None:
    fed = private_fed
    run_rounds(fed, 2)
    # Whoever can write the workspace removes va's round-2 entry and va's round-2 update:
    # the coordinator's signed result of round 2 still says it used va's update.
    (fed.workspace / "ledger" / "va" / "0002.json").unlink()
    (fed.workspace / "rounds" / "0002" / "submissions" / "va.json").unlink()
    out = run("audit", "-w", fed.workspace)
    assert out.exit_code == 3, out.stdout
    assert "va" in out.stderr and "round 2" in out.stderr and "signed result" in out.stderr


def _one_clean_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_a_site_that_erased_its_own_spend_is_flagged_by_the_results(private_fed: Fed) -> None:
    # Issue 14 item 5: the site deletes its ledger, accountant and round records, and its
    # published entries; the coordinator's signed results still say it trained in rounds 1-2.
    fed = private_fed
    run_rounds(fed, 2)
    site = fed.site("va")
    (site / "ledger.jsonl").unlink()
    (site / "accountant.json").unlink()
    shutil.rmtree(site / "rounds")
    shutil.rmtree(fed.workspace / "ledger" / "va")
    html = fed.root / "report.html"
    report = run("privacy", "report", "-w", fed.workspace, "--json", "--html", html)
    assert report.exit_code == 3, report.stdout
    data = report.json()
    va = next(s for s in data["sites"] if s["site"] == "va")
    assert va["verified"] is False and va["missing_rounds"] == [1, 2]
    assert all(s["verified"] for s in data["sites"] if s["site"] != "va")
    line = _one_clean_line(report.stderr)
    assert "va" in line and "covers 0 of the 2 rounds" in line and "signed results" in line
    page = html.read_text()
    assert page.count("no ledger entry") == 2 and 'class="summary bad"' in page
    audit = run("audit", "-w", fed.workspace)
    assert audit.exit_code == 3
    assert "covers 0 of the 2 rounds" in _one_clean_line(audit.stderr)
    # The site's own view of its (now empty) ledger says the same.
    own = run("audit", "-s", site)
    assert own.exit_code == 3 and "covers 0 of the 2 rounds" in own.stderr, own.stderr


@pytest.mark.parametrize("damage", ["flip a byte", "truncate"])
def test_a_round_result_that_does_not_verify_fails_report_and_audit(
    private_fed: Fed, damage: str
) -> None:
    # Issue 14 item 6: never exit 0 without a word on a tampered coordinator result.
    fed = private_fed
    run_rounds(fed, 1)
    assert run("audit", "-w", fed.workspace).exit_code == 0
    path = fed.workspace / "rounds" / "0001" / "result.json"
    if damage == "flip a byte":  # in the signed JSON, stored packed as before
        raw = bytearray(plain(path.read_bytes()))
        raw[raw.index(b'"survivors"') + 20] ^= 0x01
        write_signed(path, bytes(raw))
    else:  # the stored file cut short
        stored = path.read_bytes()
        path.write_bytes(stored[: len(stored) // 2])
    for cmd in (("privacy", "report"), ("audit",)):
        out = run(*cmd, "-w", fed.workspace)
        assert out.exit_code == 3, (cmd, out.stdout)
        line = _one_clean_line(out.stderr)
        assert line.startswith("fedrema: error: rounds/0001/result.json: "), line
        assert "does not verify" in line
    out = run("privacy", "report", "-w", fed.workspace, "--json")
    data = out.json()
    assert data["verified"] is False and data["unverified_results"] == [1]
    assert data["round_results"] == []  # never used: round 1's time and survivors unknown
    assert all(r["closed_at"] is None for s in data["sites"] for r in s["rounds"])


def test_a_ledger_folder_replaced_by_a_link_is_named_as_one(private_fed: Fed) -> None:
    """A site's published ledger folder swapped for a symbolic link (to a copy someone can
    edit) is refused unread, and the audit says it is a link, not that entries were deleted."""
    fed = private_fed
    run_rounds(fed, 1)
    folder = fed.workspace / "ledger" / "va"
    elsewhere = fed.root / "elsewhere"
    folder.rename(elsewhere)
    folder.symlink_to(elsewhere, target_is_directory=True)
    out = run("audit", "-w", fed.workspace)
    assert out.exit_code == 3
    assert "va: ledger/va is a symbolic link" in out.stderr, out.stderr
