"""Privacy reports and audits: gather signed ledgers (published copies or a site's own) and
hand them to `privacy.report`, which verifies chains and signatures and recomputes epsilon."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import crypto
from crypto.canonical import parse_json
from fedrema_cli.errors import (
    ConfigError,
    FedremaError,
    IntegrityError,
    OptionError,
    StoreError,
    UnsafeFileError,
    UsageError,
)
from fedrema_cli.identity import Identity, fingerprint, unb64
from fedrema_cli.protocol.rounds import timestamp
from fedrema_cli.store.federation import Federation, read_federation
from fedrema_cli.store.workspace import Workspace, site_author

if TYPE_CHECKING:
    from fedrema_cli.config import FederationConfig
    from privacy.policy import PrivacyPolicy
    from privacy.report import PrivacyReport, RoundResult


def _verifier(sign_pk_b64: str) -> Callable[[bytes, bytes], None]:
    pk = unb64(sign_pk_b64, what="site key")
    return lambda signature, message: crypto.verify_signature(pk, signature, message)


def _own_ledger_anchors(site: Any, text: str, verify: Callable[[bytes, bytes], None]) -> list[str]:
    """Check a site's own ledger against what shows if its last entries were dropped.

    A shorter chain still verifies; the site's accountant cache and its published copies
    (written only after the local append) still know about the dropped entries.
    """
    from fedrema_cli.roles.site import ACCOUNTANT
    from privacy.errors import PrivacyError
    from privacy.ledger import load_verified, restore_accountant

    try:
        entries = list(
            load_verified(
                text, verify=verify, site=site.name, federation=site.config.federation_id
            ).entries
        )
    except PrivacyError:
        return []  # a broken chain is named by the report itself
    out: list[str] = []
    cached = site.state.read_json(ACCOUNTANT) if site.state.exists(ACCOUNTANT) else None
    try:
        restore_accountant(
            entries=entries, mechanism=site.config.privacy.accountant, cached_state=cached
        )
    except PrivacyError as exc:
        out.append(f"{ACCOUNTANT}: {exc}")
    if site.fed.roster is not None:
        out += [
            f"round {r}: published as ledger/{site.name}/{r:04d}.json but missing from the "
            "site's own ledger (entries dropped?)"
            for r in site.published_not_in(entries)
        ]
        out += [
            f"round {e.round}: in the site's own ledger but not published (verified) as "
            f"ledger/{site.name}/{e.round:04d}.json: deleted or replaced in the workspace (a "
            "workspace report under-counts this site), or the site's last command was "
            "interrupted (`fedrema submit` publishes it)"
            for e in entries
            if not site.fed.exists("ledger-entry", e.round, site=site.name)
        ]
    return out


ROUND_NAME = re.compile(r"[0-9]{4}")


def _round_numbers(fed: Federation) -> list[int]:
    """Round folders in the workspace, by strict name (four ASCII digits; others ignored)."""
    return sorted(int(n) for n in fed.ws.storage.list("rounds") if ROUND_NAME.fullmatch(n))


@dataclasses.dataclass(frozen=True)
class _Rounds:
    """What the workspace shows of the rounds, read once per report (one listing of
    ``rounds/``, which on SFTP/S3 is a round trip): the round folders, the results that
    verify, the rounds whose result does not, and the problem lines of the round records."""

    numbers: list[int]
    results: list[RoundResult]
    bad: list[int]
    problems: list[str]
    missing: dict[int, str]  # finished rounds with no result at all: `_missing_results`


def _rounds(fed: Federation) -> _Rounds:
    numbers = _round_numbers(fed)
    results, bad, problems = _round_results(fed, numbers)
    missing = _missing_results(fed, numbers, results, bad)
    return _Rounds(numbers, results, bad, [*problems, *missing.values()], missing)


def _round_results(
    fed: Federation, numbers: list[int]
) -> tuple[list[RoundResult], list[int], list[str]]:
    """The coordinator's round results that verify, the rounds whose result does not, and one
    problem line for each of those.

    A result that does not verify is never used: the rounds it would vouch for are then
    checked against nothing, so the report cannot pass (issue 14: tampered results).
    """
    from privacy.report import RoundResult

    results: list[RoundResult] = []
    bad: list[int] = []
    problems: list[str] = []
    for r in numbers:
        if not fed.present("result", r):
            continue
        path = f"rounds/{r:04d}/result.json"
        try:
            body = fed.get("result", r).body
            survivors, finished = body["survivors"], body["finished_at"]
            if body.get("round") != r or not isinstance(finished, str):
                raise TypeError
            if not isinstance(survivors, list) or not all(isinstance(x, str) for x in survivors):
                raise TypeError
        except (FedremaError, KeyError, TypeError, RecursionError):
            problems.append(
                f"{path}: the coordinator's signed result of round {r} does not verify "
                "(changed, truncated or not signed by the coordinator); which sites trained "
                "in that round cannot be checked"
            )
            bad.append(r)
            continue
        results.append(RoundResult(round=r, finished_at=finished, survivors=tuple(survivors)))
    return results, bad, problems


def _missing_results(
    fed: Federation, rounds: list[int], results: list[RoundResult], bad: list[int]
) -> dict[int, str]:
    """Rounds before the latest verified model whose signed result is not there at all, each
    with its problem line.

    The coordinator publishes round r + 1's model in the same step as round r's result, and
    opens a round only after the one before it finished; so a verified model of round R
    vouches that rounds 1..R-1 have results. Deleting a round's whole folder and its ledger
    entries leaves chains that still verify (shorter), and would under-report the spend.
    """
    latest = next((r for r in reversed(rounds) if r >= 2 and fed.exists("model", r)), None)
    if latest is None:
        return {}
    seen = {res.round for res in results} | set(bad)
    return {
        r: f"rounds/{r:04d}/result.json: missing, although round {latest}'s signed model is "
        f"published, which the coordinator does only after round {r} finished: the round's "
        "record (and any spend in it) was deleted from the workspace, or "
        + (
            "the coordinator is publishing it right now (run the report again) or its "
            "`aggregate` was interrupted (run that again: it republishes the result)"
            if r == latest - 1
            else "restored from an older copy"
        )
        for r in range(1, latest)
        if r not in seen
    }


def _published_ledger(fed: Federation, site: str) -> tuple[str, list[str]]:
    """A site's published entries as ledger text, in round order, plus envelope problems.

    The entries are taken from the files even when a file's envelope does not verify, so the
    ledger check names the entry; the envelope problem is reported alongside.
    """
    lines: list[str] = []
    problems: list[str] = []
    rounds = fed.ledger_rounds(site)
    if not rounds:  # nothing listed: say so if the folder itself is what the store refuses
        try:
            fed.ws.storage.read_bytes(f"ledger/{site}/{1:04d}.json", max_bytes=1)
        except UnsafeFileError as e:  # a link or a file in the folder's place, planted
            problems.append(_local(fed, e))
        except (StoreError, ConfigError):
            pass  # absent, as a site that never trained
    for r in rounds:
        path = f"ledger/{site}/{r:04d}.json"
        try:
            art = fed.get("ledger-entry", r, site=site)
            entry = art.body
        except (StoreError, ConfigError) as e:
            problems.append(_named(path, _local(fed, e)))
            continue
        except Exception as e:  # noqa: BLE001 - an integrity failure is a finding, not a crash
            readable = isinstance(e, FedremaError)
            problems.append(
                _named(path, _local(fed, e)) if readable else f"{path}: not a readable signed file"
            )
            try:
                raw = fed.ws.read_envelope(path.removesuffix(".json"))
                entry = parse_json(raw)["body"]
            except (ValueError, KeyError, TypeError, StoreError, IntegrityError):
                continue
        # Not canonical_json: a forged body may hold NaN/inf, which it refuses; the ledger
        # parser then names the line as malformed instead of the audit crashing.
        lines.append(json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n")
    return "".join(lines), problems


def _local(fed: Federation, err: Exception) -> str:
    """An error message with the workspace's own location left out (paths stay relative), so
    the report and its digest do not depend on where the workspace is mounted."""
    return str(err).replace(f"{fed.ws.describe()}/", "")


def _named(path: str, message: str) -> str:
    """``message`` naming ``path`` once: prefixed only if it does not name it already."""
    return message if path in message else f"{path}: {message}"


def _trains(fed: Federation) -> bool:
    """Whether the method runs gradient steps: only then does a round spend budget."""
    from fedrema_cli.methods import METHODS

    return METHODS[fed.config.method].trains


def _unrecorded_updates(fed: Federation, site: str, rounds: _Rounds) -> list[str]:
    """Rounds with the site's signed update in the workspace but no published ledger entry.

    A site publishes a round's ledger entry before it can submit that round's update, so an
    update without an entry means entries were deleted -- including the last ones, which the
    hash chain alone cannot show missing. Rounds whose verified result lists the site are
    checked by the report itself (``round_results``); this is the anchor for rounds that have
    no result yet, so deleting the result too is not enough.
    """
    if not _trains(fed):  # no gradient step, no spend, no entry
        return []
    published = set(fed.ledger_rounds(site))
    vouched = {res.round for res in rounds.results if site in res.survivors}
    return [
        f"round {r}: its update (rounds/{r:04d}/submissions/{site}.json) is in the workspace "
        f"but its ledger entry ledger/{site}/{r:04d}.json is not: the spend of that round is "
        "missing from this report (entry deleted?)"
        for r in rounds.numbers
        if r not in published and r not in vouched and fed.exists("submission", r, site=site)
    ]


def build(*, state: Path | None, workspace: str | None) -> tuple[PrivacyReport, list[str]]:
    """The report model and any problems found outside the ledgers themselves.

    Those problems are also folded into the report, so the HTML, PDF and JSON a DPO files can
    never show "verified" when the command itself fails.
    """
    from privacy.ledger import Problem, ProblemKind
    from privacy.report import build_report

    extra: list[str] = []
    # Findings that put a site's own figure in doubt (a round of its spend not in the ledgers
    # read): the site fails, so no epsilon of it is shown as verified, only its lower bound.
    per_site: dict[str, list[str]] = {}
    if state is not None:
        from fedrema_cli.roles.site import Site, read_ledger_text

        site = Site(state, workspace=workspace)
        fed = site.fed
        policy = _policy(site.config)
        text = read_ledger_text(site.state)
        ledgers = {site.name: text}
        verifiers = {
            site.name: fed.ledger_verifier(site.name)
            if site.name in fed.ever_listed()
            else _verifier(fed.identity.public.sign_pk)
        }
        fingerprints = {site.name: fingerprint(fed.identity.public.sign_pk)}
        config = site.config
        rounds = _rounds(fed)
        per_site[site.name] = _own_ledger_anchors(site, text, verifiers[site.name])
    else:
        if workspace is None:
            raise OptionError(
                "say which ledgers: --workspace WS (every site's published "
                "entries) or --state SITE_DIR (one site's own ledger)"
            )
        ws = Workspace.open(workspace)
        config, _ = read_federation(ws)
        fed = Federation(ws, config, me="auditor", identity=Identity.generate())
        roster = fed.load_roster()
        if roster is None:
            raise UsageError("the roster is not approved yet: there are no ledgers")
        policy = _policy(config)
        rounds = _rounds(fed)
        ledgers, verifiers, fingerprints = {}, {}, {}
        for name in fed.ever_listed():  # every version: a removed site's spend still counts
            text, problems = _published_ledger(fed, name)
            ledgers[name] = text
            verifiers[name] = fed.ledger_verifier(name)  # the key in force for each round
            fingerprints[name] = fingerprint(fed.key_for(site_author(name)).sign_pk)
            extra += [f"{name}: {p}" for p in problems]
            per_site[name] = _unrecorded_updates(fed, name, rounds)
    report = build_report(
        policy=policy,
        ledgers=ledgers,
        verifiers=verifiers,
        federation=config.federation_id,
        generated_at=timestamp(),
        preprocessing=config.data.fixed_preprocessing,
        fingerprints=fingerprints,
        coordinator_fingerprint=fingerprint(config.coordinator.sign_pk),
        round_results=rounds.results,
        survivors_spent=_trains(fed),
        unverified_results=rounds.bad,
    )
    extra = [*rounds.problems, *extra]
    if rounds.missing:  # a whole round gone: any site's spend in it is unknown
        gone = ", ".join(f"rounds/{r:04d}" for r in rounds.missing)
        for name in ledgers:
            per_site.setdefault(name, []).append(
                f"its spend cannot be checked: {gone} missing from the workspace (see above)"
            )
    report = dataclasses.replace(
        report,
        problems=(*report.problems, *(Problem(ProblemKind.WORKSPACE, p) for p in extra)),
        sites=tuple(
            dataclasses.replace(
                s,
                problems=(
                    *s.problems,
                    *(Problem(ProblemKind.WORKSPACE, p) for p in per_site.get(s.site, [])),
                ),
            )
            for s in report.sites
        ),
    )
    return report, extra + [f"{n}: {p}" for n, ps in per_site.items() for p in ps]


def _policy(config: FederationConfig) -> PrivacyPolicy:
    if config.privacy is None:
        raise UsageError(
            f"federation {config.federation_id} trains without DP: there is no privacy budget "
            "to report"
        )
    return config.privacy
