"""The one rule for "who is expected in this phase, who acted, who is gone" (`rounds.turn`),
against an in-memory view of a round: no files, no keys, microseconds per case.

The coordinator (when to close a phase), `status` (who is waited on) and a site (whether its
part is done) all call `turn`; these tests pin what they then agree on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from fedrema_cli.protocol import rounds
from fedrema_cli.protocol.rounds import Phase, gone_in, phase_of, turn

SITES = ("cleveland", "hungary", "switzerland", "va")


@dataclass
class View:
    """The part of a `Federation` that `turn` reads: which verified files exist."""

    roster: tuple[str, ...] = SITES
    files: set[tuple[str, int, str | None]] = field(default_factory=set)

    def exists(self, kind: str, r: int, *, site: str | None = None) -> bool:
        return (kind, r, site) in self.files

    def sites_with(self, kind: str, r: int) -> list[str]:
        return [s for s in self.roster if (kind, r, s) in self.files]

    def roster_for(self, r: int) -> SimpleNamespace:
        return SimpleNamespace(names=self.roster)


@pytest.fixture
def fixed(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[str, ...]]:
    """The coordinator's signed lists for U1 (key roster), U2 (participants), U3 (survivors)."""
    lists = {"keys": SITES, "collect": SITES[:3], "unmask": SITES[:2]}
    monkeypatch.setattr(rounds, "key_roster_parties", lambda fed, r: lists["keys"])
    monkeypatch.setattr(rounds, "participants", lambda fed, r: lists["collect"])
    monkeypatch.setattr(rounds, "survivors", lambda fed, r: lists["unmask"])
    return lists


def test_the_phase_is_read_from_the_latest_verified_coordinator_file() -> None:
    view = View()
    assert phase_of(view, 1) is Phase.WAITING
    for kind, phase in (
        ("key-roster", Phase.KEYS),
        ("masking-roster", Phase.COLLECT),
        ("unmask-request", Phase.UNMASK),
        ("result", Phase.DONE),
    ):
        view.files.add((kind, 1, None))
        assert phase_of(view, 1) is phase
    assert phase_of(view, 2) is Phase.WAITING  # another round's files say nothing of round 2


def test_each_phase_expects_the_sites_its_coordinator_file_names(fixed: dict) -> None:
    view = View()
    assert turn(view, 1, withdrawn={}, phase=Phase.WAITING).expected == SITES
    assert turn(view, 1, withdrawn={}, phase=Phase.KEYS).expected == fixed["keys"]
    assert turn(view, 1, withdrawn={}, phase=Phase.COLLECT).expected == fixed["collect"]
    assert turn(view, 1, withdrawn={}, phase=Phase.UNMASK).expected == fixed["unmask"]
    assert turn(view, 1, withdrawn={}, phase=Phase.DONE).expected == ()


def test_acted_counts_only_expected_sites_with_the_phases_evidence(fixed: dict) -> None:
    view = View(files={("submission", 1, "cleveland"), ("submission", 1, "va")})
    view.files.add(("shares", 1, "hungary"))  # evidence of another phase counts for nothing
    t = turn(view, 1, withdrawn={}, phase=Phase.COLLECT)
    assert t.acted == ("cleveland",)  # va sent a file but is not a participant of U2
    assert t.missing == ("hungary", "switzerland")


def test_a_caller_that_refused_a_file_passes_who_acted(fixed: dict) -> None:
    view = View(files={("submission", 1, s) for s in SITES[:3]})
    t = turn(view, 1, withdrawn={}, acted=["cleveland"], phase=Phase.COLLECT)
    assert t.missing == ("hungary", "switzerland")


def test_a_withdrawn_site_is_not_waited_for_except_for_its_unmasking_shares(fixed: dict) -> None:
    view = View()
    withdrawn = {"hungary": 1, "va": 3}
    t = turn(view, 1, withdrawn=withdrawn, phase=Phase.WAITING)
    assert t.gone == {"hungary"} and "hungary" not in t.missing and "va" in t.missing
    # its masked update is already in round 1's sum: its shares are still awaited
    t = turn(view, 1, withdrawn=withdrawn, phase=Phase.UNMASK)
    assert t.gone == frozenset() and t.missing == ("cleveland", "hungary")


@pytest.mark.parametrize("phase", [p for p in Phase if p is not Phase.UNMASK])
def test_gone_means_withdrawn_from_this_round_or_earlier(phase: Phase) -> None:
    assert gone_in(phase, 2, {"a": 1, "b": 2, "c": 3}) == {"a", "b"}


def test_everyone_acted_means_nobody_is_missing(fixed: dict) -> None:
    view = View(files={("key-advert", 1, s) for s in SITES})
    t = turn(view, 1, withdrawn={})
    assert t.phase is Phase.WAITING and t.acted == SITES and t.missing == ()
