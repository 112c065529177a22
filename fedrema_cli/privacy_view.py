"""Privacy reports and audits: gather signed ledgers (published copies or a site's own) and
hand them to `privacy.report`, which verifies chains and signatures and recomputes epsilon."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import crypto
from fedrema_cli.errors import ConfigError, StoreError, UsageError
from fedrema_cli.identity import Identity, unb64
from fedrema_cli.roles.common import timestamp
from fedrema_cli.store.federation import Federation, read_federation
from fedrema_cli.store.workspace import Workspace


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
        out.append(f"{site.name}: {ACCOUNTANT}: {exc}")
    if site.fed.roster is not None:
        out += [
            f"{site.name}: round {r}: published as ledger/{site.name}/{r:04d}.json but "
            "missing from the site's own ledger (entries dropped?)"
            for r in site.published_not_in(entries)
        ]
    return out


def _published_ledger(fed: Federation, site: str) -> tuple[str, list[str]]:
    """A site's published entries as ledger text, in round order, plus envelope problems.

    The entries are taken from the files even when a file's envelope does not verify, so the
    ledger check names the entry; the envelope problem is reported alongside.
    """
    lines: list[str] = []
    problems: list[str] = []
    for r in fed.ledger_rounds(site):
        path = f"ledger/{site}/{r:04d}.json"
        try:
            art = fed.get("ledger-entry", r, site=site)
            entry = art.body
        except (StoreError, ConfigError) as e:
            problems.append(f"{path}: {e}")
            continue
        except Exception as e:  # noqa: BLE001 - an integrity failure is a finding, not a crash
            problems.append(f"{path}: {e}")
            try:
                entry = json.loads(fed.ws.storage.read_bytes(path))["body"]
            except (ValueError, KeyError, TypeError, StoreError):
                continue
        # Not canonical_json: a forged body may hold NaN/inf, which it refuses; the ledger
        # parser then names the line as malformed instead of the audit crashing.
        lines.append(json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n")
    return "".join(lines), problems


def _unrecorded_updates(fed: Federation, site: str) -> list[str]:
    """Rounds that used the site's update but whose ledger entry is not in the workspace.

    A site publishes a round's ledger entry before it can submit that round's update, so an
    update without an entry means entries were deleted -- including the last ones, which the
    hash chain alone cannot show missing. Two anchors, so deleting one file is not enough:
    the site-signed submission, and the coordinator-signed result that lists its survivors.
    """
    from fedrema_cli.merging import METHODS

    if not METHODS[fed.config.method].trains:  # no gradient step, no spend, no entry
        return []
    published = set(fed.ledger_rounds(site))
    rounds = sorted(int(n) for n in fed.ws.storage.list("rounds") if n.isdigit())
    out = []
    for r in rounds:
        if r in published:
            continue
        if fed.exists("submission", r, site=site):
            anchor = f"its update (rounds/{r:04d}/submissions/{site}.json) is in the workspace"
        elif fed.exists("result", r) and site in fed.get("result", r).body.get("survivors", []):
            anchor = "the coordinator's signed result of that round used its update"
        else:
            continue
        out.append(
            f"round {r}: {anchor} but its ledger entry ledger/{site}/{r:04d}.json is not: "
            "the spend of that round is missing from this report (entry deleted?)"
        )
    return out


def build(*, state: Path | None, workspace: str | None) -> tuple[Any, list[str]]:
    """The report model and any problems found outside the ledgers themselves.

    Those problems are also folded into the report, so the HTML, PDF and JSON a DPO files can
    never show "verified" when the command itself fails.
    """
    from privacy.ledger import Problem, ProblemKind
    from privacy.report import build_report

    extra: list[str] = []
    if state is not None:
        from fedrema_cli.roles.site import Site, read_ledger_text

        site = Site(state, workspace=workspace)
        policy = site.config.privacy
        if policy is None:
            raise UsageError(
                f"federation {site.config.federation_id} trains without DP: "
                "there is no privacy budget to report"
            )
        text = read_ledger_text(site.state)
        ledgers = {site.name: text}
        verifiers = {site.name: _verifier(site.fed.identity.public.sign_pk)}
        federation = site.config.federation_id
        config = site.config
        extra += _own_ledger_anchors(site, text, verifiers[site.name])
    else:
        if workspace is None:
            raise UsageError(
                "say which ledgers: --workspace WS (every site's published "
                "entries) or --state SITE_DIR (one site's own ledger)"
            )
        ws = Workspace.open(workspace)
        config, _ = read_federation(ws)
        fed = Federation(ws, config, me="auditor", identity=Identity.generate())
        roster = fed.load_roster()
        if roster is None:
            raise UsageError("the roster is not approved yet: there are no ledgers")
        policy = config.privacy
        if policy is None:
            raise UsageError(
                f"federation {config.federation_id} trains without DP: there is "
                "no privacy budget to report"
            )
        ledgers, verifiers = {}, {}
        for s in roster.sites:
            text, problems = _published_ledger(fed, s.name)
            ledgers[s.name] = text
            verifiers[s.name] = _verifier(s.sign_pk)
            extra += [f"{s.name}: {p}" for p in problems]
            extra += [f"{s.name}: {p}" for p in _unrecorded_updates(fed, s.name)]
        federation = config.federation_id
    report = build_report(
        policy=policy,
        ledgers=ledgers,
        verifiers=verifiers,
        federation=federation,
        generated_at=timestamp(),
        preprocessing=config.data.fixed_preprocessing,
    )
    if extra:
        report = dataclasses.replace(
            report,
            problems=(*report.problems, *(Problem(ProblemKind.WORKSPACE, p) for p in extra)),
        )
    return report, extra
