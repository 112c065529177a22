"""`fedrema privacy report` and `fedrema audit` (wired in with the privacy ledger)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    del app
