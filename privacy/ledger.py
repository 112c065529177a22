"""The site's privacy ledger: append-only, hash-chained, signed JSON lines (pure code).

One line per trained round records what actually ran (steps, sample rate, noise multiplier,
clipping norm, accountant, library versions, dataset fingerprint, model hashes) and the
composed epsilon after it. Each entry carries the SHA-256 of the previous entry and an Ed25519
signature by the site, over the canonical JSON of everything except ``entry_hash`` and
``signature`` (sorted keys, no spaces, UTF-8 -- the same canonical form as the workspace
envelopes). Signing and verifying are injected callables, so this module never sees a key:

- ``sign(message: bytes) -> bytes`` (e.g. ``Ed25519PrivateKey.sign``),
- ``verify(signature: bytes, message: bytes) -> None`` raising on failure
  (e.g. ``Ed25519PublicKey.verify``).

The ledger is the source of truth for a site's spend: ``history_from_entries`` rebuilds the
accountant history from it, so a restarted site continues its spend and an auditor recomputes
epsilon from signed records only.

What the chain can and cannot show: editing, deleting, reordering or duplicating any line is
named by ``verify_chain``; a torn final line (a crash mid-append) is reported apart from
corruption. Dropping the *last* entries leaves a valid shorter chain; it is caught only against
an external anchor (``expected_head``: the head hash the site last published, or the persisted
accountant state via ``restore_accountant``). The site's own key can re-sign a rewritten
history; publishing the head with every submission bounds that.

>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> key = Ed25519PrivateKey.from_private_bytes(bytes(32))
>>> body = LedgerBody(federation="f", site="clev", round=1, steps=50, sample_rate=0.02,
...     noise_multiplier=1.0, max_grad_norm=1.0, accountant="rdp", delta=1e-5,
...     epsilon_after=1.6073, target_epsilon=8.0, grad_sample_mode="hooks",
...     library_versions={}, dataset_fingerprint="0" * 64, model_hashes={},
...     timestamp="2026-01-01T00:00:00+00:00")
>>> entry = make_entry(None, body, key.sign)
>>> text = encode_line(entry)
>>> verify_chain(parse_lines(text), key.public_key().verify)
[]
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from importlib import metadata
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from crypto.canonical import canonical_json
from privacy import analysis
from privacy.accountant import SiteAccountant
from privacy.analysis import Mechanism, Triple
from privacy.errors import LedgerIntegrityError, RoundAlreadyTrainedError, StateError

LEDGER_FORMAT = "fedrema-ledger/1"
GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first entry."""

SignFn = Callable[[bytes], bytes]
VerifyFn = Callable[[bytes, bytes], None]

_HEX64 = r"^[0-9a-f]{64}$"


class LedgerBody(BaseModel):
    """What the caller knows about a trained round; ``make_entry`` adds the chain fields."""

    # No NaN/inf: they have no canonical JSON (``canonical_json`` refuses them), so a line
    # carrying one must be reported as malformed, not crash the verifier.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    federation: str = Field(min_length=1)
    site: str = Field(min_length=1)
    round: int = Field(ge=0)
    steps: int = Field(ge=1, description="DP-SGD optimizer steps Opacus accounted")
    sample_rate: float = Field(gt=0, le=1, description="q recorded by the accountant")
    noise_multiplier: float = Field(gt=0)
    max_grad_norm: float = Field(gt=0)
    accountant: Mechanism
    delta: float = Field(gt=0, lt=1)
    epsilon_after: float = Field(ge=0, description="composed epsilon over the whole history")
    target_epsilon: float = Field(gt=0)
    grad_sample_mode: str
    poisson_sampling: Literal[True] = True
    secure_mode: bool = False
    neighbouring_relation: Literal["add_or_remove_one"] = "add_or_remove_one"
    library_versions: dict[str, str]
    dataset_fingerprint: str = Field(pattern=r"^(sha256:)?[0-9a-f]{64}$")
    model_hashes: dict[str, str]
    timestamp: str

    @field_validator("timestamp")
    @classmethod
    def _iso8601(cls, value: str) -> str:
        try:
            datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError("timestamp must be ISO 8601") from exc
        return value


class LedgerEntry(LedgerBody):
    """One signed ledger line."""

    format: Literal["fedrema-ledger/1"] = LEDGER_FORMAT
    seq: int = Field(ge=0, description="0-based position in the chain")
    prev_hash: str = Field(pattern=_HEX64)
    entry_hash: str = Field(pattern=_HEX64)
    signature: str = Field(pattern=r"^[0-9a-f]+$")

    def body(self) -> LedgerBody:
        """Return the caller-supplied part of the entry."""
        return LedgerBody(**self.model_dump(include=set(LedgerBody.model_fields)))

    def triple(self) -> Triple:
        """Return the round as an accountant history triple ``(sigma, q, steps)``."""
        return (self.noise_multiplier, self.sample_rate, self.steps)


def signing_payload(entry: LedgerEntry | Mapping[str, Any]) -> bytes:
    """Return the bytes that are hashed and signed: canonical JSON without hash and signature."""
    data = entry.model_dump(mode="json") if isinstance(entry, LedgerEntry) else dict(entry)
    data.pop("entry_hash", None)
    data.pop("signature", None)
    return canonical_json(data)


def entry_digest(entry: LedgerEntry) -> str:
    """Return the SHA-256 hex digest of the entry's signing payload (recomputed, not stored)."""
    return hashlib.sha256(signing_payload(entry)).hexdigest()


class RoundRecordLike(Protocol):
    """The fields of ``privacy.engine.RoundRecord`` the ledger needs (kept torch-free)."""

    max_grad_norm: float
    grad_sample_mode: str
    mechanism: str

    def triple(self) -> Triple: ...


def library_versions() -> dict[str, str]:
    """Return the installed versions of the libraries that did the accounting."""
    return dict(_library_versions())


@functools.lru_cache(maxsize=1)
def _library_versions() -> tuple[tuple[str, str], ...]:
    """Read once per process: the installed packages do not change under a running command."""
    out: dict[str, str] = {}
    for dist in ("torch", "opacus", "dp-accounting"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return tuple(out.items())


def body_from_record(
    record: RoundRecordLike,
    *,
    accountant: SiteAccountant,
    delta: float,
    target_epsilon: float,
    federation: str,
    site: str,
    round: int,
    dataset_fingerprint: str,
    model_hashes: Mapping[str, str],
    timestamp: str,
    versions: Mapping[str, str] | None = None,
) -> LedgerBody:
    """Build the ledger body of a finished round; ``epsilon_after`` is the accountant's
    composed epsilon over its whole history (call after ``PrivateTraining.finish``)."""
    sigma, q, steps = record.triple()
    if record.mechanism != accountant.mechanism:
        raise StateError(
            f"round ran with accountant {record.mechanism!r}, site uses {accountant.mechanism!r}"
        )
    return LedgerBody(
        federation=federation,
        site=site,
        round=round,
        steps=steps,
        sample_rate=q,
        noise_multiplier=sigma,
        max_grad_norm=float(record.max_grad_norm),
        accountant=accountant.mechanism,
        delta=delta,
        epsilon_after=accountant.epsilon(delta=delta),
        target_epsilon=target_epsilon,
        grad_sample_mode=record.grad_sample_mode,
        library_versions=dict(versions if versions is not None else library_versions()),
        dataset_fingerprint=dataset_fingerprint,
        model_hashes=dict(model_hashes),
        timestamp=timestamp,
    )


def make_entry(prev_entry: LedgerEntry | None, body: LedgerBody, sign: SignFn) -> LedgerEntry:
    """Chain ``body`` after ``prev_entry`` (``None`` for the first entry) and sign it.

    Refuses to chain a different site or federation (``LedgerIntegrityError``), or a round that
    is not after the previous entry's round (``RoundAlreadyTrainedError``: one entry per round).
    """
    if prev_entry is None:
        seq, prev_hash = 0, GENESIS_HASH
    else:
        if (prev_entry.site, prev_entry.federation) != (body.site, body.federation):
            raise LedgerIntegrityError(
                "cannot chain an entry of another site or federation", seq=prev_entry.seq + 1
            )
        if body.round <= prev_entry.round:
            raise RoundAlreadyTrainedError(round=body.round, recorded_round=prev_entry.round)
        seq, prev_hash = prev_entry.seq + 1, entry_digest(prev_entry)
    unsigned = {
        **body.model_dump(mode="json"),
        "format": LEDGER_FORMAT,
        "seq": seq,
        "prev_hash": prev_hash,
    }
    payload = canonical_json(unsigned)
    signature = sign(payload)
    return LedgerEntry.model_validate(
        {
            **unsigned,
            "entry_hash": hashlib.sha256(payload).hexdigest(),
            "signature": bytes(signature).hex(),
        }
    )


def encode_line(entry: LedgerEntry) -> str:
    """Return the entry as one canonical JSON line, newline-terminated (append it as is)."""
    return canonical_json(entry.model_dump(mode="json")).decode("utf-8") + "\n"


class ProblemKind(StrEnum):
    """What is wrong with a ledger (or, in reports, with what it claims)."""

    MALFORMED = "malformed"
    TORN_TAIL = "torn_tail"
    EDITED = "edited"
    BAD_SIGNATURE = "bad_signature"
    MISSING = "missing"
    REORDERED = "reordered"
    DUPLICATE_ENTRY = "duplicate_entry"
    DUPLICATE_ROUND = "duplicate_round"
    CHAIN_BROKEN = "chain_broken"
    WRONG_SITE = "wrong_site"
    TRUNCATED = "truncated"
    EPSILON_MISMATCH = "epsilon_mismatch"
    INDEPENDENT_MISMATCH = "independent_mismatch"
    POLICY_MISMATCH = "policy_mismatch"
    OVER_BUDGET = "over_budget"
    NO_KEY = "no_key"
    WORKSPACE = "workspace"  # a published copy's envelope, found by the shell, not the ledger
    NOTE = "note"


@dataclass(frozen=True)
class Problem:
    """One finding, naming the 1-based line and the entry (seq, round) where known.

    Messages count entries from 1, as lines are counted (entry N is the chain's Nth, seq N-1),
    so "line 2, entry 2" name the same record; ``seq`` in the JSON stays the 0-based field.
    """

    kind: ProblemKind
    message: str
    line: int | None = None
    seq: int | None = None
    round: int | None = None

    def __str__(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.seq is not None:
            where.append(f"entry {self.seq + 1}")
        if self.round is not None:
            where.append(f"round {self.round}")
        prefix = f"{', '.join(where)}: " if where else ""
        return f"{prefix}{self.kind.value}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {
            "kind": self.kind.value,
            "message": self.message,
            "line": self.line,
            "seq": self.seq,
            "round": self.round,
        }


@dataclass(frozen=True)
class ParsedLedger:
    """Entries parsed from ledger text, with their line numbers and parse problems.

    ``committed_text`` is the text up to and including the last newline-terminated line; when
    ``torn_tail`` is set the shell rewrites the file to it (atomically) before appending.
    """

    entries: tuple[LedgerEntry, ...]
    lines: tuple[int, ...]
    problems: tuple[Problem, ...] = ()
    committed_text: str = ""

    @property
    def torn_tail(self) -> Problem | None:
        """The torn-final-line problem, if the last append was interrupted."""
        return next((p for p in self.problems if p.kind is ProblemKind.TORN_TAIL), None)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def parse_lines(text: str) -> ParsedLedger:
    """Parse ledger text into entries without verifying them.

    A final line without its newline that does not parse is a *torn tail*: the append was
    interrupted by a crash, the entry was never committed (the shell appends the ledger before
    it releases the model). A final unterminated line that does parse is kept (its content is
    complete and signed), but still reported as a torn tail so the shell restores the newline.
    Any other unparsable line is ``MALFORMED`` (corruption).
    """
    entries: list[LedgerEntry] = []
    lines: list[int] = []
    problems: list[Problem] = []
    raw_lines = text.split("\n")
    tail = raw_lines.pop()  # "" when the text ends with a newline
    committed = text[: len(text) - len(tail)]
    for number, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            problems.append(Problem(ProblemKind.MALFORMED, "blank line", line=number))
            continue
        try:
            entries.append(LedgerEntry.model_validate_json(raw))
            lines.append(number)
        except ValidationError as exc:
            problems.append(
                Problem(
                    ProblemKind.MALFORMED,
                    f"not a valid ledger entry ({exc.error_count()} "
                    f"error{'s' if exc.error_count() != 1 else ''}: "
                    f"{exc.errors()[0]['msg']})",
                    line=number,
                )
            )
    if tail:
        number = len(raw_lines) + 1
        try:
            entry = LedgerEntry.model_validate_json(tail)
        except ValidationError:
            problems.append(
                Problem(
                    ProblemKind.TORN_TAIL,
                    "the last line is incomplete: an append was interrupted (crash); "
                    "that entry was never committed",
                    line=number,
                )
            )
        else:
            entries.append(entry)
            lines.append(number)
            problems.append(
                Problem(
                    ProblemKind.TORN_TAIL,
                    "the last line lacks its newline; its entry is complete and kept",
                    line=number,
                    seq=entry.seq,
                    round=entry.round,
                )
            )
            committed = text + "\n"
    return ParsedLedger(tuple(entries), tuple(lines), tuple(problems), committed)


def verify_chain(
    ledger: ParsedLedger | Sequence[LedgerEntry],
    verify: VerifyFn,
    *,
    site: str | None = None,
    federation: str | None = None,
    expected_head: str | None = None,
) -> list[Problem]:
    """Check hashes, signatures, order and uniqueness; return every problem found (empty: OK).

    Each problem names the line (1-based; for a plain sequence, its position + 1) and the
    entry. ``site``/``federation`` default to the first entry's. ``expected_head`` is the
    ``entry_hash`` the last entry must have (detects dropped final entries).
    """
    if isinstance(ledger, ParsedLedger):
        entries, lines = list(ledger.entries), list(ledger.lines)
        problems = list(ledger.problems)
    else:
        entries = list(ledger)
        lines = list(range(1, len(entries) + 1))
        problems = []
    present = Counter(e.seq for e in entries)
    first_line_of_seq: dict[int, tuple[int, str]] = {}
    first_line_of_round: dict[int, int] = {}
    expected_seq = 0
    prev_digest = GENESIS_HASH
    max_round: int | None = None
    want_site = site if site is not None else (entries[0].site if entries else None)
    want_fed = (
        federation if federation is not None else (entries[0].federation if entries else None)
    )

    for line, e in zip(lines, entries, strict=True):

        def add(kind: ProblemKind, msg: str, *, _line: int = line, _e: LedgerEntry = e) -> None:
            problems.append(Problem(kind, msg, line=_line, seq=_e.seq, round=_e.round))

        payload = signing_payload(e)
        digest = hashlib.sha256(payload).hexdigest()
        if digest != e.entry_hash:
            add(ProblemKind.EDITED, "the entry's content does not match its hash (edited)")
        try:
            verify(bytes.fromhex(e.signature), payload)
        except Exception:  # noqa: BLE001 - any verifier failure means "not signed by this site"
            add(ProblemKind.BAD_SIGNATURE, "the signature does not verify with the site's key")

        positional = False
        exact_copy = False
        if e.seq in first_line_of_seq:
            other_line, other_digest = first_line_of_seq[e.seq]
            exact_copy = other_digest == digest
            what = "a copy of" if exact_copy else "a different entry with the seq of"
            add(ProblemKind.DUPLICATE_ENTRY, f"this line is {what} line {other_line}")
            positional = True
        elif e.seq != expected_seq:
            positional = True
            if e.seq > expected_seq:
                skipped = range(expected_seq, e.seq)
                later = [s for s in skipped if present[s] and s not in first_line_of_seq]
                missing = [s for s in skipped if not present[s]]
                if later:
                    add(
                        ProblemKind.REORDERED,
                        f"entry {e.seq + 1} comes before {_entries(later)} (lines out of order)",
                    )
                if missing:
                    add(
                        ProblemKind.MISSING,
                        f"{_entries(missing)} {'is' if len(missing) == 1 else 'are'} missing "
                        "before this line (deleted)",
                    )
            else:
                add(
                    ProblemKind.REORDERED,
                    f"entry {e.seq + 1} comes after entry {expected_seq} (lines out of order)",
                )
        if not positional and e.prev_hash != prev_digest:
            add(ProblemKind.CHAIN_BROKEN, "prev_hash does not match the previous line's entry")

        if e.round in first_line_of_round:
            if not exact_copy:
                add(
                    ProblemKind.DUPLICATE_ROUND,
                    f"round {e.round} is already recorded at line {first_line_of_round[e.round]}",
                )
        elif max_round is not None and e.round < max_round and not positional:
            add(ProblemKind.REORDERED, f"round {e.round} is recorded after round {max_round}")

        if e.site != want_site or e.federation != want_fed:
            add(
                ProblemKind.WRONG_SITE,
                f"entry of site {e.site!r} in federation {e.federation!r}, "
                f"expected {want_site!r} in {want_fed!r}",
            )

        first_line_of_seq.setdefault(e.seq, (line, digest))
        first_line_of_round.setdefault(e.round, line)
        max_round = e.round if max_round is None else max(max_round, e.round)
        expected_seq = max(expected_seq, e.seq + 1)
        prev_digest = digest

    if expected_head is not None:
        head = entries[-1].entry_hash if entries else GENESIS_HASH
        if head != expected_head:
            problems.append(
                Problem(
                    ProblemKind.TRUNCATED,
                    "the last entry is not the published head: entries were dropped or added",
                    line=lines[-1] if lines else None,
                    seq=entries[-1].seq if entries else None,
                )
            )
    return problems


def _entries(seqs: Sequence[int]) -> str:
    """Entries by their 1-based number (seq + 1): "entry 2", "entries 2..4", "entries 2, 5"."""
    n = [s + 1 for s in seqs]
    if len(n) == 1:
        return f"entry {n[0]}"
    if n[-1] - n[0] == len(n) - 1:
        return f"entries {n[0]}..{n[-1]}"
    return "entries " + ", ".join(map(str, n))


def load_verified(
    text: str,
    *,
    verify: VerifyFn,
    site: str | None = None,
    federation: str | None = None,
    expected_head: str | None = None,
) -> ParsedLedger:
    """Parse and verify; raise ``LedgerIntegrityError`` naming the first problem, if any.

    A torn tail is not an integrity failure (see ``parse_lines``); it is returned for the
    shell to repair via ``committed_text``.
    """
    parsed = parse_lines(text)
    problems = [
        p
        for p in verify_chain(
            parsed, verify, site=site, federation=federation, expected_head=expected_head
        )
        if p.kind is not ProblemKind.TORN_TAIL
    ]
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise LedgerIntegrityError(
            f"privacy ledger does not verify: {first}{more}",
            line=first.line,
            seq=first.seq,
            problems=problems,
        )
    return parsed


def ensure_round_not_recorded(ledger: ParsedLedger | Sequence[LedgerEntry], *, round: int) -> None:
    """Raise ``RoundAlreadyTrainedError`` if ``round`` (or a later one) is already recorded.

    Call before the budget gate: after a crash between the ledger append and the model write,
    the round's budget is spent and retraining it would spend it twice.
    """
    entries = list(ledger.entries if isinstance(ledger, ParsedLedger) else ledger)
    if entries and entries[-1].round >= round:
        line = ledger.lines[-1] if isinstance(ledger, ParsedLedger) else len(entries)
        raise RoundAlreadyTrainedError(round=round, recorded_round=entries[-1].round, line=line)


def history_from_entries(entries: Iterable[LedgerEntry]) -> list[Triple]:
    """Rebuild the accountant history (merged like Opacus) from ledger entries, in order."""
    return analysis.merge_history(e.triple() for e in entries)


def round_epsilons(
    entries: Sequence[LedgerEntry], *, delta: float, mechanism: Mechanism
) -> list[float]:
    """Return the composed epsilon after each entry, recomputed from the entries alone."""
    out: list[float] = []
    for i in range(1, len(entries) + 1):
        out.append(
            analysis.epsilon(history_from_entries(entries[:i]), delta=delta, mechanism=mechanism)
        )
    return out


def ledger_head(entries: Sequence[LedgerEntry]) -> str:
    """Return the head hash to publish (``GENESIS_HASH`` for an empty ledger)."""
    return entries[-1].entry_hash if entries else GENESIS_HASH


def restore_accountant(
    *,
    entries: Sequence[LedgerEntry],
    mechanism: Mechanism,
    cached_state: Mapping[str, Any] | None = None,
) -> SiteAccountant:
    """Return the site accountant for a verified ledger, reconciling a cached state.

    The ledger is the source of truth. A cached ``state_dict`` equal to the ledger, or lagging
    it by exactly the last entry (crash after the ledger append, before the state write), is
    accepted and the ledger's history returned. Anything else -- notably a state with *more*
    spend than the ledger, i.e. a truncated ledger -- raises ``LedgerIntegrityError``.
    """
    from_ledger = SiteAccountant(mechanism=mechanism, history=history_from_entries(entries))
    for e in entries:
        if e.accountant != mechanism:
            raise LedgerIntegrityError(
                f"ledger entry {e.seq + 1} used accountant {e.accountant!r}, not {mechanism!r}",
                seq=e.seq,
            )
    if cached_state is None:
        return from_ledger
    cached = SiteAccountant.from_state_dict(cached_state)
    if cached.mechanism != mechanism:
        raise StateError(f"cached accountant is {cached.mechanism!r}, expected {mechanism!r}")
    if cached.history == from_ledger.history:
        return from_ledger
    if entries and cached.history == history_from_entries(entries[:-1]):
        return from_ledger
    raise LedgerIntegrityError(
        f"the accountant state ({cached.total_steps} steps) and the ledger "
        f"({from_ledger.total_steps} steps) disagree",
        seq=entries[-1].seq if entries else None,
        hint="the ledger may have been truncated or replaced; restore it from a backup",
    )
