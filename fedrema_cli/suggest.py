"""Did-you-mean: the closest of the names a person could have meant, for one-line errors.

One helper for every name a user types (CSV columns, site names, state folders), so each
error suggests the same way: a case-insensitive exact match first, then difflib's closest.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice ``name`` most likely meant (case-insensitive match first, then difflib)."""
    options = list(choices)
    for c in options:
        if c.strip().lower() == name.lower():
            return c
    lowered = {c.lower(): c for c in options}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` to append to an error, or "" when nothing is close."""
    guess = closest(name, [c for c in choices if c != name])
    return f"; did you mean {guess!r}?" if guess is not None else ""


def missing_folder(path: str | Path) -> str:
    """Why a folder cannot be used: "does not exist", plus a sibling with a close name."""
    p = Path(path)
    try:
        siblings = [c.name for c in p.parent.iterdir() if c.is_dir()]
    except OSError:
        siblings = []
    guess = closest(p.name, [s for s in siblings if s != p.name])
    return "does not exist" + (f"; did you mean {p.with_name(guess)}?" if guess else "")
