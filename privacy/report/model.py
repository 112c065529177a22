"""The privacy report as data: per site, per round, verified against signed ledgers.

``build_report`` takes the federation's policy and each site's ledger text (or parsed ledger)
plus that site's signature verifier, and for every site:

1. verifies the hash chain and signatures (``privacy.ledger.verify_chain``);
2. checks the ledger covers every round the coordinator's signed results (``RoundResult``,
   verified by the shell) say the site's update was used in: a site cannot erase its spend;
3. recomputes the composed epsilon after every round from the signed entries alone, with the
   policy's accountant (``privacy.analysis``, Opacus math) and independently with
   dp-accounting's RDP and PLD (``privacy.independent``);
4. flags every disagreement: the ledger's own ``epsilon_after`` not reproducible, the
   independent check finding more spend than the site's accountant, entries made under
   another policy, or spend above the target.

Renderers live in ``privacy.report.render``; this module holds no presentation.

>>> from privacy.policy import PrivacyPolicy
>>> policy = PrivacyPolicy(target_epsilon=4.0, delta=1e-5, planned_rounds=20, local_epochs=1,
...                        batch_size=4, max_grad_norm=1.0)
>>> report = build_report(policy=policy, ledgers={}, verifiers={}, federation="demo",
...                       generated_at="2026-01-01T00:00:00+00:00")
>>> report.verified
False
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from privacy import analysis, independent
from privacy.analysis import INTEGER_RDP_ORDERS, Triple
from privacy.budget import GATE_TOLERANCE
from privacy.errors import PrivacyError
from privacy.ledger import (
    LedgerEntry,
    ParsedLedger,
    Problem,
    ProblemKind,
    VerifyFn,
    history_from_entries,
    ledger_head,
    library_versions,
    parse_lines,
    verify_chain,
)
from privacy.policy import PrivacyPolicy

REPORT_FORMAT = "fedrema-privacy-report/1"

LEDGER_EPSILON_TOLERANCE = 1e-6
"""A ledger's recorded ``epsilon_after`` must be reproducible to this (absolute)."""
RDP_CROSSCHECK_TOLERANCE = 1e-3
"""Opacus and dp-accounting RDP epsilons over the integer orders (exact in both) must agree to
this; B6 suggests 1e-3."""
PLD_CROSSCHECK_TOLERANCE = 0.005
"""The site's epsilon may be below dp-accounting's (pessimistic, near-tight) PLD epsilon by at
most this: an upper bound below a tight estimate means under-reporting. PRV sits ~0.01 *above*
PLD (B2); RDP ~10% above."""
REPORT_PLD_DISCRETIZATION = 1e-3
"""PLD grid for reports: pessimistic, so still an upper bound; ~10x faster than 1e-4 and within
~5e-4 of it on the B5 history (3.8995 vs 3.8991)."""

# Problems that do not invalidate a ledger: a torn tail is an interrupted, uncommitted append.
NON_FAILING = frozenset({ProblemKind.TORN_TAIL, ProblemKind.NOTE})


class SiteStatus(StrEnum):
    """Overall verdict on one site's ledger."""

    VERIFIED = "verified"
    FAILED = "failed"
    EMPTY = "empty"


@dataclass(frozen=True)
class RoundResult:
    """The coordinator's signed result of one round, already verified by the shell: when the
    round closed and whose updates it used (each of those sites spent budget in it)."""

    round: int
    finished_at: str
    survivors: tuple[str, ...]


@dataclass(frozen=True)
class VersionSpan:
    """Consecutive ledger entries of one site made with the same library versions."""

    first_round: int
    last_round: int
    versions: Mapping[str, str]


@dataclass(frozen=True)
class RoundRow:
    """One trained round of one site, with epsilon composed over all rounds so far.

    ``timestamp`` is when the site recorded the round (ledger); ``closed_at`` is when the
    coordinator's signed result says the round finished (None: no verified result, e.g. a
    local fine-tuning round after the last federated round).
    """

    round: int
    seq: int
    line: int
    timestamp: str
    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    epsilon_recorded: float
    epsilon: float
    epsilon_rdp_independent: float | None
    epsilon_pld_independent: float | None
    verified: bool
    problems: tuple[str, ...] = ()
    closed_at: str | None = None


@dataclass(frozen=True)
class SiteReport:
    """One site's budget, rounds and verification outcome."""

    site: str
    accountant: str
    delta: float
    target_epsilon: float
    rounds: tuple[RoundRow, ...]
    epsilon: float | None
    epsilon_rdp_independent: float | None
    epsilon_pld_independent: float | None
    head: str
    library_versions: Mapping[str, str]
    problems: tuple[Problem, ...]
    fingerprint: str | None = None
    version_spans: tuple[VersionSpan, ...] = ()
    missing_rounds: tuple[int, ...] = ()
    """Rounds the coordinator's signed results say used this site's update, with no entry."""

    @property
    def verified_prefix(self) -> RoundRow | None:
        """The last round before the first one that does not verify (None if round 1 fails).

        Its epsilon is signed by the site and recomputed here, so it is a lower bound of what
        the site spent even when later entries are forged or missing.
        """
        last = None
        for r in self.rounds:
            if not r.verified:
                break
            last = r
        return last

    @property
    def failing_problems(self) -> tuple[Problem, ...]:
        """Problems that mean the ledger or its claims did not verify."""
        return tuple(p for p in self.problems if p.kind not in NON_FAILING)

    @property
    def status(self) -> SiteStatus:
        """``verified``, ``failed`` or ``empty`` (no trained rounds)."""
        if self.failing_problems:
            return SiteStatus.FAILED
        return SiteStatus.VERIFIED if self.rounds else SiteStatus.EMPTY

    @property
    def verified(self) -> bool:
        """True when nothing failed (an empty ledger verifies trivially)."""
        return not self.failing_problems

    @property
    def remaining(self) -> float | None:
        """Epsilon left before the target, by the site's accountant."""
        if self.epsilon is None:
            return None
        return max(0.0, self.target_epsilon - self.epsilon)


@dataclass(frozen=True)
class Assumptions:
    """What the epsilon in this report means, and what it does not cover."""

    neighbouring_relation: str
    sampling: str
    accountant: str
    unit: str
    covered: tuple[str, ...]
    not_covered: tuple[str, ...]
    caveats: tuple[str, ...]


#: Not covered when each site fits its preprocessing on its own records.
FITTED_PREPROCESSING = (
    "data-dependent preprocessing statistics (the per-feature mean and std of the site's "
    "training records): computed without DP, applied to every record before DP-SGD and "
    "written into exported models, so the guarantee holds for these statistics taken as given"
)


def default_assumptions(policy: PrivacyPolicy, *, preprocessing: str | None = None) -> Assumptions:
    """The assumptions every fedrema privacy report states.

    ``preprocessing``: what is done to records before DP-SGD when that is the same fixed map
    for every dataset (then the guarantee covers it); None when each site fits it on its own
    records (then it is listed as not covered).
    """
    accountant = {
        "rdp": "Renyi DP of the sampled Gaussian mechanism (Mironov et al. 2019), converted "
        "with Balle et al. 2020 Thm 21 (Opacus RDPAccountant)",
        "prv": "privacy-loss random variables composed numerically (Gopi et al. 2021), upper "
        "bound of the error interval (Opacus PRVAccountant)",
    }[policy.accountant]
    return Assumptions(
        neighbouring_relation=(
            "add/remove one record: two datasets are neighbours when one has one more patient "
            "record than the other"
        ),
        sampling=(
            "Poisson sampling: every record enters each batch independently with probability q "
            "(Opacus DPDataLoader); per-record gradients are clipped to max_grad_norm and "
            "Gaussian noise of std noise_multiplier x max_grad_norm is added every step"
        ),
        accountant=accountant,
        unit=(
            "record-level (epsilon, delta) per site, composed over every DP-SGD step of every "
            "round that site trained"
        ),
        covered=(
            "everything a site sends: its masked model update through secure aggregation",
            "the classifier head a site sends encrypted to the coordinator (FedReMa), "
            "by post-processing of the DP-SGD output",
            "anything computed from those afterwards: the aggregate, merged heads and the "
            "global model (post-processing)",
            "local fine-tuning rounds after the federation's last round (head-only DP-SGD, "
            "listed as the rounds numbered after it) and the personalised model's weights "
            "built from them",
            *(
                (f"preprocessing, a fixed map that depends on no record: {preprocessing}",)
                if preprocessing
                else ()
            ),
        ),
        not_covered=(
            "evaluation on the site's hold-out (test) records: accuracy/AUC are computed "
            "without DP and shown to the operator and written into exported model cards",
            "the deployed decision rule and the exported model card: the threshold (or class "
            "prior) is fitted on the site's training records without DP, and the card lists "
            "its exact class counts; both stay at the site unless it shares the export",
            "choosing the training settings (epsilon aside) by trying them on the same "
            "records: each trial is another DP-SGD run the ledger does not record",
            *(() if preprocessing else (FITTED_PREPROCESSING,)),
            "the number of training records: it weights every update (sent in the clear "
            "without secure aggregation, inside the masked sum with it) and sets the sample "
            "rate and steps the published ledger shows",
            "secure_mode: Opacus's cryptographically secure sampling and noise (torchcsprng) "
            "is not enabled; noise comes from torch's seeded generator",
            "membership of a hospital in the federation (this is record-level, not "
            "site-level, privacy)",
        ),
        caveats=(
            "secure aggregation hides each site's shared update from the coordinator (only the "
            "sum is revealed); what a method sends on its own (FedReMa's heads, whole models "
            "for fedrema-model) reaches the coordinator individually, covered by DP as above; "
            "the DP guarantee does not depend on secure aggregation",
            "one record is one patient only if each patient has one record in the training "
            "file; a patient with k records is protected at roughly k times epsilon (group "
            "privacy)",
            "Opacus records q = 1/len(Poisson loader); for some dataset sizes this is slightly "
            "above the true sampling rate, which over-states epsilon (conservative)",
            "the last entries of a ledger can only be shown to be present against the head "
            "hash the site published; a site holding its own key can rewrite its history",
        ),
    )


@dataclass(frozen=True)
class PrivacyReport:
    """The whole report: policy, assumptions, one ``SiteReport`` per site."""

    federation: str
    generated_at: str
    policy: Mapping[str, Any]
    sites: tuple[SiteReport, ...]
    assumptions: Assumptions
    tool_versions: Mapping[str, str]
    pld_discretization: float
    problems: tuple[Problem, ...] = field(default=())
    coordinator_fingerprint: str | None = None
    round_results: tuple[RoundResult, ...] = ()
    unverified_results: tuple[int, ...] = ()
    """Rounds whose result file is there but does not verify (named in ``problems``)."""

    @property
    def verified(self) -> bool:
        """True only if there is at least one site and every site verified."""
        return bool(self.sites) and not self.problems and all(s.verified for s in self.sites)


def _cross_check(
    history: list[Triple],
    eps: float,
    ind: independent.IndependentEpsilon,
    *,
    mech: str,
    delta: float,
    flag: Callable[[ProblemKind, str], None],
) -> None:
    """Compare the site's epsilon with dp-accounting's; flag what would mean under-reporting."""
    ours_integer, _ = analysis.rdp_epsilon(history, delta=delta, orders=INTEGER_RDP_ORDERS)
    if abs(ours_integer - ind.rdp_integer) > RDP_CROSSCHECK_TOLERANCE:
        flag(
            ProblemKind.INDEPENDENT_MISMATCH,
            f"at integer RDP orders Opacus gives {ours_integer:.4f} and dp-accounting "
            f"{ind.rdp_integer:.4f}; two exact computations disagree",
        )
    if eps < ind.pld - PLD_CROSSCHECK_TOLERANCE:
        flag(
            ProblemKind.INDEPENDENT_MISMATCH,
            f"the site's {mech.upper()} epsilon {eps:.4f} is below dp-accounting's PLD "
            f"epsilon {ind.pld:.4f}: under-reported",
        )
    if mech == "rdp" and ind.rdp > eps + RDP_CROSSCHECK_TOLERANCE:
        dropped = (
            f" (it could not evaluate orders {list(ind.rdp_orders_dropped)})"
            if (ind.rdp_orders_dropped)
            else ""
        )
        flag(
            ProblemKind.NOTE,
            f"dp-accounting's RDP epsilon {ind.rdp:.4f} is above Opacus's {eps:.4f}: its "
            f"fractional-order series is conservative for small noise{dropped}; Opacus's "
            "fractional orders match numerical integration, and the PLD check above holds",
        )


def build_site_report(
    *,
    site: str,
    ledger: ParsedLedger | str,
    verify: VerifyFn | None,
    policy: PrivacyPolicy,
    federation: str | None = None,
    expected_head: str | None = None,
    pld_discretization: float = REPORT_PLD_DISCRETIZATION,
    independent_check: bool = True,
    fingerprint: str | None = None,
    round_results: Sequence[RoundResult] = (),
    survivors_spent: bool = True,
) -> SiteReport:
    """Verify one site's ledger and recompute its epsilon round by round.

    ``round_results``: the coordinator's verified results; with ``survivors_spent`` (the
    method trains, so every site whose update a round used ran DP-SGD in it) each round that
    lists the site must have an entry in its ledger.
    """
    parsed = parse_lines(ledger) if isinstance(ledger, str) else ledger
    entries = list(parsed.entries)
    problems: list[Problem] = []
    if verify is None:
        problems.extend(parsed.problems)
        problems.append(
            Problem(ProblemKind.NO_KEY, f"no public key for site {site!r}; signatures unchecked")
        )
    else:
        problems.extend(
            verify_chain(
                parsed, verify, site=site, federation=federation, expected_head=expected_head
            )
        )
    mech = policy.accountant
    delta = policy.delta
    # No recomputation trusts a line whose signature fails: a forged entry (sigma 0.001, q 1)
    # could otherwise make the independent PLD check take minutes and gigabytes.
    unsigned = [p.line for p in problems if p.kind == ProblemKind.BAD_SIGNATURE and p.line]
    first_unsigned = min(unsigned, default=None)
    closed = {res.round: res.finished_at for res in round_results}
    rows: list[RoundRow] = []
    ind_rdp = ind_pld = None
    eps = None
    for i, (line, e) in enumerate(zip(parsed.lines, entries, strict=True)):
        row_problems: list[Problem] = []

        def flag(
            kind: ProblemKind,
            msg: str,
            *,
            _line: int = line,
            _e: Any = e,
            _out: list[Problem] = row_problems,
        ) -> None:
            _out.append(Problem(kind, msg, line=_line, seq=_e.seq, round=_e.round))

        if (e.accountant, e.delta, e.max_grad_norm, e.target_epsilon) != (
            policy.accountant,
            policy.delta,
            policy.max_grad_norm,
            policy.target_epsilon,
        ):
            flag(
                ProblemKind.POLICY_MISMATCH,
                f"entry made under accountant={e.accountant}, delta={e.delta:g}, "
                f"max_grad_norm={e.max_grad_norm:g}, target={e.target_epsilon:g}; the policy "
                f"says {policy.accountant}, {policy.delta:g}, {policy.max_grad_norm:g}, "
                f"{policy.target_epsilon:g}",
            )
        history = history_from_entries(entries[: i + 1])
        try:
            eps = analysis.epsilon(history, delta=delta, mechanism=mech)
        except PrivacyError as exc:
            eps = None
            flag(ProblemKind.EPSILON_MISMATCH, f"epsilon cannot be recomputed: {exc}")
        ind_rdp = ind_pld = None
        ind = None
        if first_unsigned is not None and line >= first_unsigned:
            flag(
                ProblemKind.INDEPENDENT_MISMATCH,
                f"not recomputed independently: the entry on line {first_unsigned} is not "
                "signed by the site",
            )
        elif independent_check:
            try:
                ind = independent.independent_epsilon(
                    history, delta=delta, pld_discretization=pld_discretization
                )
                ind_rdp, ind_pld = ind.rdp, ind.pld
            except PrivacyError as exc:
                flag(ProblemKind.INDEPENDENT_MISMATCH, f"independent check failed: {exc}")
        if eps is not None:
            recorded_ok = (
                e.accountant != mech or abs(e.epsilon_after - eps) <= LEDGER_EPSILON_TOLERANCE
            )
            if not recorded_ok:
                flag(
                    ProblemKind.EPSILON_MISMATCH,
                    f"the entry claims epsilon {e.epsilon_after:.6f}, the entries up to it give "
                    f"{eps:.6f}",
                )
            if ind is not None:
                _cross_check(history, eps, ind, mech=mech, delta=delta, flag=flag)
            if eps > policy.target_epsilon + GATE_TOLERANCE:
                flag(
                    ProblemKind.OVER_BUDGET,
                    f"epsilon {eps:.4f} exceeds the target {policy.target_epsilon:g}",
                )
        problems.extend(row_problems)
        line_problems = [
            str(p)
            for p in problems
            if p.kind not in NON_FAILING and (p.line == line or (p.line is None and p.seq == e.seq))
        ]
        rows.append(
            RoundRow(
                round=e.round,
                seq=e.seq,
                line=line,
                timestamp=e.timestamp,
                steps=e.steps,
                sample_rate=e.sample_rate,
                noise_multiplier=e.noise_multiplier,
                max_grad_norm=e.max_grad_norm,
                epsilon_recorded=e.epsilon_after,
                epsilon=eps if eps is not None else float("nan"),
                epsilon_rdp_independent=ind_rdp,
                epsilon_pld_independent=ind_pld,
                verified=not line_problems,
                problems=tuple(line_problems),
                closed_at=closed.get(e.round),
            )
        )
    missing = _missing_rounds(site, entries, round_results) if survivors_spent else []
    if missing:
        used = sum(site in res.survivors for res in round_results)
        problems.append(
            Problem(
                ProblemKind.MISSING,
                f"its ledger covers {used - len(missing)} of the {used} rounds the "
                "coordinator's signed results say used its update; no entry for "
                + ", ".join(f"round {r}" for r in missing)
                + ": the spend of those rounds is missing from this report (entries deleted?)",
            )
        )
    return SiteReport(
        site=site,
        accountant=mech,
        delta=delta,
        target_epsilon=policy.target_epsilon,
        rounds=tuple(rows),
        epsilon=(rows[-1].epsilon if rows else 0.0),
        epsilon_rdp_independent=ind_rdp if rows else (0.0 if independent_check else None),
        epsilon_pld_independent=ind_pld if rows else (0.0 if independent_check else None),
        head=ledger_head(entries),
        library_versions=dict(entries[-1].library_versions) if entries else {},
        problems=tuple(problems),
        fingerprint=fingerprint,
        version_spans=_version_spans(entries),
        missing_rounds=tuple(missing),
    )


def _missing_rounds(
    site: str, entries: Sequence[LedgerEntry], round_results: Sequence[RoundResult]
) -> list[int]:
    """Rounds whose signed result used the site's update but that its ledger does not hold."""
    recorded = {e.round for e in entries}
    return [
        res.round for res in round_results if site in res.survivors and res.round not in recorded
    ]


def _version_spans(entries: Sequence[LedgerEntry]) -> tuple[VersionSpan, ...]:
    spans: list[VersionSpan] = []
    for e in entries:
        versions = dict(e.library_versions)
        if spans and dict(spans[-1].versions) == versions:
            spans[-1] = replace(spans[-1], last_round=e.round)
        else:
            spans.append(VersionSpan(e.round, e.round, versions))
    return tuple(spans)


def build_report(
    *,
    policy: PrivacyPolicy,
    ledgers: Mapping[str, ParsedLedger | str],
    verifiers: Mapping[str, VerifyFn],
    federation: str,
    generated_at: str,
    expected_heads: Mapping[str, str] | None = None,
    pld_discretization: float = REPORT_PLD_DISCRETIZATION,
    independent_check: bool = True,
    preprocessing: str | None = None,
    fingerprints: Mapping[str, str] | None = None,
    coordinator_fingerprint: str | None = None,
    round_results: Sequence[RoundResult] = (),
    survivors_spent: bool = True,
    unverified_results: Sequence[int] = (),
) -> PrivacyReport:
    """Build the federation's report from each site's ledger and verifier (sites sorted).

    ``preprocessing``: see `default_assumptions`. ``fingerprints``: each site's signing-key
    fingerprint (the one compared at approval), shown as who signed its ledger.
    ``round_results``/``survivors_spent``: see `build_site_report`; ``unverified_results``:
    rounds whose result the shell found but could not verify (shown as such, never used).

    A report with no site does not verify: an empty report must not look like a clean one.
    """
    heads = expected_heads or {}
    results = tuple(sorted(round_results, key=lambda res: res.round))
    sites = tuple(
        build_site_report(
            site=name,
            ledger=ledgers[name],
            verify=verifiers.get(name),
            policy=policy,
            federation=federation,
            expected_head=heads.get(name),
            pld_discretization=pld_discretization,
            independent_check=independent_check,
            fingerprint=(fingerprints or {}).get(name),
            round_results=results,
            survivors_spent=survivors_spent,
        )
        for name in sorted(ledgers)
    )
    problems: tuple[Problem, ...] = ()
    if not sites:
        problems = (Problem(ProblemKind.MALFORMED, "no site ledgers were given"),)
    return PrivacyReport(
        federation=federation,
        generated_at=generated_at,
        policy=policy.model_dump(mode="json"),
        sites=sites,
        assumptions=default_assumptions(policy, preprocessing=preprocessing),
        tool_versions=library_versions(),
        pld_discretization=pld_discretization,
        problems=problems,
        coordinator_fingerprint=coordinator_fingerprint,
        round_results=results,
        unverified_results=tuple(sorted(unverified_results)),
    )
