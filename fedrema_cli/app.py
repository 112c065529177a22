"""The `fedrema` command line: commands parse, call one role, and print.

Every error a person can fix is translated here, once, into one line on stderr and an exit
code (see fedrema_cli.errors); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
import traceback
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from fedrema_cli.errors import (
    BUDGET_SPENT,
    BudgetError,
    ConfigError,
    FedremaError,
    IntegrityError,
    NotYetError,
    OptionError,
    ProtocolAbortedError,
    StateBusyError,
    UsageError,
)

EPILOG = (
    "Exit codes: 0 done · 1 bad input or wrong order · 2 usage (bad option or value) · "
    "3 integrity failure (forged/tampered/replayed file) · 4 privacy budget exceeded · "
    "5 secure aggregation aborted · 75 nothing to do yet: waiting on other parties (or on "
    "this site's train-local) · 130 interrupted (Ctrl-C) · 143 stopped by SIGTERM."
)

INTERRUPTED = "fedrema: interrupted; nothing half-written, run the command again"


def translate(exc: BaseException) -> FedremaError | None:
    """Map library errors (crypto, privacy) onto the CLI's errors; None if it is a bug."""
    if isinstance(exc, FedremaError):
        return exc
    from crypto import errors as ce

    if isinstance(exc, ce.ProtocolAborted):
        return ProtocolAbortedError(f"secure aggregation: {exc}")
    if isinstance(
        exc, ce.IntegrityError | ce.MalformedMessage | ce.InvalidShare | ce.DoubleRevealError
    ):
        return IntegrityError(f"secure aggregation: {exc}")
    if isinstance(exc, ce.ParameterError | ce.HeadroomError):
        return ConfigError(f"secure aggregation: {exc}")
    if isinstance(exc, ce.StageError):
        return UsageError(f"secure aggregation: {exc}")
    from privacy import errors as pe

    if isinstance(exc, pe.BudgetExceededError):
        return BudgetError(str(exc), hint=BUDGET_SPENT)
    if isinstance(exc, pe.LedgerIntegrityError):
        return IntegrityError(str(exc), hint=exc.hint)
    if isinstance(exc, pe.PrivacyError):
        return ConfigError(str(exc), hint=exc.hint)
    return None


class FedremaGroup(TyperGroup):
    """Runs a command and turns a user-facing error into one line and an exit code.

    With --json the error is also one JSON object on stdout (`ui.finish_json`); with
    --verbose it keeps its traceback on stderr.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        from fedrema_cli import ui

        # Before Click parses anything, so that even a usage error answers in JSON.
        ui.mode = ui.Mode(json="--json" in args, deferred=True)
        if not args:
            return super().parse_args(ctx, args)  # plain `fedrema`: the help, as Click shows it
        try:
            return super().parse_args(ctx, args)
        except typer.TyperException as exc:  # `fedrema --bogus`: before any command runs
            error = _usage_error(exc)
            ui.finish_json(error if ui.mode.json else None)
            ui.mode = ui.Mode()
            raise typer.Exit(error["exit_code"]) from None

    def invoke(self, ctx: Any) -> Any:
        from fedrema_cli import ui
        from fedrema_cli.store.federation import IGNORED

        configure_runtime()
        IGNORED.clear()
        error: dict[str, Any] | None = None
        previous = _on_sigterm()
        try:
            return super().invoke(ctx)
        except (KeyboardInterrupt, Terminated) as exc:  # every write is atomic: re-run it
            code = 143 if isinstance(exc, Terminated) else 130
            error = _error_object(INTERRUPTED.removeprefix("fedrema: "), None, code)
            typer.echo(INTERRUPTED, err=True)
            raise typer.Exit(code) from None
        except typer.TyperException as exc:  # a usage error: one line, exit 2
            error = _usage_error(exc)
            raise typer.Exit(error["exit_code"]) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            err = translate(exc)
            if isinstance(err, NotYetError) and IGNORED and not isinstance(err, StateBusyError):
                # Waiting, while a file that should be there does not verify: nobody may ever
                # act on it (a forged, replayed or damaged file). That is an alarm, not a wait.
                err = IntegrityError(
                    f"{err}; and {len(IGNORED)} workspace file(s) did not verify (the "
                    "`! ignored` lines)",
                    hint="the party that writes each one runs its command again (the bad "
                    "file is moved to quarantine/); if nobody wrote it, investigate",
                )
            if err is None:  # a bug: keep its traceback
                error = _error_object(f"internal error: {type(exc).__name__}: {exc}", None, 1)
                raise
            if ui.mode.verbose:
                traceback.print_exception(exc, file=sys.stderr)
            # A wait (75) is normal in a cron log: not worded as an error a watcher alarms on.
            kind = "waiting" if isinstance(err, NotYetError) else "error"
            msg = f"fedrema: {kind}: {err}"
            if err.hint:
                msg += f" (next: {err.hint})"
            typer.echo(msg.replace("\n", " "), err=True)
            error = _error_object(str(err), err.hint, err.exit_code)
            raise typer.Exit(err.exit_code) from None
        finally:
            _restore_sigterm(previous)
            report_ignored(IGNORED)
            ui.finish_json(error if ui.mode.json else None)
            ui.mode = ui.Mode()  # the next command (in this process, e.g. a test) starts afresh


class Terminated(BaseException):
    """SIGTERM (a service manager or `timeout` stopping the command): handled as Ctrl-C."""


def _on_sigterm() -> Any:
    """Turn SIGTERM into `Terminated` while a command runs (main thread only)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum: int, frame: Any) -> None:
        raise Terminated

    return signal.signal(signal.SIGTERM, stop)


def _restore_sigterm(previous: Any) -> None:
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _usage_error(exc: Exception) -> dict[str, Any]:
    """Print a usage error (bad option or value) as one line naming the help; its JSON form."""
    format_message = getattr(exc, "format_message", None)
    message = format_message() if callable(format_message) else str(exc)
    code = getattr(exc, "exit_code", 2)
    sub = getattr(exc, "ctx", None)
    hint = f"`{sub.command_path} -h` shows its options" if sub is not None else None
    line = f"fedrema: error: {message}" + (f" (next: {hint})" if hint else "")
    typer.echo(line.replace("\n", " "), err=True)
    return _error_object(message, hint, code)


def _error_object(message: str, hint: str | None, exit_code: int) -> dict[str, Any]:
    """What --json prints when a command fails (merged into the command's own document)."""
    return {"ok": False, "error": message.replace("\n", " "), "hint": hint, "exit_code": exit_code}


def report_ignored(ignored: dict[str, str]) -> None:
    """One line per workspace file that was present but did not verify, so was not used."""
    from fedrema_cli import ui

    for path, why in sorted(ignored.items()):
        ui.warn(f"ignored {path}: {why}")


app = typer.Typer(
    name="fedrema",
    cls=FedremaGroup,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
    epilog=EPILOG,
    help=(
        "Hospitals train personalized models together; patient data never leaves a hospital.\n\n"
        "A round: each site runs [bold]train-local[/] (DP-SGD on its own data) and "
        "[bold]submit[/] (masked update), the coordinator runs [bold]aggregate[/] (unmask the "
        "sum, FedReMa-merge the heads), sites [bold]submit[/] again (unmasking shares) and the "
        "coordinator [bold]aggregate[/]s again. [bold]status[/] always says what is next.\n\n"
        "Try it on one machine: [bold]fedrema simulate heart-disease[/]."
    ),
)


def _register() -> None:
    from fedrema_cli.commands import (
        coordinator,
        methods,
        privacy,
        setup,
        simulate,
        site,
        status,
    )

    setup.register(app)
    site.register(app)
    coordinator.register(app)
    status.register(app)
    simulate.register(app)
    privacy.register(app)
    methods.register(app)


_register()


@app.command(hidden=True)
def version() -> None:
    """Print the version."""
    from fedrema_cli import __version__

    typer.echo(__version__)


def _print_version(value: bool) -> None:
    if value:
        from fedrema_cli import __version__

        typer.echo(f"fedrema {__version__}")
        raise typer.Exit()


@app.callback()
def options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            expose_value=False,
            help="Print the version and exit.",
        ),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="On an error, also print its traceback (stderr)."),
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet",
            "-q",
            help="Print only results, warnings and errors: no progress, no ✓ lines.",
        ),
    ] = False,
) -> None:
    """Options for every command; they go before the command (`fedrema -q submit ...`)."""
    from fedrema_cli import ui

    if verbose and quiet:
        raise OptionError("--verbose and --quiet contradict each other")
    ui.mode.verbose, ui.mode.quiet = verbose, quiet


def configure_runtime() -> None:
    """Process settings for every command.

    Libraries' chatter is not for operators: dp-accounting logs every RDP order it skips,
    Opacus warns about a backward-hook detail on every private step. And the models here are
    small: one torch thread is several times faster than many fighting over two cores.
    """
    import logging
    import os
    import warnings

    logging.getLogger("absl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def main() -> None:
    configure_runtime()
    app(prog_name="fedrema")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
