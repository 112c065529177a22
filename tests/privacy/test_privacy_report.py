"""The report model and its renderers: JSON, rich, HTML (plot + assumptions + banner), PDF."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from privacy_testing import build_ledger, site_key
from rich.console import Console

from privacy.ledger import ProblemKind
from privacy.policy import PrivacyPolicy
from privacy.report import (
    RoundResult,
    build_report,
    plot_png,
    problem_lines,
    to_dict,
    to_html,
    to_pdf,
    to_rich,
)

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
    match = re.search(r"id=.epsilon-plot.[^>]*src=.data:image/png;base64,([A-Za-z0-9+/=]+)", page)
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
    assert "NOT VERIFIED" in page and 'role="alert"' in page and "ledger line 2" in page
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


# -- the document a DPO files (issue 12 item 4) ----------------------------------------------

RESULTS = tuple(
    RoundResult(round=r, finished_at=f"2026-01-{r:02d}T12:30:00+00:00", survivors=("bost", "clev"))
    for r in range(1, 5)
)
WHO = {
    "coordinator_fingerprint": "c0c0:" * 7 + "c0c0",
    "fingerprints": {"clev": "aaaa", "bost": "bbbb"},
}


def _tampered(texts: dict[str, str], site: str = "bost", line: int = 1) -> dict[str, str]:
    out = dict(texts)
    rows = out[site].splitlines(keepends=True)
    data = json.loads(rows[line])
    data["noise_multiplier"] = 3.0  # claims more noise than ran: less spend
    rows[line] = json.dumps(data) + "\n"
    out[site] = "".join(rows)
    return out


def test_round_times_and_who_are_in_the_data_and_the_document(pol, sites):
    report = report_for(pol, sites["texts"], sites["verifiers"], round_results=RESULTS, **WHO)
    assert report.verified
    data = to_dict(report)
    assert data["coordinator_fingerprint"] == WHO["coordinator_fingerprint"]
    clev = next(s for s in data["sites"] if s["site"] == "clev")
    assert clev["fingerprint"] == "aaaa"
    assert [r["closed_at"] for r in clev["rounds"]] == [r.finished_at for r in RESULTS]
    assert clev["rounds"][0]["timestamp"] == "2026-01-01T12:00:00+00:00"
    assert clev["library_versions_by_round"] == [
        {"first_round": 1, "last_round": 4, "versions": {"opacus": "1.6.0"}}
    ]
    page = to_html(report)
    for text in (
        WHO["coordinator_fingerprint"],
        "aaaa",
        "bbbb",
        "2026-01-03 12:30:00",  # the coordinator's time of round 3
        "2026-01-02 12:00:00",  # the site's time of round 2
        "δ = 1e-05",
        "opacus 1.6.0",
        "e<sup>ε</sup> = 2.98e+03",  # what epsilon = 8 means: the odds bound
        "Why the RDP and PLD figures differ",
        "noise multiplier",  # the legend
        data["digest"],
    ):
        assert text in page, text
    for field in ("target ε (budget per site)", "clipping norm C", "planned rounds", "accountant"):
        assert field in page.split('id="policy"')[1], field


def test_the_report_digest_is_the_sha256_of_its_canonical_data(pol, sites):
    one = to_dict(report_for(pol, sites["texts"], sites["verifiers"]))
    # The recipe printed in the document, done with nothing but the standard library.
    covered = {k: v for k, v in one.items() if k not in ("digest", "generated_at")}
    text = json.dumps(covered, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert one["digest"] == hashlib.sha256(text.encode("utf-8")).hexdigest()
    # Generated at another time from the same ledgers: the same digest ...
    later = build_report(
        policy=pol,
        ledgers=sites["texts"],
        verifiers=sites["verifiers"],
        federation="demo",
        generated_at="2027-01-01T00:00:00+00:00",
    )
    assert to_dict(later)["digest"] == one["digest"]
    # ... and any changed entry gives another one.
    forged = to_dict(report_for(pol, _tampered(sites["texts"]), sites["verifiers"]))
    assert forged["digest"] != one["digest"]


def test_a_ledger_shorter_than_the_signed_results_fails_its_site(pol, sites):
    # bost's ledger holds rounds 1-4; the coordinator's results say it trained in 5 and 6 too.
    more = (
        *RESULTS,
        *(RoundResult(r, f"2026-01-{r:02d}T12:30:00+00:00", ("bost",)) for r in (5, 6)),
    )
    report = report_for(pol, sites["texts"], sites["verifiers"], round_results=more)
    bost, clev = report.sites
    assert clev.verified  # clev was not in rounds 5-6
    assert not bost.verified and bost.missing_rounds == (5, 6)
    (line,) = [x for x in problem_lines(report) if x.startswith("bost")]
    assert "covers 4 of the 6 rounds" in line and "round 5, round 6" in line
    assert "signed results" in line
    page = to_html(report)
    assert page.count("no ledger entry") == 2
    # A method that never trains spends nothing: then the results prove no spend.
    quiet = report_for(
        pol, sites["texts"], sites["verifiers"], round_results=more, survivors_spent=False
    )
    assert quiet.verified


def test_forged_figures_are_struck_and_the_summary_is_red(pol, sites):
    report = report_for(pol, _tampered(sites["texts"]), sites["verifiers"])
    bost = next(s for s in report.sites if s.site == "bost")
    forged = f"{bost.epsilon:.4f}"
    page = to_html(report)
    summary = page.split('id="summary"')[1].split("</section>")[0]
    assert 'class="summary bad"' in page and "NOT VERIFIED" in summary
    # The figure computed from the forged entry is only ever shown struck through ...
    assert forged in summary and f"<del>{forged}</del> not verified" in summary
    assert summary.count(forged) == 1
    # ... next to what the verified entries prove: at least round 1's spend.
    assert bost.verified_prefix.round == 1
    assert f"≥ {bost.rounds[0].epsilon:.4f} verified" in summary
    data = to_dict(report)
    assert next(s for s in data["sites"] if s["site"] == "bost")["verified_through_round"] == 1
    # A terminal cannot strike through: there the forged figure is not shown at all.
    terminal = rich_text(to_rich(report, detail=True))
    assert forged not in terminal and f"not verified (≥ {bost.rounds[0].epsilon:.4f})" in terminal


def test_each_problem_is_one_plain_line_without_internal_codes(pol, sites):
    report = report_for(pol, _tampered(sites["texts"]), sites["verifiers"])
    lines = problem_lines(report)
    # One cause (line 2 edited and so unsigned); what follows from it is not repeated.
    assert len(lines) == 1, lines
    (line,) = lines
    assert line.startswith("bost, round 2, ledger line 2: ")
    assert "edited" in line and "signature does not verify" in line
    assert "later ones are not verified" in line
    codes = [k.value for k in ProblemKind if "_" in k.value] + ["LedgerIntegrityError"]
    for text in (*lines, *rich_text(to_rich(report)).splitlines()):
        assert not any(code in text for code in codes), text
    # The site's own section lists every finding, still without codes.
    page = to_html(report)
    assert "chain_broken" not in page and "epsilon_mismatch" not in page
    assert "does not follow the one before it" in page  # round 3's broken link, in words


def test_the_pdf_is_the_same_document_with_page_numbers(pol, sites):
    from pypdf import PdfReader

    report = report_for(pol, sites["texts"], sites["verifiers"], round_results=RESULTS, **WHO)
    log: list[str] = []
    pdf = to_pdf(report, log=log)
    # WeasyPrint ignored no CSS and missed no font. (Without libharfbuzz-subset0 it notes that
    # it subsets fonts with fontTools instead: the same pages, a larger file.)
    assert [m for m in log if "HarfBuzz-Subset" not in m] == []
    pages = PdfReader(io.BytesIO(pdf)).pages
    text = "\n".join(p.extract_text() for p in pages)
    flat = " ".join(text.split())
    assert len(pages) >= 2
    for n in range(1, len(pages) + 1):
        assert f"page {n} of {len(pages)}" in flat
    assert "δ = 1e-05" in flat and "What ε = 8 means" in flat
    assert WHO["coordinator_fingerprint"] in flat  # on one line, never wrapped
    digest = to_dict(report)["digest"]
    assert digest in flat.replace(" ", "")  # full digest, in its own section
    for s in report.sites:  # every round of every site has its row
        for r in s.rounds:
            row = (
                f"{r.round} 2026-01-{r.round:02d} 12:00:00 2026-01-{r.round:02d} 12:30:00 "
                f"{r.steps} {r.sample_rate:.4g} {r.noise_multiplier:.4g} {r.max_grad_norm:g} "
                f"{r.epsilon:.4f} {r.epsilon_rdp_independent:.4f} {r.epsilon_pld_independent:.4f}"
            )
            assert row in flat, row


def test_an_installed_copy_finds_the_templates(tmp_path):
    # Build the wheel pip would install, unpack it, and render from that copy alone.
    root = Path(__file__).resolve().parents[2]
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    for pkg in ("fedrema_cli", "crypto", "privacy"):
        shutil.copytree(root / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("fedrema-*.whl")
    installed = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert "privacy/report/templates/report.html.j2" in names
        assert "privacy/report/templates/report.css" in names
        z.extractall(installed)
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import privacy, privacy.report as r\n"
        "assert privacy.__file__.startswith(sys.argv[1]), privacy.__file__\n"
        "from privacy.policy import PrivacyPolicy\n"
        "p = PrivacyPolicy(target_epsilon=3, delta=1e-5, planned_rounds=2, local_epochs=1,"
        " batch_size=4, max_grad_norm=1.0)\n"
        "page = r.to_html(r.build_report(policy=p, ledgers={}, verifiers={}, federation='f',"
        " generated_at='2026-01-01T00:00:00+00:00'))\n"
        "print('NOT VERIFIED' in page and 'Report digest' in page)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(installed)], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr
