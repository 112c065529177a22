"""Renderers for ``PrivacyReport``: JSON-able dict, rich renderable, HTML and PDF, PNG plot.

Nothing here prints or writes files; each function returns a value for the shell to show or
store. HTML and PDF are one document: the Jinja2 template ``templates/report.html.j2`` is
rendered once to self-contained HTML (inline CSS, the plot embedded as a base64 PNG) and
WeasyPrint lays that same HTML out on A4 pages (page numbers from the template's ``@page``
rules). Every figure in the document comes from ``to_dict``, the data the report's digest
covers, so the filed document and ``--json`` cannot say different things. Plots use
matplotlib's Agg canvas on a private ``Figure`` (no pyplot global state).

>>> from privacy.policy import PrivacyPolicy
>>> from privacy.report.model import build_report
>>> policy = PrivacyPolicy(target_epsilon=4.0, delta=1e-5, planned_rounds=2, local_epochs=1,
...                        batch_size=4, max_grad_norm=1.0)
>>> report = build_report(policy=policy, ledgers={}, verifiers={}, federation="demo",
...                       generated_at="2026-01-01T00:00:00+00:00")
>>> to_dict(report)["verified"], "NOT VERIFIED" in to_html(report)
(False, True)
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import io
import logging
import math
import warnings
from datetime import datetime
from typing import Any

from privacy.errors import PrivacyError
from privacy.ledger import Problem, ProblemKind, canonical_json
from privacy.report.model import (
    NON_FAILING,
    REPORT_FORMAT,
    PrivacyReport,
    RoundRow,
    SiteReport,
)

DIGEST_EXCLUDED = ("digest", "generated_at")
DIGEST_OF = (
    "SHA-256 of the canonical JSON (keys sorted, no spaces, UTF-8) of this object "
    "without its 'digest' and 'generated_at' fields"
)
PANGO_INSTALL = "apt-get install -y libpango-1.0-0 libpangoft2-1.0-0"


class ReportRenderError(PrivacyError):
    """A report format cannot be produced on this machine (a missing library)."""


def _num(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(x)


def _fmt(x: float | None, digits: int = 4) -> str:
    v = _num(x)
    return "—" if v is None else f"{v:.{digits}f}"


# -- problems in plain words -----------------------------------------------------------------

_PLAIN = {
    ProblemKind.CHAIN_BROKEN: (
        "this entry does not follow the one before it: an entry before it was changed, "
        "removed or inserted"
    ),
}


def plain_problem(p: Problem, site: str | None = None) -> str:
    """One line a person can act on: which site, round and ledger line, and what is wrong.

    The problem kind (an internal code) is left out; ``to_dict`` keeps it for machines.
    """
    return _located(p, site, _PLAIN.get(p.kind, p.message))


def _located(p: Problem, site: str | None, text: str) -> str:
    where = [f"round {p.round}"] if p.round is not None else []
    if p.line is not None:
        where.append(f"ledger line {p.line}")
    head = ", ".join(([site] if site else []) + where)
    return f"{head}: {text}" if head else text


# Findings that follow from an earlier bad line: a changed entry breaks the chain after it and
# changes every later recomputed epsilon. The banner names the cause, the site section all.
_CONSEQUENCES = frozenset(
    {ProblemKind.CHAIN_BROKEN, ProblemKind.EPSILON_MISMATCH, ProblemKind.INDEPENDENT_MISMATCH}
)


def site_problem_lines(
    s: SiteReport, *, causes_only: bool = False, named: bool = True
) -> list[str]:
    """A site's failing findings, one line per ledger line (its findings joined).

    ``named``: start each line with the site's name.
    ``causes_only`` leaves out what follows from an earlier bad line (see ``_CONSEQUENCES``)
    and says instead that the later figures depend on it.
    """
    failing = s.failing_problems
    causes = [p.line for p in failing if p.kind not in _CONSEQUENCES and p.line is not None]
    first = min(causes, default=None) if causes_only else None
    groups: dict[object, list[Problem]] = {}
    for i, p in enumerate(failing):
        if first is not None and p.kind in _CONSEQUENCES and (p.line or 0) >= first:
            continue
        groups.setdefault(p.line if p.line is not None else ("alone", i), []).append(p)
    out = []
    for group in groups.values():
        text = "; ".join(dict.fromkeys(_PLAIN.get(p.kind, p.message) for p in group))
        if first is not None and group[0].line == first:
            text += " (the figures of this round and later ones are not verified)"
        out.append(_located(group[0], s.site if named else None, text))
    return out


def problem_lines(report: PrivacyReport) -> list[str]:
    """Every cause of the report failing, one plain line each (report-wide first)."""
    out = [plain_problem(p) for p in report.problems]
    for s in report.sites:
        out += site_problem_lines(s, causes_only=True)
    return out


# -- data ------------------------------------------------------------------------------------


def round_label(n: int) -> str:
    """A ledger round as a reader sees it: round 0 is the label-count release, not training."""
    return "0 (label counts)" if n == 0 else str(n)


def _row_dict(r: RoundRow) -> dict[str, Any]:
    return {
        "round": r.round,
        "seq": r.seq,
        "line": r.line,
        "timestamp": r.timestamp,
        "closed_at": r.closed_at,
        "steps": r.steps,
        "sample_rate": r.sample_rate,
        "noise_multiplier": r.noise_multiplier,
        "max_grad_norm": r.max_grad_norm,
        "epsilon_recorded": _num(r.epsilon_recorded),
        "epsilon": _num(r.epsilon),
        "epsilon_independent": {
            "rdp": _num(r.epsilon_rdp_independent),
            "pld": _num(r.epsilon_pld_independent),
        },
        "verified": r.verified,
        "problems": list(r.problems),
    }


def _site_dict(s: SiteReport) -> dict[str, Any]:
    prefix = s.verified_prefix
    return {
        "site": s.site,
        "status": s.status.value,
        "verified": s.verified,
        "fingerprint": s.fingerprint,
        "accountant": s.accountant,
        "delta": s.delta,
        "target_epsilon": s.target_epsilon,
        # null when the ledger does not verify: only epsilon_verified_at_least is proven then
        "epsilon": _num(s.epsilon) if s.verified else None,
        "epsilon_independent": {
            "rdp": _num(s.epsilon_rdp_independent) if s.verified else None,
            "pld": _num(s.epsilon_pld_independent) if s.verified else None,
        },
        "remaining": _num(s.remaining) if s.verified else None,
        "missing_rounds": list(s.missing_rounds),
        "verified_through_round": prefix.round if prefix else None,
        "epsilon_verified_at_least": _num(prefix.epsilon) if prefix else None,
        "rounds_trained": sum(r.round > 0 for r in s.rounds),  # round 0: a label-count release
        "steps": sum(r.steps for r in s.rounds),
        "ledger_head": s.head,
        "library_versions": dict(s.library_versions),
        "library_versions_by_round": [
            {"first_round": v.first_round, "last_round": v.last_round, "versions": v.versions}
            for v in s.version_spans
        ],
        "problems": [p.to_dict() for p in s.problems],
        "rounds": [_row_dict(r) for r in s.rounds],
    }


def report_digest(data: dict[str, Any]) -> str:
    """The digest printed in the document: see ``DIGEST_OF`` (what a DPO recomputes)."""
    covered = {k: v for k, v in data.items() if k not in DIGEST_EXCLUDED}
    return hashlib.sha256(canonical_json(covered)).hexdigest()


def to_dict(report: PrivacyReport) -> dict[str, Any]:
    """Return the report as a JSON-able dict (NaN/inf become ``null``), with its digest."""
    a = report.assumptions
    data: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "federation": report.federation,
        "generated_at": report.generated_at,
        "verified": report.verified,
        "coordinator_fingerprint": report.coordinator_fingerprint,
        "policy": dict(report.policy),
        "assumptions": {
            "neighbouring_relation": a.neighbouring_relation,
            "sampling": a.sampling,
            "accountant": a.accountant,
            "unit": a.unit,
            "covered": list(a.covered),
            "not_covered": list(a.not_covered),
            "caveats": list(a.caveats),
        },
        "independent_check": {
            "library": "dp-accounting",
            "rdp_orders": "Opacus-compatible grid (1.1..10.9 step 0.1, 12..63)",
            "pld_value_discretization_interval": report.pld_discretization,
        },
        "tool_versions": dict(report.tool_versions),
        "round_results": [
            {"round": r.round, "finished_at": r.finished_at, "survivors": list(r.survivors)}
            for r in report.round_results
        ],
        "unverified_results": list(report.unverified_results),
        "problems": [p.to_dict() for p in report.problems],
        "workspace_problems": [
            p.message for p in report.problems if p.kind is ProblemKind.WORKSPACE
        ],
        "problem_lines": problem_lines(report),
        "sites": [_site_dict(s) for s in report.sites],
        "digest_of": DIGEST_OF,
    }
    data["digest"] = report_digest(data)
    return data


# -- terminal --------------------------------------------------------------------------------


def epsilon_cell(s: SiteReport) -> str:
    """A site's epsilon for the terminal; a figure that does not verify is not shown at all
    (a plain terminal cannot strike it through), only what the verified entries prove."""
    if s.verified:
        return _fmt(s.epsilon)
    prefix = s.verified_prefix
    return "not verified" + (f" (≥ {_fmt(prefix.epsilon)})" if prefix else "")


def to_rich(report: PrivacyReport, *, detail: bool = False) -> Any:
    """Return a rich renderable: banner, budget per site, epsilon per site and round.

    ``detail`` adds one table per site with every round's steps, q, sigma and clip.
    """
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    data = to_dict(report)
    parts: list[Any] = []
    if report.verified:
        parts.append(Text("All ledgers verified: hash chains and signatures OK.", style="green"))
    else:
        body = "\n".join(f"• {line}" for line in data["problem_lines"]) or "no ledgers"
        parts.append(
            Panel(
                Text(body, style="bold"), title="NOT VERIFIED", border_style="bold red", style="red"
            )
        )
    p = report.policy
    summary = Table(
        title=f"Privacy budget per site, federation {report.federation}, δ = {p.get('delta'):g}, "
        f"accountant {p.get('accountant')}, generated {report.generated_at}",
        caption="ε: the site's accountant; RDP*, PLD*: recomputed from the ledger with "
        "dp-accounting; ≥: what the verified entries alone prove was spent. What ε covers and "
        "what it does not: the --html/--pdf report, or --json's assumptions",
        title_justify="left",
        border_style=None if report.verified else "red",
    )
    for col in ("site", "status", "rounds", "ε spent", "RDP*", "PLD*", "budget", "left"):
        summary.add_column(col, justify="left" if col in ("site", "status") else "right")
    for s in report.sites:
        ok = s.verified
        summary.add_row(
            s.site,
            s.status.value,
            str(len(s.rounds)),
            epsilon_cell(s),
            _fmt(s.epsilon_rdp_independent) if ok else "—",
            _fmt(s.epsilon_pld_independent) if ok else "—",
            f"{s.target_epsilon:g}",
            _fmt(s.remaining) if ok else "not verified",
            style=None if ok else "red",
        )
    parts.append(summary)
    rounds = sorted(
        {r.round for s in report.sites for r in s.rounds}
        | {r for s in report.sites for r in s.missing_rounds}
    )
    if rounds:
        matrix = Table(
            title="ε spent after each round (composed over all rounds so far)", title_justify="left"
        )
        matrix.add_column("round", justify="right")
        by_site = {s.site: {r.round: r for r in s.rounds} for s in report.sites}
        for s in report.sites:
            matrix.add_column(s.site, justify="right")
        for rnd in rounds:
            cells = []
            for s in report.sites:
                row = by_site[s.site].get(rnd)
                if row is None:
                    cells.append("[red]missing[/]" if rnd in s.missing_rounds else "–")
                else:
                    cells.append(_fmt(row.epsilon) if row.verified else "[red]not verified[/]")
            matrix.add_row(round_label(rnd), *cells)
        parts.append(matrix)
    if detail:
        for s in report.sites:
            t = Table(title=f"{s.site} ({s.accountant}, δ={s.delta:g})", title_justify="left")
            for col in ("round", "steps", "q", "σ", "C", "ε", "RDP*", "PLD*", "ok"):
                t.add_column(col, justify="right")
            for r in s.rounds:
                t.add_row(
                    round_label(r.round),
                    str(r.steps),
                    f"{r.sample_rate:.5g}",
                    f"{r.noise_multiplier:.5g}",
                    f"{r.max_grad_norm:g}",
                    *(
                        (
                            _fmt(r.epsilon),
                            _fmt(r.epsilon_rdp_independent),
                            _fmt(r.epsilon_pld_independent),
                            "yes",
                        )
                        if r.verified
                        else ("—", "—", "—", "not verified")
                    ),
                    style=None if r.verified else "red",
                )
            parts.append(t)
    parts.append(Text(f"report digest (SHA-256): {data['digest']}", style="dim"))
    return Group(*parts)


# -- plot ------------------------------------------------------------------------------------


def plot_png(report: PrivacyReport, *, dpi: int = 110) -> bytes:
    """Return a PNG of composed epsilon over rounds per site, against the budget line.

    Only verified rounds are joined by the site's line; a round that does not verify is a
    grey cross, so a forged entry is never drawn as if it held.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7.5, 3.9), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    target = float(report.policy.get("target_epsilon", float("nan")))
    planned = int(report.policy.get("planned_rounds", 0) or 0)
    bad_label = "not verified (not counted)"
    for s in report.sites:
        good = [(r.round, r.epsilon) for r in s.rounds if r.verified and _num(r.epsilon)]
        color = None
        if good:
            xs, ys = zip(*good, strict=True)
            suffix = "" if s.verified else " (NOT VERIFIED)"
            (line,) = ax.plot(
                xs, ys, marker="o", markersize=3, label=f"{s.site} ({s.accountant}){suffix}"
            )
            color = line.get_color()
        bad = [(r.round, r.epsilon) for r in s.rounds if not r.verified and _num(r.epsilon)]
        if bad:
            bx, by = zip(*bad, strict=True)
            ax.plot(bx, by, linestyle="none", marker="x", markersize=7, color="#888888",
                    label=bad_label)  # fmt: skip
            bad_label = "_nolegend_"
        ind = [
            (r.round, r.epsilon_pld_independent)
            for r in s.rounds
            if r.verified and _num(r.epsilon_pld_independent) is not None
        ]
        if ind and color is not None:
            ix, iy = zip(*ind, strict=True)
            ax.plot(ix, iy, linestyle=":", color=color, linewidth=1)
    if math.isfinite(target):
        ax.axhline(
            target,
            color="red",
            linestyle="--",
            linewidth=1.5,
            label=f"budget (target ε = {target:g})",
        )
    last = max((r.round for s in report.sites for r in s.rounds), default=0)
    if planned or last:
        ax.set_xlim(0, max(planned, last) + 0.5)
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("composed ε (record-level)")
    ax.set_title(
        "Privacy spend per site (solid: site accountant; dotted: dp-accounting PLD)", fontsize=9
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


# -- the document (HTML and PDF) --------------------------------------------------------------


def when(ts: str | None, *, zone: str = " UTC") -> str:
    """An ISO 8601 time for people: ``2026-03-01 09:00:00 UTC`` (other offsets kept).

    ``zone=""`` leaves "UTC" to a column heading.
    """
    if not ts:
        return "—"
    try:
        t = datetime.fromisoformat(ts)
    except ValueError:
        return ts
    off = t.utcoffset()
    if off is not None and off.total_seconds() == 0:
        return t.strftime("%Y-%m-%d %H:%M:%S") + zone
    return t.isoformat(sep=" ")


def _meaning(epsilon: float, delta: float) -> dict[str, str]:
    """The numbers of the plain-language line: the odds bound e^eps, on an example prior."""
    factor = math.exp(epsilon)
    prior = 100  # odds 1 : 100
    posterior = prior / factor
    return {
        "factor": f"{factor:.3g}",
        "prior": f"1 : {prior}",
        "posterior": f"1 : {posterior:.2g}" if posterior >= 1 else f"{1 / posterior:.2g} : 1",
        "delta": f"{delta:g}",
        "one_in": f"{round(1 / delta):,}" if delta > 0 else "—",
    }


def _rdp_pld_gap(sites: list[dict[str, Any]]) -> str | None:
    """How far the sites' epsilon lies above dp-accounting's PLD, in this report (verified)."""
    gaps = [
        100 * (s["epsilon"] / s["epsilon_independent"]["pld"] - 1)
        for s in sites
        if s["verified"] and s["epsilon"] and s["epsilon_independent"]["pld"]
    ]
    if not gaps:
        return None
    lo, hi = min(gaps), max(gaps)
    return f"{lo:.0f}%" if round(lo) == round(hi) else f"{lo:.0f}–{hi:.0f}%"


def _view(report: PrivacyReport, data: dict[str, Any]) -> dict[str, Any]:
    """What the template shows, formatted, taken from ``data`` (= ``to_dict(report)``)."""
    policy = {k: f"{v:g}" if isinstance(v, float) else v for k, v in data["policy"].items()}
    bad_results = set(data["unverified_results"])

    def closed(r: int, at: str | None) -> str:
        return "not verified" if r in bad_results else when(at, zone="")

    sites = []
    for s, site in zip(data["sites"], report.sites, strict=True):
        rows = [
            {
                "round": r["round"],
                "missing": False,
                "trained_at": when(r["timestamp"], zone=""),
                "closed_at": closed(r["round"], r["closed_at"]),
                "steps": str(r["steps"]),
                "q": f"{r['sample_rate']:.4g}",
                "sigma": f"{r['noise_multiplier']:.4g}",
                "clip": f"{r['max_grad_norm']:g}",
                "eps": _fmt(r["epsilon"]),
                "rdp": _fmt(r["epsilon_independent"]["rdp"]),
                "pld": _fmt(r["epsilon_independent"]["pld"]),
                "ok": r["verified"],
            }
            for r in s["rounds"]
        ]
        finished = {r.round: r.finished_at for r in report.round_results}
        rows += [
            {"round": r, "missing": True, "ok": False, "closed_at": when(finished[r], zone="")}
            for r in s["missing_rounds"]
        ]
        rows.sort(key=lambda row: row["round"])
        sites.append(
            {
                **s,
                "target": f"{s['target_epsilon']:g}",
                # the claimed figures, which the page strikes through when they do not verify
                # (the JSON holds null there: a script cannot tell struck from plain)
                "eps": _fmt(_num(site.epsilon)),
                "rdp": _fmt(_num(site.epsilon_rdp_independent)),
                "pld": _fmt(_num(site.epsilon_pld_independent)),
                "remaining_fmt": _fmt(_num(site.remaining)),
                "floor": _fmt(s["epsilon_verified_at_least"]),
                "row_list": rows,
                "findings": [
                    *({"text": t, "failing": True} for t in site_problem_lines(site, named=False)),
                    *(
                        {"text": plain_problem(p), "failing": False}
                        for p in site.problems
                        if p.kind in NON_FAILING
                    ),
                ],
                "versions": [
                    {
                        "rounds": (
                            f"{v['first_round']}"
                            if v["first_round"] == v["last_round"]
                            else f"{v['first_round']}–{v['last_round']}"
                        ),
                        "text": ", ".join(f"{k} {x}" for k, x in sorted(v["versions"].items()))
                        or "none recorded",
                    }
                    for v in s["library_versions_by_round"]
                ],
            }
        )
    return {
        "d": data,
        "policy": policy,
        "sites": sites,
        "label_release": any(r["round"] == 0 for s in data["sites"] for r in s["rounds"]),
        "rounds": sorted(
            [
                *(
                    {
                        "round": r["round"],
                        "ok": True,
                        "closed_at": when(r["finished_at"]),
                        "survivors": ", ".join(r["survivors"]) or "none",
                    }
                    for r in data["round_results"]
                ),
                *(
                    {"round": r, "ok": False, "closed_at": "does not verify", "survivors": "—"}
                    for r in bad_results
                ),
            ],
            key=lambda row: row["round"],
        ),
        "generated": when(data["generated_at"]),
        "gap": _rdp_pld_gap(data["sites"]),
        "meaning": _meaning(
            float(data["policy"]["target_epsilon"]), float(data["policy"]["delta"])
        ),
        "plot": base64.b64encode(plot_png(report, dpi=150)).decode("ascii"),
    }


@functools.cache
def _templates() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined

    return Environment(
        loader=PackageLoader("privacy.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def to_html(report: PrivacyReport) -> str:
    """Return the self-contained HTML document (plot embedded) a DPO can file."""
    data = to_dict(report)
    return _templates().get_template("report.html.j2").render(**_view(report, data))


def _weasyprint() -> Any:
    """Import WeasyPrint, or say in one line which library is missing.

    WeasyPrint loads Pango (a system library) when imported and prints a help block to
    stdout when it cannot; that block is swallowed and replaced by one error with the fix.
    """
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "HarfBuzz-Subset will be required"
            import weasyprint
    except ImportError:
        raise ReportRenderError(
            "cannot write a PDF: the Python package weasyprint is not installed",
            hint="pip install -e . installs it; --html writes the same report without it",
        ) from None
    except OSError:
        raise ReportRenderError(
            "cannot write a PDF: WeasyPrint cannot load the Pango text-layout library "
            "(a system library)",
            hint=f"install it ({PANGO_INSTALL}); --html writes the same report without it",
        ) from None
    return weasyprint


def require_pdf_support() -> None:
    """Raise ``ReportRenderError`` now if ``to_pdf`` could not run (before slow work)."""
    _weasyprint()


class _Collect(logging.Handler):
    def __init__(self, out: list[str]) -> None:
        super().__init__(logging.INFO)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        self.out.append(record.getMessage())


def to_pdf(report: PrivacyReport, *, log: list[str] | None = None) -> bytes:
    """Return the same document as ``to_html`` laid out on numbered A4 pages (WeasyPrint).

    WeasyPrint's messages (CSS it ignored, font fallbacks) go to ``log``, not the terminal:
    they are for whoever maintains the template, and the tests require there are none.
    """
    weasyprint = _weasyprint()
    logger = logging.getLogger("weasyprint")
    handler = _Collect(log if log is not None else [])
    saved = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        return weasyprint.HTML(string=to_html(report)).write_pdf()
    finally:
        logger.removeHandler(handler)
        logger.propagate = saved
