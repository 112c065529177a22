"""Errors raised by :mod:`crypto`, rooted at :class:`SecAggError`.

Every check in this package raises (never returns ``False``), so a caller cannot
forget to look at a result. The CLI maps the classes below to messages and exit
codes in one place; nothing here prints or logs.
"""

from __future__ import annotations

__all__ = [
    "DecryptionError",
    "DoubleRevealError",
    "HeadroomError",
    "InsufficientSurvivors",
    "IntegrityError",
    "InvalidShare",
    "MalformedMessage",
    "ParameterError",
    "ProtocolAborted",
    "SecAggError",
    "StageError",
]


class SecAggError(Exception):
    """Root of every error raised by :mod:`crypto`."""


class ParameterError(SecAggError, ValueError):
    """Raised when a caller passes parameters or inputs that break the documented contract."""


class StageError(SecAggError):
    """Raised when a state gets a message of the wrong type for its stage (a bug or a replay)."""


class ProtocolAborted(SecAggError):
    """Raised when the protocol cannot go on, or when an aborted client state is asked to act."""


class InsufficientSurvivors(ProtocolAborted):
    """Raised when fewer than ``threshold`` parties remain at a stage; no partial output exists."""


class InvalidShare(SecAggError):
    """Raised when a share is malformed or a reconstruction fails its commitment or key check."""


class DoubleRevealError(SecAggError):
    """Raised when a site is asked for a second, different set of unmasking shares in a round."""


class MalformedMessage(SecAggError):
    """Raised when bytes or a message object do not have exactly the expected shape.

    ``party`` names the author of the offending message when it is known, so a
    coordinator can reject that one file and continue with the others.
    """

    def __init__(self, message: str, *, party: int | None = None) -> None:
        super().__init__(message)
        self.party = party


class IntegrityError(SecAggError):
    """Raised when a signature or other authenticity check fails."""


class DecryptionError(IntegrityError):
    """Raised when authenticated decryption fails: tampering, wrong key or wrong context (AAD)."""


class HeadroomError(SecAggError):
    """Raised when the fixed-point sum could overflow the modulus (n*W*C*2^f >= M/2)."""
