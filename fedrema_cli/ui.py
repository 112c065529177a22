"""Printing: rich for people, plain JSON for scripts, and progress displays on stderr.

How a process prints is set once, by the shell (`fedrema_cli.app`), from the command line:
``--json`` (one JSON document on stdout, also on failure), ``--quiet`` (no chatter: only
results, warnings and errors) and ``--verbose`` (errors keep their traceback).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from fedrema_cli.errors import NotYetError

#: Output that goes to a file or a pipe (a report filed, a log) is not cut to 80 columns: a
#: table would fold a site's name over two lines ("switzerlan" / "d"). $COLUMNS still wins.
FILE_WIDTH = 160


def _console(*, stderr: bool = False) -> Console:
    out = Console(stderr=stderr, highlight=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = FILE_WIDTH
    return out


console = _console()
err_console = _console(stderr=True)


@dataclass
class Mode:
    """How this process prints; the shell sets it before a command runs."""

    json: bool = False
    quiet: bool = False
    verbose: bool = False
    #: The shell writes the JSON document when the command ends (merged with an error).
    deferred: bool = False
    pending: Any = None
    has_pending: bool = False


mode = Mode()

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
        "(sftp://host/path, s3://bucket/path). With --state, defaults to the one that "
        "state folder recorded at init.",
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
    """One JSON document on stdout, nothing else (so `| jq` works); markup-free values.

    Under the shell it is written when the command ends, so a command that fails after
    printing its result still gives one document, with the error in it (`finish_json`).
    """
    obj = plain(obj)
    if not mode.deferred:
        return _write_json(obj)
    if mode.has_pending:
        _write_json(mode.pending)
    mode.pending, mode.has_pending = obj, True
    return None


def finish_json(error: dict[str, Any] | None = None) -> None:
    """Write the command's pending JSON document, with ``error``'s fields when it failed.

    With --json a failure is never silent on stdout: without a document of the command's
    own, the error object alone is written.
    """
    doc, had = mode.pending, mode.has_pending
    mode.pending, mode.has_pending = None, False
    if error is not None:
        error = plain(error)
        doc = (
            {**doc, **error}
            if isinstance(doc, dict)
            else {"result": doc, **error}
            if had
            else error
        )
        had = True
    if had:
        _write_json(doc)


def _write_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


#: Rich markup this project writes ([bold], [green], [/], ...), and Rich's escaped bracket.
_MARKUP = re.compile(
    r"\[/?(?:bold|dim|italic|underline|red|green|yellow|blue|cyan|magenta|white)"
    r"(?: [a-z ]+)?\]|\[/\]"
)


def plain(obj: Any) -> Any:
    """``obj`` with Rich markup taken out of every string (JSON is read by programs)."""
    if isinstance(obj, str):
        return _MARKUP.sub("", obj).replace("\\[", "[")
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj


def emit_text(text: str) -> None:
    """Plain text on stdout, exactly as given (no markup, no wrapping)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def say(text: str) -> None:
    """A line for the person running the command (stdout); --quiet silences it."""
    if not mode.quiet:
        _line(text)


def result(text: str) -> None:
    """A line that is the command's result (a model's metrics, a warning about it): kept
    under --quiet, which drops only the chatter around it."""
    _line(text)


def _line(text: str) -> None:
    # One event, one line in a log (cron, a file): only a terminal wraps it for reading.
    console.print(text, soft_wrap=not console.is_terminal)


def warn(text: str) -> None:
    """Something the operator should know about that did not stop the command (stderr)."""
    err_console.print(f"[yellow]![/] {escape(text)}", soft_wrap=True)


#: The bundled datasets, for --help (a test checks it names every one in the registry).
DATASET_HELP = (
    "heart-disease (4 real hospitals), label-skew (10 sites, digits) or "
    "breast-cancer-imbalanced (5 sites, 5-20% minority)."
)


def table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None
) -> Table:
    t = Table(title=title, caption=caption, title_justify="left")
    for i, c in enumerate(columns):
        # fold, never elide: a fingerprint cut to "…" cannot be compared
        t.add_column(c, justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        t.add_row(*[fmt(v) for v in row])
    return t


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


class Activity:
    """What a running command shows on stderr: a spinner, a line, the time it has taken.

    It clears itself when done in a terminal, and shows nothing where stderr is not one (a
    cron log) or under --quiet.
    """

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._task = progress.add_task("", total=None, count="") if progress else None

    def update(self, text: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=escape(text))

    def steps(self, done: int, total: int) -> None:
        """Known progress (e.g. epochs): done/total after the text."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=done, total=total, count=f"{done}/{total}")


@contextmanager
def activity(text: str, *, out: Console | None = None) -> Iterator[Activity]:
    """Show ``text`` with a spinner, done/total once ``steps`` is called, and the elapsed time."""
    out = out or err_console
    if mode.quiet or not out.is_terminal:
        yield Activity(None)
        return
    progress = Progress(
        SpinnerColumn("dots"),
        TextColumn("{task.description}"),
        TextColumn("{task.fields[count]}"),
        TimeElapsedColumn(),
        console=out,
        transient=True,
    )
    with progress:
        act = Activity(progress)
        act.update(text)
        yield act


def wait_for(
    step: Callable[[], tuple[bool, str]], *, timeout: float, poll: float = 1.0, quiet: bool = False
) -> NotYetError | None:
    """Call ``step`` until it reports done; show what is awaited, and for how long.

    Returns None when done, or, when ``timeout`` ran out, the NotYetError the command raises
    once it has printed what it did (a script reading --json still gets it).
    """
    deadline = time.monotonic() + timeout
    done, waiting = step()
    if done:
        return None
    with activity(f"waiting for {waiting}") as status:
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
                status.update(f"waiting for {waiting}")
