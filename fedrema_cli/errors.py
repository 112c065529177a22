"""Errors a person can act on; `app.py` turns each into one line and an exit code.

Exit codes (also in `fedrema --help` and the README):
    0  done (or nothing left to do)
    1  bad input or wrong order: the message says what to fix
    2  command-line usage error (unknown option, missing argument, a bad option value)
    3  integrity failure: a file is forged, tampered, replayed or from another round
    4  privacy budget would be exceeded: nothing was trained
    5  protocol aborted: too few sites survived the round
   75  nothing could be done yet: other parties must act first (or a `--wait` ran out of
       time, or `submit` waits for this site's `train-local`); run the same command again
       later
  130  interrupted (Ctrl-C): nothing is half-written; run the same command again
"""

from __future__ import annotations


class FedremaError(Exception):
    """Root of every error the CLI reports without a traceback."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class UsageError(FedremaError):
    """A command was run with inconsistent options, out of order, or twice."""


class OptionError(UsageError):
    """A value typed on the command line is invalid, or two options contradict each other.

    Exit 2, like Click's own usage errors: the command line itself must change.
    """

    exit_code = 2


class ConfigError(FedremaError):
    """A federation config, roster or site state is missing or does not validate."""


class DataError(FedremaError):
    """A data file is missing, unreadable, or does not match the federation's schema."""


class StoreError(FedremaError):
    """The workspace or a state folder cannot be read or written."""


class WriteOnceError(StoreError):
    """A write-once file already exists with different content."""


class IntegrityError(FedremaError):
    """A file's signature, hash, author, kind or round is not what the reader expects."""

    exit_code = 3


class UnsafeFileError(IntegrityError):
    """A store path is a symlink, a special file, a file where a folder should be, or too big.

    Someone with write access to the store planted it (or it is not fedrema's); reading it
    could hang, exhaust memory, or read outside the store, so it is refused unread.
    """


class BudgetError(FedremaError):
    """Training this round would spend more privacy budget than the policy allows."""

    exit_code = 4


#: What a site whose budget is spent can still do: BudgetError's hint, and its `status`.
BUDGET_SPENT = (
    "this site can train no more rounds; `fedrema withdraw` tells the coordinator to stop "
    "waiting for it, and `fedrema personalize` builds its model from the rounds so far"
)


class ProtocolAbortedError(FedremaError):
    """Secure aggregation cannot complete this round (too few survivors, bad shares)."""

    exit_code = 5


class NotYetError(FedremaError):
    """Nothing could be done yet because other parties must act first (or --wait timed out)."""

    exit_code = 75


class SitsOutError(NotYetError):
    """This site was left out of a round: it sits it out until a round it can rejoin, or the
    end (75, not an alarm for a cron line)."""


class StateBusyError(NotYetError):
    """Another fedrema command holds this party's state folder; run again once it is done."""
