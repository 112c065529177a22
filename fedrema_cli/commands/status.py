"""`fedrema status`: where the round is, who is waited on, what each party does next."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from fedrema_cli import ui


def register(app: typer.Typer) -> None:
    app.command(name="status")(status)


def status(
    state: Annotated[
        Path | None,
        typer.Option(
            "--state",
            "-s",
            envvar="FEDREMA_STATE",
            help="A site's or the coordinator's state folder: the answer says what *it* does next.",
        ),
    ] = None,
    workspace: ui.WorkspaceOpt = None,
    json_out: ui.JsonOpt = False,
) -> None:
    """Show the current round, who has acted, who is missing, and what to do next.

    fedrema status -s cleveland
    """
    from fedrema_cli.views.status import federation_status

    out = federation_status(state=state, workspace=workspace)
    if json_out:
        ui.emit_json(out)
    else:
        _show(out)
    if out["ignored"]:  # the warnings themselves are printed once, by the shell
        from fedrema_cli.errors import IntegrityError

        raise IntegrityError(
            f"{len(out['ignored'])} workspace file(s) do not verify and were ignored "
            f"(first: {next(iter(sorted(out['ignored'])))}); the status above leaves them out",
            hint="have whoever runs the storage remove or restore them",
        )
    return None


def _show(out: dict[str, Any]) -> None:
    if out["phase"] == "enrolling":
        ui.say(
            f"[bold]{out['federation']}[/]: sites enrolling "
            f"({', '.join(out['acted']) or 'none yet'})"
        )
    elif out["complete"]:
        ui.say(
            f"[bold]{out['federation']}[/]: complete after {out['rounds']} rounds ({out['method']})"
        )
    else:
        ui.say(
            f"[bold]{out['federation']}[/]: round {out['round']} of {out['rounds']} — "
            f"{out['phase_label']} ({out['method']}, secure aggregation "
            f"{'on' if out['secure_aggregation'] else 'off'})"
        )
        ui.say(
            f"  to {out['action']}: done {len(out['acted'])}/{len(out['expected'])}"
            + (f"; waiting for {', '.join(out['missing'])}" if out["missing"] else "")
        )
    if out.get("withdrawn"):
        ui.say(
            "  withdrawn: "
            + ", ".join(f"{s} (from round {k})" for s, k in sorted(out["withdrawn"].items()))
        )
    if out.get("you"):
        ui.say(f"  you are [bold]{out['you']}[/]: next → {escape(out['next'])}")
        _show_evaluation(out)
    else:
        for who, what in out["next_for"].items():
            ui.say(f"  {who}: {escape(what)}")
    return None


def _show_evaluation(out: dict[str, Any]) -> None:
    """The warnings of this site's last `personalize` (status itself evaluates nothing)."""
    from fedrema_cli.views.clinical import warning_lines

    ev = out.get("last_evaluation")
    if not ev:
        return
    if not ev["warnings"]:
        ui.say(f"  last `fedrema personalize` (after round {ev['after_round']}): no warnings")
        return
    ui.say(f"  last `fedrema personalize` (after round {ev['after_round']}) warned:")
    for line in warning_lines(ev["warnings"], prefix="  "):
        ui.result(f"  {line}")  # warnings stay under -q
