"""Where a federation is and who must act next, read from the workspace alone."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fedrema_cli.errors import IntegrityError
from fedrema_cli.identity import fingerprint
from fedrema_cli.protocol.rounds import current_round, phase_of, read_withdrawal
from fedrema_cli.store.federation import Federation

#: For each phase: (who is expected, the artifact that counts as having acted, what it means).
_ACTS = {
    "waiting": ("key-advert", "advertise keys"),
    "keys": ("shares", "share keys"),
    "collect": ("submission", "submit an update"),
    "unmask": ("reveal", "reveal unmasking shares"),
}


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


def _expected(fed: Federation, r: int, phase: str) -> list[str]:
    if phase == "waiting":
        return list(fed.require_roster().names)
    if phase == "keys":
        return list(fed.get("key-roster", r).body["parties"])
    if phase == "collect":
        return list(fed.get("masking-roster", r).body["participants"])
    if phase == "unmask":
        return list(fed.get("unmask-request", r).body["survivors"])
    return []


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
    phase = phase_of(fed, r)
    kind, action = _ACTS[phase.name]
    expected = _expected(fed, r, phase.name)
    acted = [s for s in fed.sites_with(kind, r) if s in expected]
    withdrawn = withdrawals(fed)
    # as the coordinator does: a survivor's reveal is awaited even after it withdrew
    gone = {s for s, k in withdrawn.items() if k <= r} if phase.name != "unmask" else set()
    missing = [s for s in expected if s not in acted and s not in gone]
    status = RoundStatus(
        round=r,
        phase=phase.name,
        phase_label=phase.label,
        complete=False,
        expected=expected,
        acted=acted,
        missing=missing,
        withdrawn=withdrawn,
        action=action,
        **base,
    )
    status.next_for["coordinator"] = (
        "`fedrema aggregate`"
        if not missing
        else f"wait for {', '.join(missing)} (or `fedrema aggregate --close` after enough)"
    )
    for site in fed.require_roster().names:
        status.next_for[site] = (
            f"withdrew from round {withdrawn[site]} on: nothing more to send"
            if site in gone
            else _site_next(site, phase.name, expected, acted)
        )
    return status


def _site_next(site: str, phase: str, expected: list[str], acted: list[str]) -> str:
    if site not in expected:
        return "not part of this round; `fedrema submit` to rejoin a later round"
    if site in acted:
        return "wait for the coordinator"
    if phase == "collect":  # training is private: a site's own status knows if it is done
        return "`fedrema train-local` (if not done yet), then `fedrema submit`"
    return "`fedrema submit`"
