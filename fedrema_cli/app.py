"""The `fedrema` command line."""

import typer

app = typer.Typer(name="fedrema", no_args_is_help=True, pretty_exceptions_show_locals=False)


@app.command()
def version() -> None:
    """Print the version."""
    from fedrema_cli import __version__

    typer.echo(__version__)


def main() -> None:
    app()
