"""Where a federation is and who must act next, read from the workspace alone."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fedrema_cli.errors import IntegrityError
from fedrema_cli.identity import fingerprint
from fedrema_cli.protocol.rounds import (
    Phase,
    Turn,
    current_round,
    read_withdrawal,
    rejoin_advice,
    turn,
)
from fedrema_cli.store.federation import Federation


@dataclass
class RoundStatus:
    federation: str
    coordinator_fingerprint: str
    method: str
    rounds: int
    round: int
    phase: str
    phase_label: str
    complete: bool
    secure_aggregation: bool
    roster_approved: bool
    expected: list[str] = field(default_factory=list)
    acted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    #: site -> the round from which it withdrew (only signed, valid notices)
    withdrawn: dict[str, int] = field(default_factory=dict)
    action: str = ""
    next_for: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def withdrawals(fed: Federation) -> dict[str, int]:
    """Site -> first round it is out of, for every withdrawal that verifies (others: ignored,
    as the coordinator refuses them too)."""
    out = {}
    for site in fed.withdrawn_sites():
        try:
            notice = read_withdrawal(fed, site)
        except IntegrityError as exc:
            fed.ignore(f"withdrawals/{site}.json", str(exc))
            continue
        if notice is not None:
            out[site] = notice.from_round
    return out


def round_status(fed: Federation) -> RoundStatus:
    c = fed.config
    base = dict(
        federation=c.federation_id,
        method=c.method,
        rounds=c.rounds,
        coordinator_fingerprint=fingerprint(c.coordinator.sign_pk),
        secure_aggregation=c.secure,
        roster_approved=fed.roster is not None,
    )
    if fed.roster is None:
        enrolled = fed.ws.names("enrollments")
        return RoundStatus(
            round=0,
            phase="enrolling",
            phase_label="sites enrolling",
            complete=False,
            acted=enrolled,
            action="enroll",
            **base,
            next_for={
                "coordinator": "compare fingerprints, then `fedrema approve --all`",
                "new site": "`fedrema init --site NAME ...`",
            },
        )
    r = current_round(fed)
    if r > c.rounds:
        return RoundStatus(
            round=c.rounds,
            phase="done",
            phase_label="federation complete",
            complete=True,
            withdrawn=withdrawals(fed),
            **base,
            next_for={
                "coordinator": "nothing; the federation is complete",
                "each site": "`fedrema personalize`",
            },
        )
    withdrawn = withdrawals(fed)
    t = turn(fed, r, withdrawn=withdrawn)
    status = RoundStatus(
        round=r,
        phase=str(t.phase),
        phase_label=t.phase.label,
        complete=False,
        expected=list(t.expected),
        acted=list(t.acted),
        missing=list(t.missing),
        withdrawn=withdrawn,
        action=t.phase.action,
        **base,
    )
    missing, gone = t.missing, t.gone
    status.next_for["coordinator"] = (
        "`fedrema aggregate`"
        if not missing
        else f"wait for {', '.join(missing)} (or `fedrema aggregate --close` after enough)"
    )
    for site in fed.require_roster().names:
        status.next_for[site] = (
            f"withdrew from round {withdrawn[site]} on: nothing more to send"
            if site in gone
            else _site_next(site, t, rejoin_advice(fed, r))
        )
    for site in fed.ever_listed():
        if site not in status.next_for and (since := fed.removed_from(site)) is not None:
            status.next_for[site] = (
                f"removed by the coordinator from round {since} on: nothing more to send; "
                "`fedrema personalize` for your model so far"
            )
    return status


def _site_next(site: str, t: Turn, rejoin: str) -> str:
    if site not in t.expected:
        return f"not part of this round; {rejoin}"
    if site in t.acted:
        return "wait for the coordinator"
    if t.phase is Phase.COLLECT:  # training is private: a site's own status knows if it is done
        return "`fedrema train-local` (if not done yet), then `fedrema submit`"
    return "`fedrema submit`"
