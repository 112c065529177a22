"""The coordinator: creates the federation, approves sites, and moves each round forward.

`advance()` does every step that is possible right now and returns what it did; running it
again when nothing can move is harmless. Each step writes one signed coordinator file that
marks a phase boundary (see docs/architecture.md, "One round of secure aggregation"):

    key-roster(r)  ->  masking-roster(r)  ->  unmask-request(r)  ->  result(r), model(r+1)

A phase closes when every expected site has acted (or withdrew: `Site.withdraw`), or when its
deadline has passed (or the operator passes ``close=True``) and at least ``threshold`` sites
have acted.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crypto.errors import SecAggError
from fedrema_cli.config import FederationConfig, default_threshold, parse_config
from fedrema_cli.errors import (
    ConfigError,
    IntegrityError,
    ProtocolAbortedError,
    StoreError,
    UsageError,
)
from fedrema_cli.identity import PublicIdentity, b64, fingerprint, unb64
from fedrema_cli.learning.params import save_params
from fedrema_cli.methods import METHODS, RoundInputs
from fedrema_cli.protocol import exchange
from fedrema_cli.protocol import secagg as secure
from fedrema_cli.protocol.messages import SubmissionBody
from fedrema_cli.protocol.messages import read as read_body
from fedrema_cli.protocol.rounds import (
    PARAMS,
    Phase,
    Turn,
    Withdrawal,
    current_round,
    expected_in,
    initial_params,
    model_attachment,
    next_unstarted_round,
    opened_at,
    parse_time,
    participants,
    phase_of,
    read_model,
    read_withdrawal,
    timestamp,
    turn,
    utcnow,
)
from fedrema_cli.store.federation import (
    FEDERATION,
    Federation,
    Roster,
    RosterSite,
    read_federation,
    roster_base,
)
from fedrema_cli.store.state import (
    COORDINATOR_META,
    SITE_META,
    PartyState,
    not_a_state_folder,
)
from fedrema_cli.store.storage import LocalStorage, lasting_location
from fedrema_cli.store.workspace import COORDINATOR, SITE_NAME, Workspace
from fedrema_cli.suggest import did_you_mean

META = COORDINATOR_META
METHOD_STATE = "method-state.json"
LEGACY_FEDREMA_STATE = "fedrema-state.json"
MERGE_LOG = "merge-log.json"
#: the coordinator's random stream for rounding the broadcast model (its own: the method's
#: stream, default_rng([seed, r]), stays what it was)
BROADCAST_STREAM = 2


def _outcome(r: int) -> str:
    """Round r's outcome, kept: the one source every (re)publication of round r comes from."""
    return f"outcomes/{r:04d}.json"


@dataclass(frozen=True)
class Enrollment:
    site: str
    fingerprint: str
    public: PublicIdentity
    approved: bool


@dataclass(frozen=True)
class RosterChange:
    """A roster version `approve` would sign, and what it changes (for the operator)."""

    roster: Roster
    added: tuple[str, ...]
    removed: tuple[str, ...]
    rotated: tuple[str, ...]
    #: enrolled sites not in the roster that this change does not approve either
    left_out: tuple[str, ...]
    unchanged: bool


@dataclass
class Progress:
    """What one `advance()` did, in words, plus the rounds it finished."""

    events: list[str] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)
    #: "round r: SITE's KIND" -> why it was refused; that site is treated as not having acted
    rejected: dict[str, str] = field(default_factory=dict)
    #: site -> its withdrawal notice, for every site no phase of this call waited for
    withdrawn: dict[str, dict[str, object]] = field(default_factory=dict)
    #: site -> why a file posing as its withdrawal was refused (that site is waited for)
    bad_withdrawals: dict[str, str] = field(default_factory=dict)

    def reject(self, r: int, kind: str, refused: dict[str, str]) -> None:
        for site, why in refused.items():
            self.rejected[f"round {r}: {site}'s {kind}"] = why


class Coordinator:
    """One coordinator, bound to its private state folder and the federation workspace."""

    def __init__(self, state_dir: str | Path, *, workspace: str | None = None) -> None:
        self.state = PartyState(state_dir)
        if not self.state.exists(META):
            raise not_a_state_folder(
                state_dir,
                "coordinator",
                hint="create one with `fedrema init --workspace WS --state DIR`",
            )
        meta = self.state.read_meta(META, {"workspace": str, "federation_sha256": str})
        ws = Workspace.open(workspace or meta["workspace"])
        config, digest = read_federation(ws)
        if digest != meta["federation_sha256"]:
            raise IntegrityError(
                f"{ws.describe()}/federation.json is not the one this coordinator wrote "
                "(replaced, or another federation's workspace)"
            )
        identity = self.state.identity()
        if identity.public.sign_pk != config.coordinator.sign_pk:
            raise ConfigError(
                f"the key in {state_dir} is not the one that signed this federation; "
                "refusing to sign anything with it",
                hint="restore the coordinator's state folder from its backup",
            )
        self.fed = Federation(ws, config, me=COORDINATOR, identity=identity)
        self.fed.load_roster()
        self.federation_sha256 = digest
        #: site -> why its enrollment was refused (another federation's, forged, damaged)
        self.refused_enrollments: dict[str, str] = {}
        #: (kind, round, site) -> None (accepted) or why refused; `--wait` polls re-use it
        self._verdicts: dict[tuple[str, int, str], str | None] = {}
        #: site -> its withdrawal, or why it was refused (write-once, so read once)
        self._withdrawals: dict[str, Withdrawal | str | None] = {}

    # -- creation and approval ------------------------------------------------------------

    @classmethod
    def create(
        cls, *, workspace: str, state_dir: str | Path, config: dict[str, Any]
    ) -> Coordinator:
        """Write a new federation: signed config and private coordinator state."""
        state = PartyState(state_dir)
        ws = Workspace.open(workspace)
        if state.exists(META):
            raise UsageError(f"{state_dir} already holds a coordinator; nothing was changed")
        if state.exists(SITE_META):
            raise UsageError(
                f"{state_dir} is a site's state folder; the coordinator needs a folder of "
                "its own; nothing was changed",
                hint="give --state a new folder",
            )
        if ws.exists(FEDERATION):
            raise UsageError(
                f"{ws.describe()} already holds a federation; nothing was changed",
                hint="use an empty folder for a new federation",
            )
        identity = state.create_identity()
        pub = identity.public
        full = {**config, "coordinator": {"sign_pk": pub.sign_pk, "seal_pk": pub.seal_pk}}
        parsed = parse_config(full, where="the new federation's config")
        body = parsed.model_dump(mode="json")
        ws.put(
            FEDERATION,
            kind="federation",
            federation=parsed.federation_id,
            round=0,
            author=COORDINATOR,
            identity=identity,
            body=body,
        )
        state.write_json(
            META,
            {
                "format": "fedrema-coordinator/1",
                "workspace": lasting_location(workspace),
                "federation_id": parsed.federation_id,
                "federation_sha256": ws.raw_sha256(FEDERATION),
            },
        )
        return cls(state_dir)

    @property
    def config(self) -> FederationConfig:
        return self.fed.config

    def enrollments(self) -> list[Enrollment]:
        """Enrollments that verify for this federation; the others go to ``refused``."""
        approved = set(self.fed.roster.names) if self.fed.roster else set()
        out = []
        for site in self.fed.ws.names("enrollments"):
            if not SITE_NAME.fullmatch(site):
                self.refused_enrollments[site] = "not a valid site name"
                continue
            try:
                art = exchange.read_enrollment(
                    self.fed, site, federation_sha256=self.federation_sha256
                )
            except (IntegrityError, StoreError) as exc:
                self.refused_enrollments[site] = str(exc)
                continue
            pub = PublicIdentity.from_json(art.body["keys"])
            out.append(Enrollment(site, fingerprint(pub.sign_pk), pub, site in approved))
        return out

    def plan_roster(
        self, sites: list[str] | None = None, *, remove: tuple[str, ...] = ()
    ) -> RosterChange:
        """What approving ``sites`` (None: every enrolled site) and removing ``remove`` would
        sign, without signing it: the command shows it (and asks) first.

        Before round 1 this is the first roster. In a running federation it is a new roster
        version in force from the next round whose key exchange has not started: named
        enrolled sites are added, sites with an approved key rotation get their new keys,
        ``remove`` leaves the roster; sites already in it and not named stay as they are.
        """
        enrolled = {e.site: e for e in self.enrollments()}
        ever = {x.name: x.index for v in self.fed.rosters for x in v.sites}
        current = self.fed.roster
        listed = set(current.names) if current else set()
        removed_before = set(ever) - listed  # `--all` does not bring a removed site back
        chosen = sorted(set(enrolled) - removed_before) if not sites else sorted(set(sites))
        refused = [s for s in chosen if s in self.refused_enrollments]
        if refused:
            raise IntegrityError(
                "; ".join(f"{s}: {self.refused_enrollments[s]}" for s in refused)
                + "; nothing was approved",
                hint="the site runs `fedrema init --site` against this workspace again",
            )
        unknown = [s for s in chosen if s not in enrolled]
        if unknown:
            raise UsageError(
                f"no enrollment for {', '.join(unknown)} "
                f"(enrolled: {', '.join(sorted(enrolled)) or 'none'})"
                + "".join(did_you_mean(u, enrolled) for u in unknown[:1])
            )
        not_listed = [s for s in remove if s not in listed]
        if not_listed:
            raise UsageError(
                f"cannot remove {', '.join(not_listed)}: not in the roster "
                f"({', '.join(sorted(listed)) or 'not approved yet'})"
            )
        both = sorted(set(remove) & set(chosen)) if sites else []  # `--all`: all but those
        if both:
            raise UsageError(f"{', '.join(both)} named both to approve and to remove")
        if sites is None:
            chosen = [s for s in chosen if s not in remove]
        keys = {s: enrolled[s].public for s in chosen}
        rotations: dict[str, PublicIdentity] = {}
        if current is not None:
            rotations, bad = exchange.pending_rotations(self.fed)
            self.refused_enrollments.update(bad)
        rotated = sorted(s for s in chosen if s in rotations and s not in remove)
        keys.update({s: rotations[s] for s in rotated})
        names = sorted((listed | set(chosen)) - set(remove))
        added = tuple(s for s in names if s not in listed)
        pending = {s for s in enrolled if s not in listed and s not in removed_before}
        left_out = tuple(sorted(pending - set(chosen)))
        if current is not None and not added and not remove and not rotated:
            return RosterChange(current, (), (), (), left_out, unchanged=True)
        if len(names) < 2:
            raise UsageError(
                f"a federation needs at least 2 sites, this roster would have {len(names)}",
                hint="each hospital runs `fedrema init --site NAME ...` first",
            )
        n = len(names)
        threshold = self.config.secagg.threshold or default_threshold(n)
        if threshold > n:
            raise ConfigError(
                f"secure-aggregation threshold {threshold} (set at init) exceeds the {n} sites "
                "this roster would have; nothing was changed"
            )
        nxt = max(ever.values(), default=0)
        index: dict[str, int] = {}
        for s in names:  # a site keeps its index for good; a new site gets the next unused
            if s in ever:
                index[s] = ever[s]
            else:
                nxt += 1
                index[s] = nxt
        old = {x.name: x for x in current.sites} if current else {}
        entries = []
        for s in names:
            pub = keys[s] if (s in added or s in rotated) else old[s].public
            entries.append(
                RosterSite(name=s, index=index[s], sign_pk=pub.sign_pk, seal_pk=pub.seal_pk)
            )
        entries.sort(key=lambda x: x.index)
        version = len(self.fed.rosters) + 1
        roster = Roster(
            federation_id=self.fed.id,
            threshold=threshold,
            approved_at=timestamp(),
            sites=tuple(entries),
            version=version,
            effective_from_round=1 if current is None else self._next_unstarted_round(),
            previous_sha256=None
            if current is None
            else self.fed.ws.raw_sha256(roster_base(version - 1)),
        )
        if self.config.secure:
            secure.check_parameters(self.config, roster)  # headroom etc. before anything is signed
        return RosterChange(
            roster, added, tuple(sorted(remove)), tuple(rotated), left_out, unchanged=False
        )

    def _next_unstarted_round(self) -> int:
        """The round a roster change takes effect in (`rounds.next_unstarted_round`)."""
        r = next_unstarted_round(self.fed)
        if r is None:
            raise UsageError(
                f"every round of {self.fed.id} has started ({self.config.rounds} rounds): "
                "a roster change has no round left to take effect in; nothing was changed"
            )
        return r

    def sign_roster(self, change: RosterChange) -> Roster:
        """Sign the planned roster version; the first one also opens round 1."""
        roster = change.roster
        if change.unchanged:
            return roster
        if roster.version == 1:
            self.fed.put(
                "model",
                1,
                {"round": 1, "created": timestamp()},
                attachments=model_attachment(
                    initial_params(self.config),
                    self.config,
                    np.random.default_rng([self.config.seed, 0, BROADCAST_STREAM]),
                ),
            )
        self.fed.ws.put(
            roster_base(roster.version),
            kind="roster",
            federation=self.fed.id,
            round=0,
            author=COORDINATOR,
            identity=self.fed.identity,
            body=roster.model_dump(mode="json"),
        )
        self.fed.rosters.append(roster)
        if roster.version == 1:
            self._open_round(1, Progress())
        return roster

    def approve(self, sites: list[str] | None = None, *, remove: tuple[str, ...] = ()) -> Roster:
        """Plan and sign in one step (no question asked): `plan_roster`, then `sign_roster`."""
        return self.sign_roster(self.plan_roster(sites, remove=remove))

    # -- moving rounds forward --------------------------------------------------------------

    def advance(self, *, close: bool = False) -> Progress:
        """Do every step possible now.

        ``close``: stop waiting for the sites missing from the phase that is open *now* (if
        at least t have acted); phases opened by this call wait for their sites as usual.
        """
        roster = self.fed.require_roster()
        progress = Progress()
        self._republish_model(progress)
        for step in range(4 * self.config.rounds + 4):  # bounded: each pass moves one phase
            r = current_round(self.fed)
            if r > self.config.rounds:
                break
            before = len(progress.events)
            self._step(r, roster, close and step == 0, progress)
            if len(progress.events) == before:
                break
        return progress

    def _opened_at(self, kind: str, r: int) -> str:
        """When the phase that ``kind`` (of round r) opened began; "roster": at approval."""
        if kind == "roster":
            return self.fed.require_roster().approved_at
        return opened_at(self.fed, kind, r)

    def _withdrawn(self, r: int, progress: Progress) -> dict[str, int]:
        """Site -> first round it is out of, for every signed withdrawal (`Turn` decides
        which phases of round r still wait for it).

        A withdrawal that fails its signature or schema is refused (reported, and the site
        is waited for as usual): only the site itself can take itself out.
        """
        out = {}
        for site in self.fed.withdrawn_sites():
            if site not in self._withdrawals:
                try:
                    self._withdrawals[site] = read_withdrawal(self.fed, site)
                except IntegrityError as exc:
                    self._withdrawals[site] = str(exc)
            notice = self._withdrawals[site]
            if isinstance(notice, str):
                progress.bad_withdrawals[site] = notice
            elif notice is not None:
                out[site] = notice.from_round
                if notice.from_round <= r:
                    progress.withdrawn[site] = notice.to_json()
        return out

    def _ready(self, t: Turn, opened_at: str, close: bool, what: str) -> bool:
        """Every expected site acted or withdrew, or the deadline passed; and t acted."""
        if t.missing:
            deadline = parse_time(opened_at) + dt.timedelta(
                seconds=self.config.round.timeout_seconds
            )
            if not close and utcnow() < deadline:
                return False
        roster = self.fed.roster_for(t.round)
        need = roster.threshold
        if len(t.acted) < need:
            left = sorted((set(t.expected) - set(t.acted)) & t.gone)
            hint = "wait for more sites and run `fedrema aggregate` again"
            if len(set(roster.names) - t.gone) < need:
                hint = (
                    "too few sites remain after withdrawals for this threshold: the federation "
                    "cannot go on; sites run `fedrema personalize` for their models so far"
                )
            raise ProtocolAbortedError(
                f"round {t.round}: only {len(t.acted)} of {len(t.expected)} sites {what} "
                f"(missing: {', '.join(sorted(t.missing)) or 'none'}"
                f"{'; withdrawn: ' + ', '.join(left) if left else ''}); "
                f"{'secure aggregation' if self.config.secure else 'a round'} needs at "
                f"least {need}",
                hint=hint,
            )
        return True

    def _acted(
        self, kind: str, r: int, progress: Progress, among: list[str] | None = None
    ) -> list[str]:
        """The sites whose ``kind`` file of round r is there *and* acceptable.

        A file that fails its signature or does not parse (damaged, forged, or from a site
        that misbehaves) counts as never sent, so one bad file cannot stall the round for
        everyone: the phase closes without that site, as for a site that dropped out, and
        the rejection is reported. Files are write-once, so the site rejoins next round.
        """
        acted, refused = [], {}
        for site in self.fed.sites_with(kind, r):
            if among is not None and site not in among:
                continue
            key = (kind, r, site)
            if key not in self._verdicts:  # write-once files: checked once per process
                try:
                    self._read(kind, r, site)
                    self._verdicts[key] = None
                except (IntegrityError, SecAggError) as exc:
                    self._verdicts[key] = str(exc)
            if (why := self._verdicts[key]) is None:
                acted.append(site)
            else:
                refused[site] = why
        progress.reject(r, kind, refused)
        return acted

    def _read(self, kind: str, r: int, site: str) -> None:
        """Read and check one site's file of round r, as the barrier that uses it will."""
        if kind == "submission":
            if self.config.secure:
                secure.read_message(self.fed, kind, r, site)
            elif METHODS[self.config.method].shared is not None:
                exchange.read_plain_update(self.fed, r, site)
            if read_body(self.fed, kind, r, SubmissionBody, site=site).sealed_head:
                exchange.open_head_for_coordinator(self.fed, r, site)
        else:
            secure.read_message(self.fed, kind, r, site)

    def _step(self, r: int, roster: Roster, close: bool, progress: Progress) -> None:
        phase = phase_of(self.fed, r)
        withdrawn = self._withdrawn(r, progress)
        if phase is Phase.DONE:
            return
        expected = expected_in(self.fed, r, phase)
        among = None if phase in (Phase.WAITING, Phase.KEYS) else list(expected)
        if phase is Phase.UNMASK and not self.fed.exists("key-roster", r + 1):
            self._open_round(r + 1, progress)  # a crash right after closing the round
        acted = self._acted(str(phase.evidence), r, progress, among=among)
        t = turn(self.fed, r, withdrawn=withdrawn, acted=acted, phase=phase)
        if phase is Phase.WAITING:
            opened = (
                self._opened_at("roster", 0)
                if r == 1
                else opened_at(self.fed, "unmask-request", r - 1)
            )
            if self._ready(t, opened, close, "advertised keys"):
                self._open_round(r, progress)
        elif phase is Phase.KEYS:
            if self._ready(t, opened_at(self.fed, "key-roster", r), close, "shared their keys"):
                self._fix_masking_roster(r, acted, progress)
        elif phase is Phase.COLLECT:
            if self._ready(t, opened_at(self.fed, "masking-roster", r), close, "submitted"):
                if self.config.secure:
                    self._request_unmasking(r, acted, list(expected), progress)
                else:
                    self._finalize(r, acted, progress)
        elif self._ready(t, opened_at(self.fed, "unmask-request", r), close, "revealed shares"):
            # A survivor's update is in the sum: it is waited for even if it withdrew since.
            self._finalize(r, list(expected), progress, revealed=acted)

    def _open_round(self, r: int, progress: Progress) -> None:
        """Round r can start: fix U1(r) (secure) or its participants (plaintext)."""
        if r > self.config.rounds:
            return
        roster = self.fed.roster_for(r)
        if not self.config.secure:
            self.fed.put(
                "masking-roster",
                r,
                {"round": r, "participants": list(roster.names), "opened_at": timestamp()},
            )
            progress.events.append(f"round {r}: open for updates from {len(roster.names)} sites")
            return
        if self.fed.exists("key-roster", r):
            return
        advertised = self._acted("key-advert", r, progress)
        if len(advertised) < roster.threshold:
            return  # too few adverts yet; the "waiting" phase retries with its deadline
        body, refused = secure.fix_key_roster(self.fed, r, advertised)
        progress.reject(r, "key-advert", refused)
        self.fed.put("key-roster", r, {**body, "opened_at": timestamp()})
        progress.events.append(f"round {r}: keys of {len(body['parties'])} sites fixed (U1)")

    def _fix_masking_roster(self, r: int, shared: list[str], progress: Progress) -> None:
        body, refused = secure.fix_masking_roster(self.fed, r, shared)
        progress.reject(r, "shares", refused)
        self.fed.put("masking-roster", r, {**body, "opened_at": timestamp()})
        progress.events.append(
            f"round {r}: open for masked updates from {len(body['participants'])} sites (U2)"
        )

    def _request_unmasking(
        self, r: int, submitted: list[str], expected: list[str], progress: Progress
    ) -> None:
        body, refused = secure.fix_survivors(self.fed, r, submitted)
        progress.reject(r, "submission", refused)
        self.fed.put("unmask-request", r, {**body, "opened_at": timestamp()})
        submitted = list(body["survivors"])
        dropped = sorted(set(expected) - set(submitted))
        note = f"; dropped: {', '.join(dropped)}" if dropped else ""
        progress.events.append(f"round {r}: {len(submitted)} updates in, unmasking requested{note}")
        self._open_round(r + 1, progress)

    def _finalize(
        self, r: int, survivors: list[str], progress: Progress, *, revealed: list[str] | None = None
    ) -> None:
        """Unmask and merge once, persist the outcome privately, then publish it.

        The outcome (new model, sealed merged heads, result, FedReMa's next state) is computed
        once and kept in the coordinator's state folder before anything is published, so a
        crash anywhere is repaired by running `aggregate` again: it republishes the identical
        files and commits the same merge state, never a second, different merge. It stays
        there, so a result later removed from the workspace (or replaced by a file that does
        not verify) is republished byte for byte.
        """
        plan = self._finalize_plan(r, survivors, revealed or [])
        # A later round already opened (its masking roster is signed) or finished: this is a
        # republication (round r's result in the workspace was removed or damaged), the merge
        # state has moved on since, and round r + 1 must not be opened a second time.
        latest = not (self.fed.exists("result", r + 1) or self.fed.exists("masking-roster", r + 1))
        # The merge state is committed before the result: once the result is out the round
        # counts as finished and is never finalized again, so a crash between the two would
        # lose the state for good (found by tests/cli/test_kill_sweep.py). Both writes are
        # idempotent: the plan, not this state, is what a re-run of round r merges from.
        state = plan.get("method_state", plan.get("fedrema_state"))
        if state is not None and latest:
            self.state.write_json(METHOD_STATE, state)
        if plan.get("merge_log") is not None and latest:
            log = [e for e in self.merge_log() if e["round"] != r] + [plan["merge_log"]]
            self.state.write_json(MERGE_LOG, log)
        self._publish_model(r, plan)
        self.fed.put("result", r, plan["result"])
        progress.events.extend(plan["events"])
        progress.finished.append(r)
        if not latest:
            return
        if self.config.secure:
            if r < self.config.rounds and self.fed.exists("key-roster", r + 1):
                shared = self._acted("shares", r + 1, progress)
                if len(shared) >= self.fed.roster_for(r + 1).threshold:
                    self._fix_masking_roster(r + 1, shared, progress)
        else:
            self._open_round(r + 1, progress)

    def clear_stale_temporaries(self) -> int:
        """What killed writes left in a local workspace (any party's `.NAME.<hex>.tmp`, stale
        for 60 s, so never a write in flight); remote stores clean up on connecting. Once per
        `aggregate`, not per poll of `--wait`: it walks the whole folder."""
        storage = self.fed.ws.storage
        return storage.remove_stale_temporaries() if isinstance(storage, LocalStorage) else 0

    def _publish_model(self, r: int, plan: dict[str, Any]) -> None:
        """Round r's outcome for round r + 1: the model and each site's sealed head."""
        self.fed.put(
            "model",
            r + 1,
            plan["model_body"],
            attachments={PARAMS: unb64(plan["model_params"], what="pending model")},
        )
        for site, body in plan["heads"].items():
            self.fed.put("head", r + 1, body, site=site)

    def _republish_model(self, progress: Progress) -> None:
        """The current round's model is gone from the workspace, or replaced by a file that
        does not verify (a restore from backup, a hand copy): every site would wait for it
        for ever. Publish it again, byte for byte, from the outcome kept in this state."""
        r = current_round(self.fed)
        if not 2 <= r <= self.config.rounds or self.fed.exists("model", r):
            return
        if not self.state.exists(_outcome(r - 1)):
            return
        self._publish_model(r - 1, dict(self.state.read_json(_outcome(r - 1))))
        progress.events.append(f"round {r}: its model was missing or damaged; published again")

    def _finalize_plan(self, r: int, survivors: list[str], revealed: list[str]) -> dict[str, Any]:
        """Read round r's inputs, let the method aggregate them (pure), seal what goes back."""
        if self.state.exists(_outcome(r)):
            return dict(self.state.read_json(_outcome(r)))
        method = self.config.method_impl()
        model = read_model(self.fed, r)
        summed, total_weight = None, 0.0
        if method.shared is not None:
            if self.config.secure:
                summed, total_weight = secure.unmask_sum(self.fed, r, revealed)
            else:
                summed, total_weight = exchange.plain_sum(self.fed, r, survivors)
        personal = {
            s: exchange.open_head_for_coordinator(self.fed, r, s)
            for s in survivors
            if read_body(self.fed, "submission", r, SubmissionBody, site=s).sealed_head
        }
        inputs = RoundInputs(
            round=r,
            model=model,
            summed=summed,
            total_weight=total_weight,
            personal=personal,
            sites=self.fed.roster_for(r).names,
            survivors=tuple(survivors),
            spec=self.config.model,
            rng=np.random.default_rng([self.config.seed, r]),
        )
        state = self.method_state()
        try:
            outcome = method.aggregate(inputs, state)
        except ValueError as exc:  # inputs that passed every check but cannot be merged
            raise IntegrityError(f"round {r}: {method.name} cannot aggregate: {exc}") from None
        try:  # a method's state and log are kept as JSON: say whose they are if they are not
            json.dumps({"state": outcome.state, "log": outcome.log}, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"method {method.name}: Outcome.state and .log must be plain JSON (lists and "
                f"numbers; use .tolist() for arrays): {exc}"
            ) from exc
        expected = self._expected(r)
        events = [
            f"round {r}: finished with {len(survivors)} sites"
            + (f" (total weight {total_weight:.0f})" if total_weight else ""),
            *(f"round {r}: {e}" for e in outcome.events),
        ]
        plan = {
            "model_body": {"round": r + 1, "created": timestamp()},
            "model_params": b64(
                model_attachment(
                    outcome.model,
                    self.config,
                    np.random.default_rng([self.config.seed, r, BROADCAST_STREAM]),
                )[PARAMS]
            ),
            "heads": {
                site: exchange.sealed_head_body(self.fed, r + 1, site, save_params(part))
                for site, part in outcome.personal.items()
                if site in self.fed.roster_for(r + 1).names  # removed from r+1: no head
            },
            "result": {
                "round": r,
                "method": method.name,
                "expected": expected,
                "survivors": survivors,
                "dropped": sorted(set(expected) - set(survivors)),
                "secure_aggregation": self.config.secure,
                "finished_at": timestamp(),
                **outcome.info,
            },
            "method_state": outcome.state,
            "merge_log": outcome.log,
            "events": events,
        }
        self.state.write_json(_outcome(r), plan)
        return plan

    def method_state(self) -> dict[str, Any] | None:
        """What the method kept from the last round (``fedrema-state.json``: before methods
        had a state of their own, only FedReMa kept one, under that name)."""
        for name in (METHOD_STATE, LEGACY_FEDREMA_STATE):
            if self.state.exists(name):
                return dict(self.state.read_json(name))
        return None

    def _expected(self, r: int) -> list[str]:
        return list(participants(self.fed, r))

    # -- status -----------------------------------------------------------------------------

    def current_round(self) -> int:
        return current_round(self.fed)

    def complete(self) -> bool:
        return self.fed.roster is not None and self.current_round() > self.config.rounds

    def waiting_for(self) -> str:
        from fedrema_cli.protocol.status import round_status

        status = round_status(self.fed)
        if status.complete:
            return "nothing (federation complete)"
        if status.phase == "enrolling":
            return "approval of the enrolled sites (`fedrema approve`)"
        who = ", ".join(status.missing) or "nobody"
        return f"round {status.round}: {who} to {status.action}"

    def merge_log(self) -> list[dict[str, Any]]:
        return self.state.read_json(MERGE_LOG) if self.state.exists(MERGE_LOG) else []
