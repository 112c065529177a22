"""`fedrema privacy report` and `fedrema audit`: epsilon per site and round, from signed ledgers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedrema_cli import ui


def register(app: typer.Typer) -> None:
    privacy_app = typer.Typer(
        name="privacy", no_args_is_help=True, help="Privacy budgets for compliance staff."
    )
    privacy_app.command(name="report")(report)
    app.add_typer(privacy_app)
    app.command(name="audit")(audit)


StateAny = Annotated[
    Path | None,
    typer.Option(
        "--state",
        "-s",
        envvar="FEDREMA_STATE",
        help="A site's state folder: report that site's own ledger (the source of truth).",
    ),
]


def report(
    state: StateAny = None,
    workspace: ui.WorkspaceOpt = None,
    html: Annotated[
        Path | None,
        typer.Option(
            help="Write a self-contained HTML report (with the epsilon plot) to file here."
        ),
    ] = None,
    pdf: Annotated[Path | None, typer.Option(help="Write a PDF report here.")] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Replace an existing --html/--pdf file (never a link or device)."
        ),
    ] = False,
    detail: Annotated[
        bool,
        typer.Option(
            "--detail", help="Also show every round's steps, sampling rate, noise and clip."
        ),
    ] = False,
    json_out: ui.JsonOpt = False,
) -> None:
    """Epsilon spent per site and per round against the budget, verified from signed ledgers.

    Every number is recomputed from the signed ledger entries, with the site's accountant and
    independently with Google's dp-accounting (RDP and PLD); anything that does not verify is
    shown in red and the exit code is 3. The HTML/PDF states the assumptions and what is and
    is not covered.

      fedrema privacy report -w /shared/heart --html privacy-report.html
    """
    from fedrema_cli.errors import OptionError
    from fedrema_cli.store.storage import check_output, write_output
    from fedrema_cli.views.privacy import build
    from privacy.report import problem_lines, require_pdf_support, to_dict, to_html, to_pdf, to_rich

    if html is not None and pdf is not None and html.resolve() == pdf.resolve():
        raise OptionError(f"--html and --pdf are both {html}; give each its own file")
    for option, path in (("--html", html), ("--pdf", pdf)):
        if path is not None:  # before any slow work, and before either file is written
            check_output(path, option=option, overwrite=force)
    if pdf is not None:
        require_pdf_support()  # a missing system library is one line, before any slow work
    rep, _ = build(state=state, workspace=workspace)  # workspace problems are folded into rep
    outputs = (
        ("--html", html, lambda: to_html(rep).encode("utf-8")),
        ("--pdf", pdf, lambda: to_pdf(rep)),
    )
    for option, path, data in outputs:
        if path is not None:
            write_output(path, data(), option=option, overwrite=force)
    if json_out:
        ui.emit_json(to_dict(rep))
    else:
        ui.console.print(to_rich(rep, detail=detail))
        for path in (html, pdf):
            if path is not None:
                ui.say(f"written: {path}")
    _fail_on(problem_lines(rep), hint="the report lists every problem; `fedrema audit` too")


AUDIT_COLUMNS = (
    "site", "status", "rounds", "ε (site)", "ε RDP (dp-acc.)", "ε PLD (dp-acc.)", "target",
)  # fmt: skip


def _fail_on(problems: list[str], *, hint: str | None = None) -> None:
    """Exit 3 with the first problem on one line (and how many more), if there is any."""
    from fedrema_cli.errors import IntegrityError

    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise IntegrityError(problems[0] + more, hint=hint)


def audit(
    state: StateAny = None,
    workspace: ui.WorkspaceOpt = None,
    json_out: ui.JsonOpt = False,
) -> None:
    """Verify every ledger's hash chain and signatures and recompute epsilon independently.

    Shows the site's own epsilon next to dp-accounting's RDP and PLD figures; exits 3 naming
    the site and the entry (line) when anything does not verify.

      fedrema audit -w /shared/heart
    """
    from fedrema_cli.views.privacy import build
    from privacy.report import epsilon_cell, problem_lines, to_dict

    rep, _ = build(state=state, workspace=workspace)  # workspace problems are in rep
    # The report's own per-site figures (`to_dict`): a site that does not verify has no epsilon
    # there, only the lower bound its verified entries prove.
    sites = [
        {
            "site": d["site"],
            "status": d["status"],
            "rounds": len(s.rounds),
            "epsilon": d["epsilon"],
            "epsilon_rdp_independent": d["epsilon_independent"]["rdp"],
            "epsilon_pld_independent": d["epsilon_independent"]["pld"],
            "epsilon_verified_at_least": d["epsilon_verified_at_least"],
            "target_epsilon": d["target_epsilon"],
            "delta": d["delta"],
        }
        for d, s in zip(to_dict(rep)["sites"], rep.sites, strict=True)
    ]
    # rep.problems holds the workspace problems (``extra``) too.
    problems = [str(p) for p in rep.problems]
    problems += [f"{s.site}: {p}" for s in rep.sites for p in s.failing_problems]
    lines = problem_lines(rep)
    if json_out:
        ui.emit_json(
            {
                "federation": rep.federation,
                "generated_at": rep.generated_at,
                "verified": not problems,
                "problems": problems,
                "problem_lines": lines,
                "sites": sites,
            }
        )
    else:
        delta = rep.policy.get("delta")
        ui.console.print(
            ui.table(
                f"Audit of {rep.federation}, δ = {delta:g}, {rep.generated_at}",
                AUDIT_COLUMNS,
                [
                    (
                        r["site"],
                        r["status"],
                        r["rounds"],
                        epsilon_cell(s),
                        r["epsilon_rdp_independent"] if s.verified else "—",
                        r["epsilon_pld_independent"] if s.verified else "—",
                        r["target_epsilon"],
                    )
                    for r, s in zip(sites, rep.sites, strict=True)
                ],
            )
        )
    _fail_on(lines)
    if not json_out:
        ui.say("[green]✓[/] every ledger verifies; epsilon recomputed independently")
