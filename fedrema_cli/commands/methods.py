"""`fedrema methods`: the personalization methods, what each shares and its options."""

from __future__ import annotations

from typing import Annotated

import typer

from fedrema_cli import ui


def register(app: typer.Typer) -> None:
    app.command(name="methods")(methods)


def methods(
    json_out: ui.JsonOpt = False,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the docs' method table (Markdown).")
    ] = False,
) -> None:
    """List the methods a federation can run: what each sends and the options it takes.

    fedrema methods
    fedrema methods --markdown   # the table in docs/architecture.md
    """
    from fedrema_cli.methods import METHODS, markdown_table, option_ranges

    if markdown and json_out:
        from fedrema_cli.errors import OptionError

        raise OptionError("--markdown and --json each choose the output; give one")
    if markdown:
        return ui.emit_text(markdown_table())

    rows = [
        {
            "method": name,
            "summary": m.summary,
            "secure_aggregation": m.shared,
            "sealed_to_coordinator": m.personal,
            "options": {k: f.default for k, f in m.Options.model_fields.items()},
            # what each option accepts, as `--option` checks it
            "option_ranges": option_ranges(name),
        }
        for name, m in METHODS.items()
    ]
    if json_out:
        return ui.emit_json({"methods": rows})
    ui.console.print(
        ui.table(
            "Methods (fedrema init --method NAME [--option KEY=VALUE ...])",
            ["method", "summed (SecAgg)", "sealed to coordinator"],
            [
                (
                    r["method"],
                    r["secure_aggregation"] or "nothing",
                    r["sealed_to_coordinator"] or "nothing",
                )
                for r in rows
            ],
        )
    )
    for r in rows:
        ui.say(f"  [bold]{r['method']}[/]: {r['summary']}")
        for k, v in r["options"].items():
            accepts = r["option_ranges"][k]
            shown = "null" if v is None else v  # what --option reads as None
            ui.say(f"      --option {k}={shown}" + (f"  ({accepts})" if accepts else ""))
    return None
