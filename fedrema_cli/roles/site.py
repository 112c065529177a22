"""A hospital: joins a federation, trains on its own data, submits, reveals, personalizes.

Raw data never leaves this folder's data paths. What leaves is: the masked shared-model
update (summed by secure aggregation), the classifier head sealed to the coordinator (FedReMa
only), SecAgg key material, and signed copies of privacy-ledger entries.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np

from crypto.canonical import canonical_json
from fedrema_cli.config import FederationConfig, finetune_rounds
from fedrema_cli.data.tables import (
    ImageSchema,
    Standardizer,
    TabularSchema,
    fingerprint,
    load_npz,
    load_table,
)
from fedrema_cli.errors import BUDGET_SPENT, ConfigError, IntegrityError, UsageError
from fedrema_cli.identity import unb64
from fedrema_cli.learning.params import Params, load_params, params_hash, part_of, save_params
from fedrema_cli.methods import METHODS
from fedrema_cli.protocol import exchange
from fedrema_cli.protocol import secagg as secure
from fedrema_cli.protocol.rounds import (
    Withdrawal,
    current_round,
    derive_seed,
    phase_of,
    read_model,
    read_withdrawal,
    timestamp,
)
from fedrema_cli.store.envelope import sha256
from fedrema_cli.store.federation import ROSTER, Federation, read_federation, round_number
from fedrema_cli.store.state import PartyState
from fedrema_cli.store.storage import lasting_location
from fedrema_cli.store.workspace import SITE_NAME, Workspace

META = "site.json"
LEDGER = "ledger.jsonl"
ACCOUNTANT = "accountant.json"
FINGERPRINT_KEY = "ledger-fingerprint-key.json"


def _trained(r: int) -> str:
    return f"rounds/{r:04d}/trained.safetensors"


def _record(r: int) -> str:
    return f"rounds/{r:04d}/training.json"


@dataclass(frozen=True)
class SiteData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    standardizer: Standardizer | None
    train_fingerprint: str


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _exclusive(method: Callable[Concatenate[Site, _P], _R]) -> Callable[Concatenate[Site, _P], _R]:
    """Run a site command holding its state folder (see `PartyState.exclusive`)."""

    @functools.wraps(method)
    def held(self: Site, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self.state.exclusive():
            return method(self, *args, **kwargs)

    return held


@dataclass
class Actions:
    """What a `submit` did and what the site waits for next."""

    done: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)


class Site:
    """One site, bound to its private state folder."""

    #: Set only by `fedrema simulate`: DP noise replayable from the simulation's seed, so a
    #: simulated result can be reproduced. Never set for a real site (no option reaches it).
    simulated_noise: bool = False

    def __init__(self, state_dir: str | Path, *, workspace: str | None = None) -> None:
        self.state = PartyState(state_dir)
        if not self.state.exists(META):
            raise ConfigError(
                f"{state_dir} is not a site state folder",
                hint="create one with `fedrema init --site NAME ...`",
            )
        self.meta = self.state.read_meta(
            META, {"site": str, "workspace": str, "federation_sha256": str, "data": dict}
        )
        if not isinstance(self.meta["data"].get("train"), str):
            raise ConfigError(
                f"{self.state.root / META} is damaged (edited by hand?): no training data path",
                hint="restore this state folder from its backup",
            )
        ws = Workspace.open(workspace or self.meta["workspace"])
        config, digest = read_federation(ws)
        if digest != self.meta["federation_sha256"]:
            raise IntegrityError(
                f"{ws.describe()}/federation.json differs from the one this site "
                "pinned when it joined (replaced, or another federation's workspace); "
                "refusing to continue"
            )
        self.name: str = self.meta["site"]
        self.fed = Federation(ws, config, me=self.name, identity=self.state.identity())
        roster = self.fed.load_roster(pinned_sha256=self.meta.get("roster_sha256"))
        #: The coordinator signed a roster without this site: only `status` has anything to say.
        self.left_out = roster is not None and self.name not in roster.names
        if roster is not None and "roster_sha256" not in self.meta and not self.left_out:
            self.meta["roster_sha256"] = self.fed.ws.raw_sha256("roster")
            self.state.write_json(META, self.meta)

    def _not_admitted(self) -> ConfigError:
        return ConfigError(
            f"the coordinator's roster does not include {self.name}",
            hint="ask the coordinator; sites cannot join a running federation yet",
        )

    def _require_admitted(self) -> None:
        """The roster is signed (else: wait for it) and lists this site (else: ask)."""
        self.fed.require_roster()
        if self.left_out:
            raise self._not_admitted()

    # -- joining ----------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        *,
        workspace: str,
        state_dir: str | Path,
        name: str,
        train: str | Path,
        test: str | Path | None,
        coordinator_fingerprint: str | None = None,
    ) -> Site:
        """Check the data against the federation's schema, make keys, and ask to join."""
        if not SITE_NAME.fullmatch(name):
            raise UsageError(
                f"site name {name!r} is not allowed: use 1-63 lowercase letters, "
                "digits, '.', '_' or '-', starting with a letter or digit"
            )
        state = PartyState(state_dir)
        ws = Workspace.open(workspace)
        if state.exists(META):
            meta = state.read_json(META)
            if meta.get("site") == name and not ws.exists(f"enrollments/{name}"):
                return cls._finish_enrollment(ws, state, state_dir, meta)
            raise UsageError(
                f"{state_dir} already holds site {meta.get('site')!r}; nothing was changed"
            )
        from fedrema_cli.roles.coordinator import META as COORDINATOR_META

        if state.exists(COORDINATOR_META):
            raise UsageError(
                f"{state_dir} is the coordinator's state folder; a site needs a folder of "
                "its own; nothing was changed",
                hint="give --state a new folder",
            )
        config, digest = read_federation(ws, expect_fingerprint=coordinator_fingerprint)
        if ws.exists(ROSTER):
            raise UsageError(
                f"{config.federation_id} is already running (its roster is approved); "
                "sites cannot join a running federation yet; nothing was changed",
                hint="ask the coordinator",
            )
        if ws.exists(f"enrollments/{name}"):
            raise UsageError(
                f"a site named {name!r} has already enrolled in {config.federation_id}",
                hint="pick another --site name",
            )
        paths = {
            "train": str(Path(train).resolve()),
            "test": str(Path(test).resolve()) if test else None,
        }
        _load_data(config, paths)  # fails with file/line/column before anything is written
        identity = state.create_identity()
        state.write_json(
            META,
            {
                "format": "fedrema-site/1",
                "site": name,
                "workspace": lasting_location(workspace),
                "federation_id": config.federation_id,
                "federation_sha256": digest,
                "data": paths,
            },
        )
        exchange.write_enrollment(
            ws,
            federation_id=config.federation_id,
            federation_sha256=digest,
            site=name,
            identity=identity,
        )
        return cls(state_dir)

    @classmethod
    def _finish_enrollment(
        cls, ws: Workspace, state: PartyState, state_dir: str | Path, meta: dict[str, Any]
    ) -> Site:
        """A re-run of an `init --site` whose enrollment never reached the workspace."""
        config, digest = read_federation(ws)
        if digest != meta.get("federation_sha256") or ws.exists(ROSTER):
            raise UsageError(
                f"{state_dir} joined another federation, or this one is already running; "
                "nothing was changed"
            )
        exchange.write_enrollment(
            ws,
            federation_id=config.federation_id,
            federation_sha256=digest,
            site=meta["site"],
            identity=state.identity(),
        )
        return cls(state_dir)

    @property
    def config(self) -> FederationConfig:
        return self.fed.config

    def data(self) -> SiteData:
        return _load_data(self.config, self.meta["data"])

    # -- training ---------------------------------------------------------------------------

    @_exclusive
    def train_local(self) -> dict[str, Any]:
        """Train this round's update (once per round) and keep it here until `submit`.

        With a privacy policy the order is what makes a crash harmless: the budget gate runs
        before any training; the trained update and the ledger body are saved privately, then
        the ledger entry is appended (a re-run appends a missing one), and only then can
        `submit` release anything.
        """
        self._require_admitted()
        repaired = self._repair_ledger()
        ledger = self._sync_ledger()
        r = current_round(self.fed)
        if r > self.config.rounds:
            raise UsageError(
                f"the federation finished its {self.config.rounds} rounds",
                hint="run `fedrema personalize` to get your model",
            )
        self._require_active(r)
        if self.state.exists(_record(r)):
            if repaired:  # the previous run was cut off after training: it is now complete
                return {**self.state.read_json(_record(r)), "completed_after_crash": True}
            raise UsageError(
                f"already trained for round {r}; a round trains once", hint="`fedrema submit`"
            )
        if not self.fed.exists("model", r):
            raise UsageError(f"round {r} has not started yet", hint="wait for the coordinator")
        self._check_participant(r)
        return self._train_round(r, self._start_params(r), ledger)

    def _train_round(
        self, r: int, start: Params, ledger: Any, *, head_only: bool = False
    ) -> dict[str, Any]:
        """One round of local training from ``start``, recorded privately (and in the ledger).

        ``head_only``: fine-tuning after the last round; the extractor is frozen and only the
        head's gradients are clipped, noised and accounted, exactly like a federated round.
        """
        from fedrema_cli.learning.models import build_model, get_part, set_part
        from fedrema_cli.learning.training import (
            PrivateRun,
            Proximal,
            finetune_head,
            fit_majority,
            train_local,
        )

        data = self.data()
        method = self.config.method_impl()
        trains = method.trains
        lam = None if head_only else method.proximal()
        extra = {} if lam is None else {"proximal": Proximal(lam, read_model(self.fed, r))}
        private = (
            self._privacy_gate(ledger, r, len(data.y_train))
            if self.config.privacy and trains
            else None
        )
        model = build_model(self.config.model, seed=self.config.seed)
        set_part(model, "all", start)
        seed = derive_seed(self.config.federation_id, self.config.seed, self.name, r)
        dp_record = None
        if trains:
            model, result, dp_record = (finetune_head if head_only else train_local)(
                model,
                data.x_train,
                data.y_train,
                config=self.config.training,
                seed=seed,
                private=private,
                replayable_noise_seed=(
                    derive_seed(seed, "dp-noise") if self.simulated_noise else None
                ),
                **extra,
            )
        else:  # majority class: no gradient step, nothing leaves the site, nothing to account
            result = fit_majority(model, data.y_train, num_classes=self.config.model.num_classes)
        trained = get_part(model, "all")
        record: dict[str, Any] = {
            "round": r,
            "steps": result.steps,
            "examples": result.examples,
            "mean_loss": result.mean_loss,
            "start_hash": params_hash(start),
            "trained_hash": params_hash(trained),
            "data_fingerprint": data.train_fingerprint,
            "trained_at": timestamp(),
        }
        if head_only:
            record["finetune"] = True
        if private is not None:
            assert dp_record is not None and isinstance(private, PrivateRun)
            body = self._ledger_body(dp_record, private, r, record)
            record["ledger_body"] = body.model_dump(mode="json")
            record["privacy"] = {
                "epsilon_after": body.epsilon_after,
                "delta": body.delta,
                "target_epsilon": body.target_epsilon,
                "noise_multiplier": body.noise_multiplier,
                "sample_rate": body.sample_rate,
            }
        # The record is the commit marker: a crash before it leaves an unreleased update that
        # the next run simply trains again and overwrites.
        self.state.write_bytes(_trained(r), save_params(trained))
        self.state.write_once(_record(r), _json_bytes(record))
        if private is not None:
            self._sync_ledger()
            self.state.write_json(ACCOUNTANT, private.accountant.state_dict())
        return record

    def _finetuned(self, start: Params) -> Params:
        """The deployable model after ``finetune_rounds`` head-only rounds on local data.

        Runs once, after the federation's last round; the rounds are numbered after it
        (rounds + 1, ...), kept like any trained round, and under DP each one passes the budget
        gate and is appended to the ledger (the policy plans them). A re-run reuses them.
        """
        params = start
        for r in range(self.config.rounds + 1, self.config.rounds + 1 + self._finetune_rounds()):
            if not self.state.exists(_record(r)):
                self._train_round(r, params, self._sync_ledger(), head_only=True)
            params = load_params(self.state.read_bytes(_trained(r)))
        return params

    def _finetune_rounds(self) -> int:
        return finetune_rounds(self.config)

    # -- privacy ----------------------------------------------------------------------------

    def _verify_own(self, signature: bytes, message: bytes) -> None:
        import crypto

        crypto.verify_signature(
            unb64(self.fed.identity.public.sign_pk, what="own key"), signature, message
        )

    def _ledger(self) -> Any:
        """This site's verified privacy ledger; a line torn by a crash is cut off."""
        from privacy import load_verified

        text = read_ledger_text(self.state)
        parsed = load_verified(
            text, verify=self._verify_own, site=self.name, federation=self.config.federation_id
        )
        if parsed.torn_tail is not None:
            self.state.write_bytes(LEDGER, parsed.committed_text.encode("utf-8"))
        return parsed

    def _repair_ledger(self) -> bool:
        """Finish what a crashed `train-local` left undone; True if anything was missing.

        Missing: a trained round's ledger entry (appended), its published copy, or the cached
        accountant state (rewritten from the ledger, which is the source of truth).
        """
        if self.config.privacy is None:
            return False
        before = self._ledger_state()
        parsed = self._sync_ledger()
        from privacy import restore_accountant

        cached = self.state.read_json(ACCOUNTANT) if self.state.exists(ACCOUNTANT) else None
        # The cached state is the anchor that shows a ledger lost its last entries: reconcile
        # it (LedgerIntegrityError if it holds more spend) before replacing it.
        accountant = restore_accountant(
            entries=list(parsed.entries),
            mechanism=self.config.privacy.accountant,
            cached_state=cached,
        )
        if cached != (state := accountant.state_dict()):
            self.state.write_json(ACCOUNTANT, state)
            return True
        return before != self._ledger_state()

    def _ledger_state(self) -> tuple[bytes, int]:
        """What the ledger repair can change: the ledger file and the published entries."""
        text = self.state.read_bytes(LEDGER) if self.state.exists(LEDGER) else b""
        published = len(self.fed.ws.names(f"ledger/{self.name}")) if self.fed.roster else 0
        return text, published

    def _sync_ledger(self) -> Any:
        """Append any trained round missing from the ledger, publish entries not yet shared."""
        if self.config.privacy is None:
            return None
        from privacy import LedgerBody, LedgerIntegrityError, encode_line, make_entry

        parsed = self._ledger()
        entries = list(parsed.entries)
        recorded = {e.round for e in entries}
        for name in self.state.list("rounds"):
            r = round_number(name)
            if r is None or r in recorded or not self.state.exists(_record(r)):
                continue
            record = self.state.read_json(_record(r))
            if "ledger_body" not in record:  # nothing was trained (majority class): no spend
                continue
            body = LedgerBody.model_validate(record["ledger_body"], strict=False)
            entry = make_entry(entries[-1] if entries else None, body, self.fed.identity.sign)
            text = (parsed.committed_text if entries else "") + encode_line(entry)
            self.state.write_bytes(LEDGER, text.encode("utf-8"))
            parsed = self._ledger()
            entries = list(parsed.entries)
        if self.fed.roster is not None:
            lost = self.published_not_in(entries)
            if lost:  # published only after the local append, so the local ledger lost them
                raise LedgerIntegrityError(
                    f"this site published ledger entries for rounds {lost} that its own "
                    "ledger no longer has: their spend would be forgotten",
                    hint=f"restore {LEDGER} (and rounds/) from a backup; the workspace's "
                    f"ledger/{self.name}/ holds signed copies of the entries",
                )
            unrecorded = self.unrecorded_rounds(entries)
            if unrecorded:  # the ledger, its copies and the cache are gone: results remain
                raise LedgerIntegrityError(
                    f"the coordinator's signed round results show {self.name}'s update in "
                    f"rounds {unrecorded}, which its ledger does not record: starting again "
                    "would under-report its privacy spend",
                    hint=f"restore {LEDGER} and {ACCOUNTANT} (and rounds/) from a backup",
                )
            for entry in entries:
                if not self.fed.exists("ledger-entry", entry.round, site=self.name):
                    self.fed.put("ledger-entry", entry.round, entry.model_dump(mode="json"))
        return parsed

    def _privacy_gate(self, ledger: Any, r: int, n: int) -> Any:
        """Plan the round for this site's data size and refuse it if it would cross the budget."""
        from fedrema_cli.learning.training import PrivateRun
        from privacy import (
            RoundPlan,
            check_round,
            ensure_round_not_recorded,
            plan_round,
            restore_accountant,
        )

        policy = self.config.privacy
        assert policy is not None
        cached = self.state.read_json(ACCOUNTANT) if self.state.exists(ACCOUNTANT) else None
        accountant = restore_accountant(
            entries=list(ledger.entries), mechanism=policy.accountant, cached_state=cached
        )
        ensure_round_not_recorded(ledger, round=r)
        path = self._plan_path(n)
        cached_plan = self.state.exists(path)
        plan = (
            RoundPlan.model_validate(self.state.read_json(path))
            if cached_plan
            else plan_round(policy, dataset_size=n)
        )
        check_round(accountant, plan, policy, round=r)  # refused: nothing has been written
        if not cached_plan:
            self.state.write_json(path, plan.model_dump(mode="json"))
        return PrivateRun(plan=plan, accountant=accountant)

    def _plan_path(self, n: int) -> str:
        """Where the policy's plan for n records is kept: planning the noise takes seconds.

        The plan is a pure function of (policy, n) and the name is a hash of both, so a
        changed dataset size or policy gets a fresh plan.
        """
        policy = self.config.privacy
        assert policy is not None
        key = sha256(canonical_json({"policy": policy.model_dump(mode="json"), "n": n}))[:16]
        return f"plans/{key}.json"

    def _ledger_body(self, dp_record: Any, private: Any, r: int, record: dict[str, Any]) -> Any:
        from privacy import body_from_record

        policy = self.config.privacy
        assert policy is not None
        return body_from_record(
            dp_record,
            accountant=private.accountant,
            delta=policy.delta,
            target_epsilon=policy.target_epsilon,
            federation=self.config.federation_id,
            site=self.name,
            round=r,
            dataset_fingerprint=self._ledger_fingerprint(record["data_fingerprint"]),
            model_hashes={"start": record["start_hash"], "trained": record["trained_hash"]},
            timestamp=record["trained_at"],
        )

    def _ledger_fingerprint(self, file_sha256: str) -> str:
        """The dataset fingerprint the ledger records, and so publishes to the workspace.

        HMAC-SHA256 of the training file's SHA-256 under a key that never leaves this site.
        The plain file hash is a deterministic function of the patient records, outside
        DP-SGD's guarantee: anyone holding a candidate copy of the data (all records but one,
        in DP's threat model) could test it exactly. The site's DPO re-derives it with the key.
        """
        import hashlib
        import hmac
        import os

        if not self.state.exists(FINGERPRINT_KEY):
            self.state.write_json(FINGERPRINT_KEY, {"hmac_sha256_key": os.urandom(32).hex()})
        key = bytes.fromhex(self.state.read_json(FINGERPRINT_KEY)["hmac_sha256_key"])
        return hmac.new(key, bytes.fromhex(file_sha256), hashlib.sha256).hexdigest()

    def published_not_in(self, entries: Any) -> list[int]:
        """Rounds this site published a ledger entry for that ``entries`` lack.

        Entries are published only after the local append, so any such round means the local
        ledger lost its last entries (a shorter chain still verifies on its own).
        """
        recorded = {e.round for e in entries}
        return [r for r in self.fed.ledger_rounds(self.name) if r not in recorded]

    def unrecorded_rounds(self, entries: Any) -> list[int]:
        """Rounds whose signed result counts this site's update but ``entries`` lack.

        The coordinator's results are evidence the site cannot erase: deleting its ledger,
        accountant, published copies and trained rounds would otherwise let it start again
        at a lower epsilon than it really spent.
        """
        if not METHODS[self.config.method].trains:
            return []
        recorded = {e.round for e in entries}
        return [
            k
            for k in range(1, current_round(self.fed))
            if k not in recorded
            and self.fed.exists("result", k)
            and self.name in self.fed.get("result", k).body.get("survivors", [])
        ]

    def epsilon_spent(self) -> float | None:
        """Record-level epsilon this site has spent so far, from its ledger (None without DP)."""
        if self.config.privacy is None:
            return None
        entries = list(self._ledger().entries)
        return float(entries[-1].epsilon_after) if entries else 0.0

    def budget_refusal(self, r: int) -> Any:
        """The BudgetExceededError `train-local` would raise for round r, or None."""
        from privacy import BudgetExceededError

        if self.config.privacy is None or not METHODS[self.config.method].trains:
            return None
        ledger = self._ledger()
        if not ledger.entries:  # nothing spent yet: the policy's plan fits the budget
            return None
        try:
            self._privacy_gate(ledger, r, len(self.data().y_train))
        except BudgetExceededError as exc:
            return exc
        return None

    def _check_participant(self, r: int) -> None:
        if not self.config.secure:
            return
        closed = self.fed.exists("unmask-request", r)
        if closed and self.name not in self.fed.get("unmask-request", r).body["survivors"]:
            raise UsageError(
                f"round {r} was closed without {self.name}'s update; training for it now "
                "would spend privacy budget on an update that can no longer be sent",
                hint="run `fedrema submit` to rejoin a later round",
            )
        for kind, field_name in (("masking-roster", "participants"), ("key-roster", "parties")):
            if self.fed.exists(kind, r):
                members = self.fed.get(kind, r).body[field_name]
                if self.name not in members:
                    raise UsageError(
                        f"{self.name} is not part of round {r}'s secure aggregation (it missed "
                        "the previous round's key exchange)",
                        hint="run `fedrema submit` to advertise keys; you rejoin in a later round",
                    )
                return

    def _latest_own(self, before: int) -> Params | None:
        for k in range(before - 1, 0, -1):
            if self.state.exists(_trained(k)):
                return load_params(self.state.read_bytes(_trained(k)))
        return None

    def _start_params(self, r: int) -> Params:
        """What round r trains from: the method's choice among the global model, this site's
        own latest model and the part the coordinator sealed back to it."""
        method = self.config.method_impl()
        received = exchange.open_head_for_site(self.fed, r) if method.personal else None
        return method.start(read_model(self.fed, r), own=self._latest_own(r), received=received)

    # -- submitting -------------------------------------------------------------------------

    @_exclusive
    def submit(self) -> Actions:
        """Do every protocol step this site can do now (idempotent; safe to re-run)."""
        self._require_admitted()
        self._sync_ledger()  # an update leaves only once its privacy spend is on record
        actions = Actions()
        r = current_round(self.fed)
        if self.complete():
            secure.forget_secrets(self.state, before=r)  # the last rounds' secrets too
            actions.waiting.append("nothing: the federation is complete; run `fedrema personalize`")
            return actions
        self._require_active(r)
        if self.config.secure:
            secure.site_steps(self, r, actions)
        else:
            self._submit_plain(r, actions)
        return actions

    def trained_update(self, r: int) -> tuple[np.ndarray, float, Params] | None:
        """(delta of the shared part, weight n, trained params) if round r was trained here."""
        if not self.state.exists(_record(r)):
            return None
        record = self.state.read_json(_record(r))
        trained = load_params(self.state.read_bytes(_trained(r)))
        part = METHODS[self.config.method].shared
        weight = float(record["examples"])
        if part is None:
            return np.zeros(0), weight, trained
        start = read_model(self.fed, r)
        delta = exchange.shared_vector(trained, part) - exchange.shared_vector(start, part)
        return delta, weight, trained

    def submission_body(self, r: int, trained: Params) -> dict[str, Any]:
        body: dict[str, Any] = {"round": r, "method": self.config.method}
        personal = METHODS[self.config.method].personal
        if personal is not None:
            body["sealed_head"] = exchange.seal_head_for_coordinator(
                self.fed, r, save_params(part_of(trained, personal))
            )
        return body

    def _submit_plain(self, r: int, actions: Actions) -> None:
        if self.fed.exists("submission", r, site=self.name):
            actions.waiting.append(f"round {r}: the coordinator to aggregate")
            return
        if not self.fed.exists("masking-roster", r):
            actions.waiting.append(f"round {r}: the coordinator to open the round")
            return
        update = self.trained_update(r)
        if update is None:
            actions.waiting.append(f"round {r}: run `fedrema train-local` first")
            return
        delta, weight, trained = update
        attachments = (
            exchange.plain_update(weight * delta, weight)
            if METHODS[self.config.method].shared
            else {}
        )
        self.fed.put("submission", r, self.submission_body(r, trained), attachments=attachments)
        actions.done.append(f"round {r}: update submitted (plaintext; secure aggregation is off)")
        actions.waiting.append(f"round {r}: the coordinator to aggregate")

    # -- withdrawing ------------------------------------------------------------------------

    def withdrawal(self) -> Withdrawal | None:
        """This site's withdrawal notice. A file in its place that does not verify as one
        (damaged, or written by someone else) is no withdrawal: the coordinator refuses it
        too, so the site goes on as before; `withdraw` reports it."""
        try:
            return read_withdrawal(self.fed, self.name)
        except IntegrityError:
            return None

    def last_round(self) -> int:
        """The last round this site takes part in: the federation's, or the one before its
        withdrawal (or the withdrawal's own round, if the site's update is in that sum)."""
        w = self.withdrawal()
        if w is None:
            return self.config.rounds
        in_sum = self.fed.exists("submission", w.from_round, site=self.name)
        return min(self.config.rounds, w.from_round if in_sum else w.from_round - 1)

    def _require_active(self, r: int) -> None:
        if r > self.last_round():
            w = self.withdrawal()
            assert w is not None
            # Every round this site took part in has its result: no secret is needed now.
            secure.forget_secrets(self.state, before=self.config.rounds + 1)
            raise UsageError(
                f"{self.name} withdrew from the federation from round {w.from_round} on "
                f"({w.reason}); it sends nothing more",
                hint="`fedrema personalize` builds this site's model from the rounds so far",
            )

    @_exclusive
    def withdraw(
        self, reason: str | None = None, *, dry_run: bool = False
    ) -> tuple[Withdrawal, bool]:
        """Post a signed notice that this site takes part in no further round; (notice, new?).

        The coordinator then stops waiting for it instead of waiting out every phase's
        deadline. A round whose sum already holds this site's masked update still needs its
        unmasking shares, so then the withdrawal starts with the next round and `submit`
        finishes the current one. Irreversible: the federation goes on without this site.
        ``dry_run``: check and return the notice without posting it.
        """
        self._require_admitted()
        if self.fed.exists("withdrawal", 0, site=self.name):
            try:
                existing = read_withdrawal(self.fed, self.name)
            except IntegrityError as exc:
                raise IntegrityError(
                    f"withdrawals/{self.name}.json is there but is not {self.name}'s signed "
                    f"notice ({exc}); nobody treats it as a withdrawal",
                    hint="have whoever runs the storage remove that file, then withdraw again",
                ) from None
            assert existing is not None
            if not dry_run:  # a run cut off between posting and forgetting: finish it
                last = self.last_round()
                secure.forget_secrets(self.state, start=last + 1, before=self.config.rounds + 1)
            return existing, False
        r = current_round(self.fed)
        if r > self.config.rounds:
            raise UsageError(
                "the federation is complete: there is nothing to withdraw from",
                hint="run `fedrema personalize` to get your model",
            )
        if reason is None:
            spent = not self.trained(r) and self.budget_refusal(r) is not None
            reason = "privacy budget spent" if spent else "withdrawn by the site operator"
        if not reason.strip() or len(reason) > 200 or not reason.isprintable():
            raise UsageError("the reason must be one printable line of at most 200 characters")
        in_sum = self.fed.exists("submission", r, site=self.name)
        notice = Withdrawal(self.name, r + 1 if in_sum else r, reason, timestamp())
        if dry_run:
            return notice, True
        self.fed.put("withdrawal", 0, notice.to_json())
        # Keys made for rounds this site will not join protect nothing now.
        secure.forget_secrets(self.state, start=notice.from_round, before=self.config.rounds + 1)
        return notice, True

    def reveals_before_leaving(self, notice: Withdrawal) -> bool:
        """Whether one more `submit` is owed: a withdrawal round's sum holds this update."""
        r = notice.from_round - 1
        if not self.config.secure or r < 1 or current_round(self.fed) != r:
            return False
        if self.fed.exists("reveal", r, site=self.name):
            return False
        closed = self.fed.exists("unmask-request", r)
        return not closed or self.name in self.fed.get("unmask-request", r).body["survivors"]

    # -- personalizing ----------------------------------------------------------------------

    def personalized_params(self) -> tuple[Params, int]:
        """The model this site would deploy now, and the last finished round it reflects.

        Methods that fine-tune (FedAvg + fine-tuning) train the head on local data once the
        federation is complete; before that, the model is the one the next round starts from.
        """
        r = current_round(self.fed)
        last = r - 1
        if last < 1:
            raise UsageError("no round has finished yet", hint="see `fedrema status`")
        params = self._start_params(r)
        if last >= self.config.rounds and self._finetune_rounds():
            params = self._finetuned(params)
        return params, last

    @_exclusive
    def personalize(self, export: str | Path | None = None) -> dict[str, Any]:
        from fedrema_cli.learning.models import build_model, set_part
        from fedrema_cli.learning.training import evaluate

        # A run cut off after training a round but before its ledger append (here: the last
        # fine-tuning round) must not export that model before its spend is on record.
        self._require_admitted()
        self._repair_ledger()
        params, last = self.personalized_params()
        secure.forget_secrets(self.state, before=last + 1)  # finished rounds need no secrets
        data = self.data()
        model = build_model(self.config.model, seed=self.config.seed)
        set_part(model, "all", params)
        metrics = None
        if data.x_test is not None:
            metrics = evaluate(
                model, data.x_test, data.y_test, num_classes=self.config.model.num_classes
            )
        out: dict[str, Any] = {
            "site": self.name,
            "federation": self.config.federation_id,
            "method": self.config.method,
            "after_round": last,
            "complete": last >= self.config.rounds,
            "model_hash": params_hash(params),
            "metrics": metrics.to_json() if metrics else None,
        }
        if export is not None:
            from fedrema_cli.roles.export import export_model

            out["exported"] = export_model(
                Path(export),
                params=params,
                config=self.config,
                standardizer=data.standardizer,
                card=out,
            )
        return out

    # -- status -----------------------------------------------------------------------------

    def complete(self) -> bool:
        """Every round of the federation has finished: nothing is left to send, ever."""
        return current_round(self.fed) > self.config.rounds

    def trained(self, r: int) -> bool:
        return self.state.exists(_record(r))

    def round_part_done(self) -> bool:
        """True when nothing more is needed from this site for the current round."""
        r = current_round(self.fed)
        if r > self.last_round():
            return True
        phase = phase_of(self.fed, r).name
        if phase == "unmask" or (phase == "collect" and not self.config.secure):
            kind = "reveal" if self.config.secure else "submission"
            survivors = (
                self.fed.get("unmask-request", r).body["survivors"]
                if self.config.secure
                else [self.name]
            )
            return self.name not in survivors or self.fed.exists(kind, r, site=self.name)
        return False

    def next_step(self, status: dict[str, Any]) -> str:
        """This site's next command, refining the workspace view with private knowledge."""
        if self.left_out:
            err = self._not_admitted()
            return f"not admitted: {err}; {err.hint}"
        if status["phase"] in ("enrolling", "done"):
            return status["next_for"].get("each site", "wait for the coordinator to approve")
        r = status["round"]
        if (w := self.withdrawal()) is not None and r > self.last_round():
            return (
                f"withdrew from round {w.from_round} on ({w.reason}): nothing more to send; "
                "`fedrema personalize` builds its model from the rounds so far"
            )
        if not self.trained(r) and (spent := self.budget_refusal(r)) is not None:
            return (
                f"privacy budget spent (epsilon {spent.epsilon_now:.3f} of "
                f"{spent.target_epsilon:g}; round {r} would take it to "
                f"{spent.epsilon_after:.3f}): {BUDGET_SPENT}"
            )
        if status["phase"] == "collect" and self.name in status["missing"]:
            return (
                "`fedrema submit`"
                if self.trained(r)
                else "`fedrema train-local`, then `fedrema submit`"
            )
        return status["next_for"].get(self.name, "wait for the coordinator")


def read_ledger_text(state: PartyState) -> str:
    """The ledger file as text; bytes that are not UTF-8 (disk corruption, a bad edit) become
    U+FFFD so the ledger check names the damaged line instead of the command crashing."""
    if not state.exists(LEDGER):
        return ""
    return state.read_bytes(LEDGER).decode("utf-8", errors="replace")


def _json_bytes(obj: Any) -> bytes:
    import json

    return json.dumps(obj, indent=1, sort_keys=True).encode("utf-8") + b"\n"


def _load_data(config: FederationConfig, paths: dict[str, str | None]) -> SiteData:
    schema = config.data
    train, test = paths["train"], paths.get("test")
    if train is None:
        raise ConfigError("no training data configured")
    if isinstance(schema, TabularSchema):
        x_tr, y_tr = load_table(train, schema)
        std = schema.standardizer(x_tr)
        x_tr = std.transform(x_tr)
        x_te = y_te = None
        if test:
            x_te, y_te = load_table(test, schema)
            x_te = std.transform(x_te)
        return SiteData(x_tr, y_tr, x_te, y_te, std, fingerprint(train))
    assert isinstance(schema, ImageSchema)
    x_tr, y_tr = load_npz(train, input_shape=schema.input_shape, classes=schema.classes)
    x_te = y_te = None
    if test:
        x_te, y_te = load_npz(test, input_shape=schema.input_shape, classes=schema.classes)
    return SiteData(x_tr, y_tr, x_te, y_te, None, fingerprint(train))
