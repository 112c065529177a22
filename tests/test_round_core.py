"""The round core, in-process: the coordinator's phase machine (`Coordinator.advance`) and the
sites' secure-aggregation driver (`secagg.site_steps`), over real signed files, without the
CLI and without training.

Each site hands the driver a synthetic `SiteUpdate` (a seeded vector of the shared part's
size and a record count), as `Submitting.secagg_view` does with a trained one, so a whole
round with real keys, shares, masks and unmasking takes a fraction of a second and protocol
properties are checked against sums known exactly. The CLI federation tests keep what only
the shell shows (exit codes, messages, what the files leak: tests/cli/test_secagg_workspace.py,
test_withdraw.py), with DP training, in seconds per test.

The federation: four sites (t = 3 by the default rule), FedAvg (the whole model is summed),
no DP, tight public bounds (at most 100 records, |delta| <= 4: 2^24 words, 12 fractional
bits) and a float32 broadcast, so a round's result is off the exact weighted mean by the
fixed-point rounding alone. The protocol's own randomness (keys, masks, rounding) comes from
os.urandom as in production; every assertion holds for any draw.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from fedrema_cli.config import make_config
from fedrema_cli.data.tables import TabularSchema
from fedrema_cli.errors import ProtocolAbortedError
from fedrema_cli.learning.modelspec import ModelSpec, part_size
from fedrema_cli.protocol import secagg as secure
from fedrema_cli.protocol.exchange import shared_vector
from fedrema_cli.protocol.messages import ResultBody, UnmaskRequestBody, read
from fedrema_cli.protocol.rounds import (
    Actions,
    Phase,
    current_round,
    phase_of,
    read_model,
    rejoin_round,
    turn,
)
from fedrema_cli.protocol.secagg import SiteRound, SiteUpdate, site_steps
from fedrema_cli.protocol.status import round_status
from fedrema_cli.roles.coordinator import Coordinator, Progress
from fedrema_cli.roles.site import Site
from fedrema_cli.store.federation import Federation

SITES = ("cleveland", "hungary", "switzerland", "va")
THRESHOLD = 3  # max(2, floor(2 * 4 / 3) + 1)
MAX_RECORDS = 100
CLIP = 4.0
#: the order a round's phases come in, and what the coordinator says a site did in each
ORDER = (Phase.WAITING, Phase.KEYS, Phase.COLLECT, Phase.UNMASK, Phase.DONE)
DID = {
    Phase.WAITING: "advertised keys",
    Phase.KEYS: "shared their keys",
    Phase.COLLECT: "submitted",
    Phase.UNMASK: "revealed shares",
}


@pytest.fixture(scope="module", autouse=True)
def _model_library_loaded() -> None:
    """Signing the first roster builds round 1's model, which imports torch (about 1.5 s,
    once per process): paid here, so each test's own time is its rounds."""
    import fedrema_cli.learning.models  # noqa: F401


@dataclass
class Core:
    """A coordinator and its enrolled, approved sites: role objects over one workspace."""

    coord: Coordinator
    sites: dict[str, Site]
    workspace: Path
    rng: np.random.Generator
    #: site -> round -> the synthetic update that site's driver is handed
    updates: dict[str, dict[int, SiteUpdate]] = field(default_factory=dict)

    @property
    def fed(self) -> Federation:
        return self.coord.fed

    def phase(self, r: int = 1) -> Phase:
        return phase_of(self.fed, r)

    def train(self, r: int, sites: Iterable[str] = SITES) -> None:
        """Stand-in for `train-local`: a seeded delta of the shared part and a record count."""
        dim = part_size(self.coord.config.model, "all")
        for s in sites:
            self.updates.setdefault(s, {})[r] = SiteUpdate(
                delta=self.rng.uniform(-1.0, 1.0, dim),
                weight=float(self.rng.integers(10, MAX_RECORDS + 1)),
                body={"round": r, "method": self.coord.config.method},
            )

    def act(self, *sites: str) -> dict[str, Actions]:
        """Each site's `submit` minus its checks: every SecAgg step it can take now."""
        out = {}
        for s in sites:
            site = self.sites[s]
            view = SiteRound(
                site.fed,
                site.state,
                site.last_round(),
                self.updates.get(s, {}),
                first=site.first_round(),
            )
            out[s] = Actions()
            site_steps(view, current_round(site.fed), out[s])
        return out

    def step(self, r: int = 1, *, close: bool = False) -> Phase:
        """Every site acts, then the coordinator advances: one phase of round r."""
        self.act(*SITES)
        self.coord.advance(close=close)
        return self.phase(r)

    def to(self, phase: Phase, r: int = 1) -> None:
        """Run round r with every site until it reaches ``phase``."""
        while self.phase(r) is not phase:
            assert ORDER.index(self.phase(r)) < ORDER.index(phase), (self.phase(r), phase)
            self.step(r)

    def snapshot(self) -> dict[str, str]:
        """Every workspace file and the hash of its bytes: to show nothing was written."""
        return {
            str(p.relative_to(self.workspace)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(self.workspace.rglob("*"))
            if p.is_file()
        }


def make_core(tmp: Path, *, rounds: int = 2, seed: int = 0) -> Core:
    """What `init`, `init --site` x4 and `approve --all` do, through the role classes."""
    schema = TabularSchema(features=("age", "chol"), label="target", classes=(0, 1))
    model = ModelSpec.mlp(in_features=2, hidden=(3,), num_classes=2)
    config = make_config(
        federation_id="round-core",
        model=model,
        data=schema,
        method="fedavg",  # the whole model summed, nothing sealed, no method state
        rounds=rounds,
        seed=seed,
        max_weight=MAX_RECORDS,
        secagg_clip=CLIP,
        broadcast="float32",  # the published model is the mean itself, not a float16 neighbour
    )
    ws = str(tmp / "ws")
    coord = Coordinator.create(workspace=ws, state_dir=tmp / "coord", config=config)
    table = tmp / "table.csv"  # enrollment checks a site's data against the schema
    table.write_text("age,chol,target\n63,233,1\n41,204,0\n57,354,1\n")
    for s in SITES:
        Site.create(workspace=ws, state_dir=tmp / s, name=s, train=table, test=None)
    coord.approve()
    sites = {s: Site(tmp / s) for s in SITES}  # opened after approval, as each command is
    return Core(coord, sites, tmp / "ws", np.random.default_rng(seed))


@pytest.fixture
def core(tmp_path: Path) -> Core:
    return make_core(tmp_path)


def result_of(core: Core, r: int) -> ResultBody:
    return read(core.fed, "result", r, ResultBody)


def check_round_result(core: Core, r: int, contributors: Iterable[str]) -> float:
    """Round r's unmasked sum is the sum of ``contributors``' weighted updates, and the model
    it published for round r + 1 is round r's plus their weighted mean update.

    Each site rounds weight * delta stochastically to a multiple of 2^-f, an error below 2^-f
    per coordinate; integer weights are exact. So the sum is within n 2^-f and the mean within
    n 2^-f / (total weight), plus float32's rounding of the model. Returns that bound.
    """
    names = sorted(contributors)
    n = len(names)
    f = secure.round_context(core.coord.config, core.fed.roster_for(r), r).params.frac_bits
    ups = [core.updates[s][r] for s in names]
    true_sum = sum(u.weight * u.delta for u in ups)
    true_weight = sum(u.weight for u in ups)

    summed, weight = secure.unmask_sum(core.fed, r, core.fed.sites_with("reveal", r))
    assert weight == true_weight
    assert np.max(np.abs(summed - true_sum)) < n * 2.0**-f

    before = shared_vector(read_model(core.fed, r), "all")
    after = shared_vector(read_model(core.fed, r + 1), "all")
    bound = n * 2.0**-f / true_weight + 1e-6
    assert np.max(np.abs(after - before - true_sum / true_weight)) < bound
    return bound


def mean_of(core: Core, r: int, sites: Iterable[str]) -> np.ndarray:
    ups = [core.updates[s][r] for s in sites]
    return sum(u.weight * u.delta for u in ups) / sum(u.weight for u in ups)


def index_of(core: Core, site: str, r: int = 1) -> int:
    return core.fed.roster_for(r).site(site).index


# -- a round with every site -----------------------------------------------------------------


def test_a_full_round_moves_through_each_phase_and_publishes_the_weighted_mean(
    core: Core,
) -> None:
    """Each phase waits for its sites, and the coordinator's one step after they all acted
    opens the next; the model it publishes is the sample-weighted FedAvg of the updates."""
    core.train(1)
    assert core.phase() is Phase.WAITING  # approval opened round 1 for key adverts
    for phase, nxt in itertools.pairwise(ORDER):
        core.act(*SITES)
        assert core.phase() is phase  # sites acting never moves the phase ...
        progress = core.coord.advance()
        assert core.phase() is nxt  # ... the coordinator does, by exactly one
        assert progress.finished == ([1] if nxt is Phase.DONE else [])

    check_round_result(core, 1, SITES)
    result = result_of(core, 1)
    assert result.survivors == SITES and result.dropped == () and result.secure_aggregation
    # Nobody dropped: no site's pairwise key was reconstructed, only the self-mask seeds.
    for s in SITES:
        reveal = secure.read_message(core.fed, "reveal", 1, s)
        assert reveal.key_shares == {}
        assert set(reveal.self_seed_shares) == {index_of(core, x) for x in SITES}
    assert core.coord.advance().events == []  # nothing left to do in round 1: harmless


def test_advance_moves_nothing_until_every_expected_site_acted(core: Core) -> None:
    """Without --close and before the deadline (24 h) a phase stays open while a site is
    missing, and a repeated advance writes nothing."""
    core.train(1)
    for phase in ORDER[:-1]:
        core.act(*SITES[:-1])
        before = core.snapshot()
        for _ in range(2):
            assert core.coord.advance().events == []
        assert core.phase() is phase and core.snapshot() == before
        core.act(SITES[-1])
        core.coord.advance()
    assert core.phase() is Phase.DONE


def test_who_is_missing_is_who_has_not_acted_in_each_phase(core: Core) -> None:
    """`turn` (coordinator and sites alike), `status` and the coordinator's own wording name
    exactly the expected sites that have not acted, site by site, in every phase."""
    core.train(1)
    site_view = core.sites["hungary"].fed
    for phase in ORDER[:-1]:
        for k in range(len(SITES) + 1):
            acted, missing = SITES[:k], SITES[k:]
            for fed in (core.fed, site_view):
                t = turn(fed, 1, withdrawn={})
                assert (t.phase, t.expected, t.acted, t.missing) == (phase, SITES, acted, missing)
            status = round_status(core.fed)
            assert (status.phase, status.missing, status.acted) == (
                str(phase),
                list(missing),
                list(acted),
            )
            if missing:
                assert core.coord.waiting_for() == (
                    f"round 1: {', '.join(missing)} to {phase.action}"
                )
            if phase is Phase.UNMASK:  # a site knows its part of the round is done
                assert [core.sites[s].round_part_done() for s in SITES] == [
                    s in acted for s in SITES
                ]
            if k < len(SITES):
                core.act(SITES[k])
        core.coord.advance()
    assert core.phase() is Phase.DONE
    # round 2's keys went out with round 1's updates and reveals: it waits for updates now
    status = round_status(core.fed)
    assert (status.round, status.phase, status.missing) == (2, "collect", list(SITES))


# -- dropouts --------------------------------------------------------------------------------


def test_a_site_that_shares_keys_but_never_submits_is_unmasked_out_of_the_sum(
    core: Core,
) -> None:
    """Its pairwise masks are in every survivor's masked input: the survivors reveal shares
    of its mask key, the coordinator rebuilds it and removes them, and the sum is exactly the
    survivors' (a sum still carrying those masks would be noise)."""
    core.train(1)
    core.to(Phase.COLLECT)
    survivors, gone = SITES[:-1], SITES[-1]
    core.act(*survivors)
    core.coord.advance()
    assert core.phase() is Phase.COLLECT  # va is waited for until the deadline ...
    core.coord.advance(close=True)
    assert core.phase() is Phase.UNMASK  # ... or until the coordinator stops waiting
    request = read(core.fed, "unmask-request", 1, UnmaskRequestBody)
    assert request.survivors == survivors and request.dropped == (gone,)

    late = core.act(gone)[gone]  # va comes back too late: it must not send its update now
    assert not core.fed.exists("submission", 1, site=gone)
    assert any("closed without this site" in w for w in late.waiting)

    core.act(*survivors)
    core.coord.advance()  # the survivors are all U3 waits for: no --close needed
    assert core.phase() is Phase.DONE
    bound = check_round_result(core, 1, survivors)
    everyone = mean_of(core, 1, SITES)
    assert np.max(np.abs(everyone - mean_of(core, 1, survivors))) > 100 * bound  # discerning
    result = result_of(core, 1)
    assert result.survivors == survivors and result.dropped == (gone,)
    for s in survivors:  # shares of va's mask key, and of no survivor's
        reveal = secure.read_message(core.fed, "reveal", 1, s)
        assert set(reveal.key_shares) == {index_of(core, gone)}
        assert index_of(core, gone) not in reveal.self_seed_shares


def test_a_site_that_submits_but_never_reveals_is_still_in_the_sum(core: Core) -> None:
    """After U3 is fixed every survivor's update is in the sum; t reveals rebuild every
    self-mask seed, the silent site's included."""
    core.train(1)
    core.to(Phase.UNMASK)
    core.act(*SITES[:-1])
    core.coord.advance()
    assert core.phase() is Phase.UNMASK
    assert turn(core.fed, 1, withdrawn={}).missing == (SITES[-1],)
    core.coord.advance(close=True)
    assert core.phase() is Phase.DONE
    check_round_result(core, 1, SITES)
    result = result_of(core, 1)
    assert result.survivors == SITES and result.dropped == ()


@pytest.mark.parametrize("phase", ORDER[:-1], ids=str)
def test_fewer_than_t_sites_abort_the_phase_cleanly_and_a_late_one_resumes_it(
    core: Core, phase: Phase
) -> None:
    """With only 2 of 4 (t = 3), even --close stops with ProtocolAbortedError (exit 5) saying
    who is missing, and writes nothing; it is not final: once a third site acts, the phase
    closes and the round goes on."""
    core.train(1)
    core.to(phase)
    core.act(*SITES[:2])
    before = core.snapshot()
    missing = ", ".join(SITES[2:])
    with pytest.raises(ProtocolAbortedError) as caught:
        core.coord.advance(close=True)
    assert str(caught.value) == (
        f"round 1: only 2 of 4 sites {DID[phase]} (missing: {missing}); "
        f"secure aggregation needs at least {THRESHOLD}"
    )
    assert caught.value.exit_code == 5
    assert caught.value.hint == "wait for more sites and run `fedrema aggregate` again"
    assert core.snapshot() == before and core.phase() is phase

    core.act(SITES[2])
    core.coord.advance(close=True)
    assert core.phase() is ORDER[ORDER.index(phase) + 1]
    while core.phase() is not Phase.DONE:  # the rest of the round without the fourth site
        core.act(*SITES[:3])
        core.coord.advance(close=True)
    in_sum = SITES if phase is Phase.UNMASK else SITES[:3]
    check_round_result(core, 1, in_sum)


def test_a_site_left_out_of_the_masking_roster_cannot_get_into_the_sum(core: Core) -> None:
    """va advertised (it is in U1) but shared no keys before the coordinator closed that
    phase, so it is not in U2: its driver sends no update, and a submission file it signs
    anyway is not counted by the coordinator (the round's sum is the others')."""
    core.train(1)
    core.to(Phase.KEYS)
    core.act(*SITES[:-1])
    core.coord.advance(close=True)
    assert core.phase() is Phase.COLLECT
    assert turn(core.fed, 1, withdrawn={}).expected == SITES[:-1]

    late = core.act("va")["va"]  # late: it sends neither key shares nor an update now
    assert not core.fed.exists("shares", 1, site="va")
    assert not core.fed.exists("submission", 1, site="va")
    assert any("closed without this site" in w for w in late.waiting)
    va = core.sites["va"].fed
    va.put("submission", 1, {"round": 1, "method": "fedavg"}, attachments={"masked.bin": b"x"})
    assert turn(core.fed, 1, withdrawn={}).acted == ()

    core.act(*SITES[:-1])
    core.coord.advance()
    core.act(*SITES[:-1])
    core.coord.advance()
    assert core.phase() is Phase.DONE
    check_round_result(core, 1, SITES[:-1])
    result = result_of(core, 1)
    assert result.survivors == SITES[:-1] and "va" not in result.expected


# -- withdrawals -----------------------------------------------------------------------------


def test_a_withdrawn_site_is_not_waited_for(core: Core) -> None:
    """A signed withdrawal before the round: every phase closes once the others acted, no
    --close and no deadline needed; the withdrawn site's driver does nothing."""
    notice, new = core.sites["va"].withdraw("leaving the study")
    assert new and notice.from_round == 1
    others = SITES[:-1]
    core.train(1, others)
    for phase in ORDER[:-1]:
        assert core.phase() is phase
        assert core.act("va")["va"].done == []
        core.act(*others)
        progress = core.coord.advance()
        assert progress.withdrawn == {"va": notice.to_json()}  # reported, not waited for
    assert core.phase() is Phase.DONE
    check_round_result(core, 1, others)
    assert not any(core.fed.exists("key-advert", r, site="va") for r in (1, 2))


def test_a_site_that_withdraws_after_submitting_still_owes_its_reveal(core: Core) -> None:
    """Its update is in round 1's sum, so unmasking waits for it (withdrawn or not); from
    round 2 on it is not waited for."""
    core.train(1)
    core.train(2, SITES[:-1])
    core.to(Phase.COLLECT)
    core.act(*SITES)
    notice, _ = core.sites["va"].withdraw("leaving the study")
    assert notice.from_round == 2
    core.coord.advance()
    assert core.phase() is Phase.UNMASK
    core.act(*SITES[:-1])
    core.coord.advance()
    assert core.phase() is Phase.UNMASK  # va's shares are awaited: its update is in the sum
    assert turn(core.fed, 1, withdrawn={"va": 2}).missing == ("va",)
    core.act("va")
    core.coord.advance()
    assert core.phase() is Phase.DONE
    check_round_result(core, 1, SITES)

    while core.phase(2) is not Phase.DONE:  # round 2: never waits for va, never --close
        before = core.phase(2)
        core.act(*SITES[:-1])
        assert core.coord.advance().events, f"round 2 stuck in {before}"
    check_round_result(core, 2, SITES[:-1])
    assert not core.fed.exists("shares", 2, site="va")


# -- across rounds ---------------------------------------------------------------------------


def test_the_second_round_starts_from_the_first_ones_result_and_finishes_the_federation(
    core: Core,
) -> None:
    """Round 2's keys travel with round 1's updates (its U1 is fixed as round 1 unmasks),
    round 2 sums against the model round 1 published, and each site forgets round 1's
    secrets once round 2 is under way."""
    core.train(1)
    core.train(2)
    core.to(Phase.DONE)
    assert core.phase(2) is Phase.COLLECT  # adverts with the updates, shares with the reveals
    check_round_result(core, 1, SITES)
    core.act(*SITES)
    for s in SITES:
        assert not core.sites[s].state.exists("secagg/0001.json")
    core.coord.advance()
    core.to(Phase.DONE, 2)
    check_round_result(core, 2, SITES)
    assert core.coord.complete() and current_round(core.fed) == 3
    assert core.coord.advance() == Progress()


def test_a_site_dropped_from_the_next_to_last_round_is_told_no_round_is_left(
    tmp_path: Path,
) -> None:
    """Dropped from round 1 of 2: round 2's keys are fixed without it, so there is nothing to
    rejoin, and status must not send a cron job to `submit` forever."""
    from fedrema_cli.protocol.status import round_status

    core = make_core(tmp_path, rounds=2)
    core.train(1, SITES[:-1])
    core.to(Phase.COLLECT)
    core.act(*SITES[:-1])
    core.coord.advance(close=True)  # va never submitted
    while core.phase(1) is not Phase.DONE:
        core.act(*SITES[:-1])
        core.coord.advance()
    assert rejoin_round(core.fed, 1) is None and rejoin_round(core.fed, 2) is None
    status = round_status(core.fed)
    assert status.round == 2 and "va" not in status.expected
    assert "no round is left to rejoin" in status.next_for["va"]
    assert "`fedrema submit`" not in status.next_for["va"]


def test_a_site_dropped_from_a_round_sits_out_the_next_and_rejoins_after(
    tmp_path: Path,
) -> None:
    """Round r + 1's key roster is fixed from the adverts that came with round r's updates,
    so a site that dropped from round r is not in it; its driver advertises for the first
    round not yet fixed, and it is back in round r + 2."""
    core = make_core(tmp_path, rounds=3)
    core.train(1, SITES[:-1])
    core.train(2, SITES[:-1])
    core.train(3)
    core.to(Phase.COLLECT)
    core.act(*SITES[:-1])
    core.coord.advance(close=True)  # va never submitted
    assert core.phase(2) is Phase.KEYS
    assert turn(core.fed, 2, withdrawn={}).expected == SITES[:-1]

    assert rejoin_round(core.fed, 1) == 3  # round 2's key roster is fixed without va
    done = core.act("va")["va"].done
    assert done == ["round 3: keys advertised to rejoin the federation"]
    for r in (1, 2):
        while core.phase(r) is not Phase.DONE:
            core.act(*SITES)
            assert core.coord.advance().events
    check_round_result(core, 1, SITES[:-1])
    check_round_result(core, 2, SITES[:-1])
    assert turn(core.fed, 3, withdrawn={}).expected == SITES  # va is back in U1 and U2
    core.to(Phase.DONE, 3)
    check_round_result(core, 3, SITES)
