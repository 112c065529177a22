"""Privacy reports and audits: gather signed ledgers (published copies or a site's own) and
hand them to `privacy.report`, which verifies chains and signatures and recomputes epsilon."""

from __future__ import annotations

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
        from privacy.ledger import canonical_json

        lines.append(canonical_json(entry).decode("utf-8") + "\n")
    return "".join(lines), problems


def build(*, state: Path | None, workspace: str | None) -> tuple[Any, list[str]]:
    """The report model and any problems found outside the ledgers themselves."""
    from privacy.report import build_report

    extra: list[str] = []
    if state is not None:
        from fedrema_cli.roles.site import LEDGER, Site

        site = Site(state, workspace=workspace)
        policy = site.config.privacy
        if policy is None:
            raise UsageError(
                f"federation {site.config.federation_id} trains without DP: "
                "there is no privacy budget to report"
            )
        text = site.state.read_bytes(LEDGER).decode("utf-8") if site.state.exists(LEDGER) else ""
        ledgers = {site.name: text}
        verifiers = {site.name: _verifier(site.fed.identity.public.sign_pk)}
        federation = site.config.federation_id
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
        federation = config.federation_id
    report = build_report(
        policy=policy,
        ledgers=ledgers,
        verifiers=verifiers,
        federation=federation,
        generated_at=timestamp(),
    )
    return report, extra
