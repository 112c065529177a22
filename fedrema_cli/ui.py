"""Printing: rich for people, plain JSON for scripts, and a waiting loop with a spinner."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fedrema_cli.errors import NotYetError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

StateOpt = Annotated[
    Path,
    typer.Option(
        "--state",
        "-s",
        envvar="FEDREMA_STATE",
        help="This party's private state folder (keys, secrets, local models). Never share it.",
    ),
]
WorkspaceOpt = Annotated[
    str | None,
    typer.Option(
        "--workspace",
        "-w",
        envvar="FEDREMA_WORKSPACE",
        help="The federation workspace shared by all parties: a folder, or an fsspec URL "
        "(sftp://host/path, s3://bucket/path). Defaults to the one recorded at init.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
WaitOpt = Annotated[
    bool, typer.Option("--wait", help="Keep going until this party's part of the round is done.")
]
TimeoutOpt = Annotated[
    float,
    typer.Option(
        "--timeout", min=0, help="With --wait: give up after this many seconds (exit 75)."
    ),
]


def emit_json(obj: Any) -> None:
    """One JSON document on stdout, nothing else (so `| jq` works)."""
    sys.stdout.write(json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def emit_text(text: str) -> None:
    """Plain text on stdout, exactly as given (no markup, no wrapping)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def say(text: str) -> None:
    console.print(text)


def warn(text: str) -> None:
    """Something the operator should know about that did not stop the command (stderr)."""
    err_console.print(f"[yellow]![/] {escape(text)}", soft_wrap=True)


def table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None
) -> Table:
    t = Table(title=title, caption=caption, title_justify="left")
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*[fmt(v) for v in row])
    return t


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def wait_for(
    step: Callable[[], tuple[bool, str]], *, timeout: float, poll: float = 1.0, quiet: bool = False
) -> NotYetError | None:
    """Call ``step`` until it reports done; show what is awaited.

    Returns None when done, or, when ``timeout`` ran out, the NotYetError the command raises
    once it has printed what it did (a script reading --json still gets it).
    """
    deadline = time.monotonic() + timeout
    done, waiting = step()
    if done:
        return None
    with err_console.status(waiting, spinner="dots") as status:
        while True:
            if time.monotonic() >= deadline:
                return NotYetError(
                    f"gave up after {timeout:.0f}s; still waiting for {waiting}",
                    hint="run the same command again later",
                )
            time.sleep(poll)
            done, waiting = step()
            if done:
                return None
            if not quiet:
                status.update(waiting)
