"""The report model and its renderers: JSON, rich, HTML (plot + assumptions + banner), PDF."""

from __future__ import annotations

import base64
import json
import re

import pytest
from privacy_testing import build_ledger, site_key
from rich.console import Console

from privacy.ledger import ProblemKind
from privacy.policy import PrivacyPolicy
from privacy.report import build_report, plot_png, to_dict, to_html, to_pdf, to_rich

ROUNDS_A = [(1.1, 0.02, 50)] * 4
ROUNDS_B = [(1.3, 1 / 30, 60)] * 2 + [(1.3, 1 / 31, 62)] * 2  # its dataset grew in round 3
GENERATED = "2026-03-01T09:00:00+00:00"


@pytest.fixture(scope="module")
def pol() -> PrivacyPolicy:
    return PrivacyPolicy(
        target_epsilon=8.0,
        delta=1e-5,
        accountant="rdp",
        max_grad_norm=1.0,
        planned_rounds=6,
        local_epochs=1,
        batch_size=4,
    )


@pytest.fixture(scope="module")
def sites(pol):
    ka, kb = site_key(1), site_key(2)
    _, text_a, acc_a = build_ledger(ROUNDS_A, sign=ka.sign, policy=pol, site="clev")
    _, text_b, acc_b = build_ledger(ROUNDS_B, sign=kb.sign, policy=pol, site="bost")
    return {
        "texts": {"clev": text_a, "bost": text_b},
        "verifiers": {"clev": ka.public_key().verify, "bost": kb.public_key().verify},
        "accountants": {"clev": acc_a, "bost": acc_b},
    }


def report_for(pol, texts, verifiers, **kw):
    return build_report(
        policy=pol,
        ledgers=texts,
        verifiers=verifiers,
        federation="demo",
        generated_at=GENERATED,
        **kw,
    )


def rich_text(renderable) -> str:
    console = Console(record=True, width=160, color_system=None)
    console.print(renderable)
    return console.export_text()


@pytest.fixture(scope="module")
def clean(pol, sites):
    return report_for(pol, sites["texts"], sites["verifiers"])


def test_json_structure_and_numbers(pol, sites, clean):
    report = clean
    assert report.verified
    data = to_dict(report)
    json.dumps(data, allow_nan=False)  # strictly JSON-able
    assert data["format"] == "fedrema-privacy-report/1"
    assert data["verified"] is True and data["policy"]["target_epsilon"] == 8.0
    assert {"covered", "not_covered", "caveats"} <= set(data["assumptions"])
    assert [s["site"] for s in data["sites"]] == ["bost", "clev"]
    for s in data["sites"]:
        acc = sites["accountants"][s["site"]]
        assert s["status"] == "verified" and s["rounds_trained"] == 4
        assert s["epsilon"] == acc.epsilon(delta=pol.delta)  # composed over all rounds
        eps = [r["epsilon"] for r in s["rounds"]]
        assert eps == sorted(eps) and eps[-1] > 1.3 * eps[0]
        assert [r["epsilon_recorded"] for r in s["rounds"]] == eps
        for r in s["rounds"]:
            assert r["verified"] and set(r["epsilon_independent"]) == {"rdp", "pld"}
            assert abs(r["epsilon_independent"]["rdp"] - r["epsilon"]) < 1e-3
            assert r["epsilon_independent"]["pld"] < r["epsilon"]
        assert s["steps"] == acc.total_steps


def test_replaying_the_ledgers_reproduces_the_report(pol, sites, clean):
    one = to_dict(clean)
    two = to_dict(report_for(pol, dict(reversed(sites["texts"].items())), sites["verifiers"]))
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)


def test_html_has_plot_assumptions_and_no_banner_when_clean(clean):
    page = to_html(clean)
    assert page.startswith("<!DOCTYPE html>")
    match = re.search(r"id='epsilon-plot'[^>]*src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert match and base64.b64decode(match.group(1)).startswith(b"\x89PNG\r\n\x1a\n")
    for phrase in (
        "add/remove one",
        "Poisson sampling",
        "What is covered",
        "What is NOT covered",
        "classifier head",
        "masked model update",
        "preprocessing statistics",
        "number of training records",
        "hold-out (test) records",
        "secure_mode",
    ):
        assert phrase in page
    # Fine-tuning rounds are DP-SGD and in the ledger: covered, not listed as uncovered.
    covered, not_covered = page.split("What is NOT covered")
    assert "fine-tuning" in covered.split("What is covered")[1]
    assert "fine-tuning" not in not_covered.split("Caveats")[0]
    assert "NOT VERIFIED" not in page and "banner ok" in page
    assert 'src="http' not in page and "<script" not in page  # self-contained, no scripts


def test_tampered_ledger_raises_the_banner_everywhere(pol, sites):
    texts = dict(sites["texts"])
    rows = texts["bost"].splitlines(keepends=True)
    data = json.loads(rows[1])
    data["noise_multiplier"] = 3.0
    rows[1] = json.dumps(data) + "\n"
    texts["bost"] = "".join(rows)
    report = report_for(pol, texts, sites["verifiers"])
    assert not report.verified
    bost = next(s for s in report.sites if s.site == "bost")
    assert bost.status.value == "failed"
    assert {p.kind for p in bost.failing_problems} >= {ProblemKind.EDITED}
    # Round 2 is edited; rounds 3-4 then no longer reproduce their recorded epsilon either.
    assert [r.verified for r in bost.rounds] == [True, False, False, False]
    page = to_html(report)
    assert "NOT VERIFIED" in page and "role='alert'" in page and "line 2" in page
    assert "NOT VERIFIED" in rich_text(to_rich(report))
    assert to_dict(report)["verified"] is False
    clev = next(s for s in report.sites if s.site == "clev")
    assert clev.verified  # the other site is unaffected


def test_unknown_key_wrong_policy_lies_and_overspend_are_flagged(pol, sites):
    k = site_key(3)
    # A site signing a ledger that claims less epsilon than its history gives...
    _, text, _ = build_ledger([(1.0, 0.02, 50)], sign=k.sign, policy=pol, site="liar")
    data = json.loads(text)
    data["epsilon_after"] = 0.01
    from privacy.ledger import LedgerEntry, encode_line, make_entry

    body = LedgerEntry.model_validate(data).body()
    lying = encode_line(make_entry(None, body, k.sign))
    # ...a site trained under another delta, and one that spent past the target.
    other = pol.model_copy(update={"delta": 1e-6})
    _, other_text, _ = build_ledger([(1.0, 0.02, 50)], sign=k.sign, policy=other, site="odd")
    _, over_text, _ = build_ledger([(0.5, 0.05, 400)], sign=k.sign, policy=pol, site="over")
    verify = k.public_key().verify
    report = report_for(
        pol,
        {"liar": lying, "odd": other_text, "over": over_text, "nokey": sites["texts"]["clev"]},
        {"liar": verify, "odd": verify, "over": verify},
    )
    kinds = {s.site: {p.kind for p in s.failing_problems} for s in report.sites}
    assert ProblemKind.EPSILON_MISMATCH in kinds["liar"]
    assert ProblemKind.POLICY_MISMATCH in kinds["odd"]
    assert ProblemKind.OVER_BUDGET in kinds["over"]
    assert ProblemKind.NO_KEY in kinds["nokey"]
    assert not report.verified and "NOT VERIFIED" in to_html(report)


def test_torn_tail_is_a_note_not_a_failure(pol, sites):
    texts = dict(sites["texts"])
    texts["clev"] += '{"federation":"demo","site":"cl'
    report = report_for(pol, texts, sites["verifiers"])
    clev = next(s for s in report.sites if s.site == "clev")
    assert clev.verified and any(p.kind is ProblemKind.TORN_TAIL for p in clev.problems)


def test_empty_report_is_not_clean(pol):
    report = report_for(pol, {}, {})
    assert not report.verified and "NOT VERIFIED" in to_html(report)


def test_html_escapes_untrusted_text(pol):
    k = site_key(4)
    _, text, _ = build_ledger([(1.0, 0.02, 50)], sign=k.sign, policy=pol, site="<b>x</b>")
    page = to_html(report_for(pol, {"<b>x</b>": text}, {"<b>x</b>": k.public_key().verify}))
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page


def test_rich_table_and_pdf_and_png(pol, sites):
    report = report_for(pol, sites["texts"], sites["verifiers"], independent_check=False)
    text = rich_text(to_rich(report))
    assert "clev" in text and "bost" in text and "All ledgers verified" in text
    assert plot_png(report).startswith(b"\x89PNG")
    assert to_pdf(report).startswith(b"%PDF")


def test_entries_not_signed_by_the_site_are_not_recomputed_independently(pol, sites):
    # A forged ledger (another key) planting a near-noiseless history: recomputing it with the
    # independent PLD accountant would cost minutes and gigabytes, and prove nothing.
    forger = site_key(9)
    _, forged, _ = build_ledger([(1.1, 0.02, 50), (0.3, 1.0, 50)], sign=forger.sign, policy=pol)
    report = report_for(pol, {"clev": forged}, {"clev": sites["verifiers"]["clev"]})
    (clev,) = report.sites
    assert not report.verified and ProblemKind.BAD_SIGNATURE in {p.kind for p in clev.problems}
    assert [r.epsilon_pld_independent for r in clev.rounds] == [None, None]
    assert all("not recomputed independently" in " ".join(r.problems) for r in clev.rounds)
    signed = report_for(pol, {"clev": sites["texts"]["clev"]}, sites["verifiers"])
    assert all(r.epsilon_pld_independent is not None for r in signed.sites[0].rounds)
