"""Errors raised by the privacy package, one class per situation a person can act on.

Every class carries a ``hint`` (what to do next) so the shell can print one line and an exit
code without a traceback. The shell maps these to its own ``FedremaError`` classes at the
boundary (``BudgetExceededError`` -> exit code 4, ``LedgerIntegrityError`` -> exit code 3).

>>> err = BudgetExceededError(epsilon_now=3.9, epsilon_after=4.4, target_epsilon=4.0, delta=1e-5)
>>> "4.4" in str(err) and isinstance(err, PrivacyError)
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class PrivacyError(Exception):
    """Root of every error the privacy package raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class PolicyError(PrivacyError):
    """Raised when a privacy policy cannot be applied to this site (e.g. delta >= 1/N, or no noise
    level reaches the target epsilon)."""


class BudgetExceededError(PrivacyError):
    """Raised by the pre-round gate when training one more round would push epsilon past the
    target; nothing was trained and the accountant is unchanged."""

    def __init__(
        self,
        *,
        epsilon_now: float,
        epsilon_after: float,
        target_epsilon: float,
        delta: float,
        round: int | None = None,
        hint: str | None = None,
    ) -> None:
        where = f"round {round}" if round is not None else "the next round"
        message = (
            f"training {where} would spend privacy budget past the target: "
            f"epsilon is {epsilon_now:.4f} now and would be {epsilon_after:.4f} after it, "
            f"target is {target_epsilon:.4f} (delta={delta:g})"
        )
        super().__init__(
            message,
            hint=hint
            or (
                "this site has used its budget: stop training here (the model trained so far "
                "stays valid), or have the coordinator issue a new federation config with a "
                "larger target epsilon or fewer/lighter rounds and re-plan"
            ),
        )
        self.epsilon_now = epsilon_now
        self.epsilon_after = epsilon_after
        self.target_epsilon = target_epsilon
        self.delta = delta
        self.round = round


class RoundAlreadyTrainedError(PrivacyError):
    """Raised when the ledger already records this (or a later) round: its budget is spent, so it
    is not trained or recorded again."""

    def __init__(self, *, round: int, recorded_round: int, line: int | None = None) -> None:
        where = f" (ledger line {line})" if line is not None else ""
        super().__init__(
            f"round {round} cannot be trained: the ledger already records round "
            f"{recorded_round}{where}",
            hint="that round's privacy budget is already spent; wait for the next round",
        )
        self.round = round
        self.recorded_round = recorded_round
        self.line = line


class AccountingError(PrivacyError):
    """Raised when an accountant yields NaN, inf or negative epsilon, a history is malformed, or
    the steps Opacus counted disagree with the parameter updates that ran (fail closed)."""


class StateError(PrivacyError):
    """Raised when a persisted accountant state is malformed, of another schema, or of another
    accounting mechanism."""


class UnsupportedTrainingSetup(PrivacyError):
    """Raised before training when the model, loss or data loader breaks DP-SGD's assumptions
    (BatchNorm, weighted or custom samplers, non-Poisson loading, ExpandedWeights, secure_mode)."""

    def __init__(
        self, message: str, *, hint: str | None = None, problems: Sequence[str] = ()
    ) -> None:
        super().__init__(message, hint=hint)
        self.problems = tuple(problems)


class LedgerIntegrityError(PrivacyError):
    """Raised when a ledger does not verify (edited, re-signed, deleted, reordered or duplicated
    entries) or an append would break the chain; names the offending line and entry."""

    def __init__(
        self,
        message: str,
        *,
        line: int | None = None,
        seq: int | None = None,
        problems: Sequence[Any] = (),
        hint: str | None = None,
    ) -> None:
        super().__init__(
            message,
            hint=hint
            or (
                "do not train or submit until the ledger is explained: restore it from a "
                "backup, or ask the data-protection officer to investigate"
            ),
        )
        self.line = line
        self.seq = seq
        self.problems = tuple(problems)
