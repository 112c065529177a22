"""Renderers for ``PrivacyReport``: JSON-able dict, rich renderable, HTML document, PNG, PDF.

Nothing here prints or writes files; each function returns a value for the shell to show or
store. The HTML is self-contained (inline CSS, the plot embedded as a base64 PNG) so a
data-protection officer can file the single document. Plots use matplotlib's Agg canvas on a
private ``Figure`` (no pyplot global state).

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
import html
import io
import math
import textwrap
from typing import Any

from privacy.report.model import REPORT_FORMAT, PrivacyReport, RoundRow, SiteReport


def _num(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(x)


def _fmt(x: float | None, digits: int = 4) -> str:
    v = _num(x)
    return "—" if v is None else f"{v:.{digits}f}"


def _row_dict(r: RoundRow) -> dict[str, Any]:
    return {
        "round": r.round,
        "seq": r.seq,
        "line": r.line,
        "timestamp": r.timestamp,
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
    return {
        "site": s.site,
        "status": s.status.value,
        "verified": s.verified,
        "accountant": s.accountant,
        "delta": s.delta,
        "target_epsilon": s.target_epsilon,
        "epsilon": _num(s.epsilon),
        "epsilon_independent": {
            "rdp": _num(s.epsilon_rdp_independent),
            "pld": _num(s.epsilon_pld_independent),
        },
        "remaining": _num(s.remaining),
        "rounds_trained": len(s.rounds),
        "steps": sum(r.steps for r in s.rounds),
        "ledger_head": s.head,
        "library_versions": dict(s.library_versions),
        "problems": [p.to_dict() for p in s.problems],
        "rounds": [_row_dict(r) for r in s.rounds],
    }


def to_dict(report: PrivacyReport) -> dict[str, Any]:
    """Return the report as a JSON-able dict (NaN/inf become ``null``)."""
    a = report.assumptions
    return {
        "format": REPORT_FORMAT,
        "federation": report.federation,
        "generated_at": report.generated_at,
        "verified": report.verified,
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
        "problems": [p.to_dict() for p in report.problems],
        "sites": [_site_dict(s) for s in report.sites],
    }


def _all_problems(report: PrivacyReport) -> list[str]:
    out = [str(p) for p in report.problems]
    for s in report.sites:
        out += [f"{s.site}: {p}" for p in s.failing_problems]
    return out


def to_rich(report: PrivacyReport, *, detail: bool = False) -> Any:
    """Return a rich renderable: banner, budget per site, epsilon per site and round.

    ``detail`` adds one table per site with every round's steps, q, sigma and clip.
    """
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = []
    if report.verified:
        parts.append(Text("All ledgers verified: hash chains and signatures OK.", style="green"))
    else:
        body = "\n".join(_all_problems(report)) or "no ledgers"
        parts.append(
            Panel(
                Text(body, style="bold"), title="NOT VERIFIED", border_style="bold red", style="red"
            )
        )
    summary = Table(
        title=f"Privacy budget per site, federation {report.federation}",
        caption="ε: the site's accountant; RDP*, PLD*: recomputed from the ledger with "
        "dp-accounting",
        title_justify="left",
    )
    for col in ("site", "status", "rounds", "ε spent", "RDP*", "PLD*", "budget", "left"):
        summary.add_column(col, justify="left" if col in ("site", "status") else "right")
    for s in report.sites:
        summary.add_row(
            s.site,
            s.status.value,
            str(len(s.rounds)),
            _fmt(s.epsilon),
            _fmt(s.epsilon_rdp_independent),
            _fmt(s.epsilon_pld_independent),
            f"{s.target_epsilon:g}",
            _fmt(s.remaining),
            style=None if s.verified else "red",
        )
    parts.append(summary)
    rounds = sorted({r.round for s in report.sites for r in s.rounds})
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
                cells.append(
                    "–"
                    if row is None
                    else (_fmt(row.epsilon) if row.verified else f"[red]{_fmt(row.epsilon)}!")
                )
            matrix.add_row(str(rnd), *cells)
        parts.append(matrix)
    if detail:
        for s in report.sites:
            t = Table(title=f"{s.site} ({s.accountant}, delta={s.delta:g})", title_justify="left")
            for col in ("round", "steps", "q", "sigma", "C", "ε", "RDP*", "PLD*", "ok"):
                t.add_column(col, justify="right")
            for r in s.rounds:
                t.add_row(
                    str(r.round),
                    str(r.steps),
                    f"{r.sample_rate:.5g}",
                    f"{r.noise_multiplier:.5g}",
                    f"{r.max_grad_norm:g}",
                    _fmt(r.epsilon),
                    _fmt(r.epsilon_rdp_independent),
                    _fmt(r.epsilon_pld_independent),
                    "yes" if r.verified else "NO",
                    style=None if r.verified else "red",
                )
            parts.append(t)
    return Group(*parts)


def plot_png(report: PrivacyReport, *, dpi: int = 110) -> bytes:
    """Return a PNG of composed epsilon over rounds per site, against the budget line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7.5, 4.2), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    target = float(report.policy.get("target_epsilon", float("nan")))
    planned = int(report.policy.get("planned_rounds", 0) or 0)
    for s in report.sites:
        pts = [(r.round, r.epsilon) for r in s.rounds if _num(r.epsilon) is not None]
        if pts:
            xs, ys = zip(*pts, strict=True)
            suffix = "" if s.verified else " — NOT VERIFIED"
            label = f"{s.site} ({s.accountant}){suffix}"
            (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=label)
            bad = [(r.round, r.epsilon) for r in s.rounds if not r.verified and _num(r.epsilon)]
            if bad:
                bx, by = zip(*bad, strict=True)
                ax.plot(bx, by, linestyle="none", marker="x", markersize=8, color="red")
            ind = [
                (r.round, r.epsilon_pld_independent)
                for r in s.rounds
                if _num(r.epsilon_pld_independent) is not None
            ]
            if ind:
                ix, iy = zip(*ind, strict=True)
                ax.plot(ix, iy, linestyle=":", color=line.get_color(), linewidth=1)
    if math.isfinite(target):
        ax.axhline(
            target,
            color="red",
            linestyle="--",
            linewidth=1.5,
            label=f"budget (target epsilon = {target:g})",
        )
    if planned:
        ax.set_xlim(
            0,
            max(planned, *(r.round for s in report.sites for r in s.rounds))
            if any(s.rounds for s in report.sites)
            else planned,
        )
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("composed epsilon (record-level)")
    ax.set_title(
        "Privacy spend per site (solid: site accountant; dotted: dp-accounting PLD)", fontsize=9
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:60rem;
margin:2rem auto;padding:0 1rem;color:#1a1a1a;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;font-size:.9rem;margin:.5rem 0 1rem}
th,td{border:1px solid #ccc;padding:.25rem .45rem;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}
tr.bad td{background:#fde2e2;color:#8b0000}
.banner{padding:1rem 1.25rem;border-radius:.3rem;margin:1rem 0;font-weight:600}
.fail{background:#c00000;color:#fff;font-size:1.2rem;border:4px solid #7a0000}
.fail ul{font-weight:400;font-size:.95rem}
.ok{background:#e3f5e6;color:#0b5d1e;border:1px solid #0b5d1e}
.meta{color:#555;font-size:.85rem}img{max-width:100%}code{font-size:.85rem}
"""


def _table(headers: list[str], rows: list[tuple[list[str], bool]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for cells, ok in rows:
        cls = "" if ok else ' class="bad"'
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def to_html(report: PrivacyReport) -> str:
    """Return a self-contained HTML document (plot embedded) a DPO can file."""
    e = html.escape
    out: list[str] = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Privacy report: {e(report.federation)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Differential-privacy report — federation <code>{e(report.federation)}</code></h1>",
        f"<p class='meta'>Generated {e(report.generated_at)} · format {REPORT_FORMAT}</p>",
    ]
    if report.verified:
        out.append(
            "<div class='banner ok' id='verification'>All site ledgers verified: hash chains, "
            "signatures, recorded epsilons and the independent check agree.</div>"
        )
    else:
        items = "".join(f"<li>{e(p)}</li>" for p in _all_problems(report)) or "<li>no ledgers</li>"
        out.append(
            "<div class='banner fail' id='verification' role='alert'>⚠ NOT VERIFIED — do not "
            "rely on the figures below until every item is explained."
            f"<ul>{items}</ul></div>"
        )
    out.append("<h2>Summary</h2>")
    out.append(
        _table(
            [
                "site",
                "status",
                "rounds",
                "steps",
                "epsilon",
                "indep. RDP",
                "indep. PLD",
                "target",
                "remaining",
            ],
            [
                (
                    [
                        s.site,
                        s.status.value,
                        str(len(s.rounds)),
                        str(sum(r.steps for r in s.rounds)),
                        _fmt(s.epsilon),
                        _fmt(s.epsilon_rdp_independent),
                        _fmt(s.epsilon_pld_independent),
                        f"{s.target_epsilon:g}",
                        _fmt(s.remaining),
                    ],
                    s.verified,
                )
                for s in report.sites
            ],
        )
    )
    p = report.policy
    out.append(
        f"<p>Each site's guarantee is ({e(str(p.get('target_epsilon')))}, "
        f"{e(str(p.get('delta')))})-differential privacy at most, record-level, accountant "
        f'<code>{e(str(p.get("accountant")))}</code>. "epsilon" is recomputed from the signed '
        "ledger with the policy's accountant (Opacus); the independent columns are recomputed "
        "from the same records with Google's dp-accounting (RDP on the same order grid, and "
        "PLD).</p>"
    )
    png = base64.b64encode(plot_png(report)).decode("ascii")
    out.append("<h2>Epsilon over rounds</h2>")
    out.append(
        f"<img id='epsilon-plot' alt='composed epsilon per round and site against the budget' "
        f"src='data:image/png;base64,{png}'>"
    )
    for s in report.sites:
        out.append(
            f"<h2>Site <code>{e(s.site)}</code> — {e(s.status.value)}</h2>"
            f"<p class='meta'>ledger head <code>{e(s.head)}</code>; libraries "
            f"{e(', '.join(f'{k} {v}' for k, v in sorted(s.library_versions.items())))}</p>"
        )
        out.append(
            _table(
                [
                    "round",
                    "line",
                    "steps",
                    "q",
                    "sigma",
                    "C",
                    "epsilon (ledger)",
                    "epsilon (recomputed)",
                    "indep. RDP",
                    "indep. PLD",
                    "verified",
                ],
                [
                    (
                        [
                            str(r.round),
                            str(r.line),
                            str(r.steps),
                            f"{r.sample_rate:.5g}",
                            f"{r.noise_multiplier:.5g}",
                            f"{r.max_grad_norm:g}",
                            _fmt(r.epsilon_recorded),
                            _fmt(r.epsilon),
                            _fmt(r.epsilon_rdp_independent),
                            _fmt(r.epsilon_pld_independent),
                            "yes" if r.verified else "NO",
                        ],
                        r.verified,
                    )
                    for r in s.rounds
                ],
            )
        )
        if s.problems:
            out.append("<ul>" + "".join(f"<li>{e(str(pr))}</li>" for pr in s.problems) + "</ul>")
    a = report.assumptions
    out.append("<h2 id='assumptions'>Assumptions</h2><ul>")
    out.append(f"<li><b>Unit:</b> {e(a.unit)}.</li>")
    out.append(f"<li><b>Neighbouring relation:</b> {e(a.neighbouring_relation)}.</li>")
    out.append(f"<li><b>Sampling and mechanism:</b> {e(a.sampling)}.</li>")
    out.append(f"<li><b>Accountant:</b> {e(a.accountant)}.</li></ul>")
    out.append("<h3>What is covered</h3><ul>")
    out += [f"<li>{e(c)}</li>" for c in a.covered]
    out.append("</ul><h3>What is NOT covered</h3><ul>")
    out += [f"<li>{e(c)}</li>" for c in a.not_covered]
    out.append("</ul><h3>Caveats</h3><ul>")
    out += [f"<li>{e(c)}</li>" for c in a.caveats]
    out.append("</ul><h2>Policy and tools</h2>")
    out.append(
        _table(
            ["policy field", "value"],
            [([k, str(v)], True) for k, v in sorted(report.policy.items())],
        )
    )
    out.append(
        _table(
            ["report tool", "version"],
            [([k, v], True) for k, v in sorted(report.tool_versions.items())]
            + [(["PLD discretisation", f"{report.pld_discretization:g}"], True)],
        )
    )
    out.append("</body></html>")
    return "\n".join(out)


def to_pdf(report: PrivacyReport) -> bytes:
    """Return a short PDF (summary, plot, assumptions) rendered with matplotlib."""
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure
    from matplotlib.image import imread

    buf = io.BytesIO()
    with PdfPages(
        buf, metadata={"Title": f"Privacy report {report.federation}", "CreationDate": None}
    ) as pdf:
        fig = Figure(figsize=(8.27, 11.69))
        y = 0.96
        fig.text(
            0.06, y, f"Differential-privacy report: {report.federation}", fontsize=15, weight="bold"
        )
        y -= 0.03
        fig.text(0.06, y, f"Generated {report.generated_at}", fontsize=8)
        y -= 0.04
        if report.verified:
            fig.text(0.06, y, "All site ledgers verified.", color="darkgreen", fontsize=11)
        else:
            fig.text(
                0.06,
                y,
                "NOT VERIFIED - see problems below",
                color="white",
                fontsize=13,
                weight="bold",
                bbox={"facecolor": "#c00000", "edgecolor": "#7a0000"},
            )
        y -= 0.04
        for s in report.sites:
            fig.text(
                0.06,
                y,
                f"{s.site}: {s.status.value}, {len(s.rounds)} rounds, epsilon "
                f"{_fmt(s.epsilon)} (indep. RDP {_fmt(s.epsilon_rdp_independent)}, PLD "
                f"{_fmt(s.epsilon_pld_independent)}) of target {s.target_epsilon:g}",
                fontsize=9,
            )
            y -= 0.022
        for prob in _all_problems(report)[:12]:
            fig.text(0.06, y, textwrap.shorten(prob, 120), fontsize=7, color="#8b0000")
            y -= 0.018
        img = imread(io.BytesIO(plot_png(report, dpi=150)), format="png")
        ax = fig.add_axes((0.05, 0.05, 0.9, max(0.1, y - 0.08)))
        ax.imshow(img)
        ax.axis("off")
        pdf.savefig(fig)
        fig2 = Figure(figsize=(8.27, 11.69))
        a = report.assumptions
        lines = [
            "Assumptions",
            "",
            f"Unit: {a.unit}",
            f"Neighbouring: {a.neighbouring_relation}",
            f"Sampling: {a.sampling}",
            f"Accountant: {a.accountant}",
            "",
            "Covered:",
        ]
        lines += [f"  - {c}" for c in a.covered] + ["", "NOT covered:"]
        lines += [f"  - {c}" for c in a.not_covered] + ["", "Caveats:"]
        lines += [f"  - {c}" for c in a.caveats]
        y = 0.95
        for raw in lines:
            for part in textwrap.wrap(raw, 110) or [""]:
                weight = "bold" if raw == "Assumptions" else None
                fig2.text(0.06, y, part, fontsize=8, weight=weight)
                y -= 0.016
        pdf.savefig(fig2)
    return buf.getvalue()
