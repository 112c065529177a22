"""A site trains a round on its own data (once per round; DP-SGD under a privacy policy)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedrema_cli.config import finetune_rounds
from fedrema_cli.errors import NotYetError, SitsOutError
from fedrema_cli.learning.params import Params, load_params, params_hash, part_of, save_params
from fedrema_cli.protocol.rounds import (
    current_round,
    derive_seed,
    key_roster_parties,
    participants,
    read_model,
    rejoin_advice,
    survivors,
    timestamp,
)
from fedrema_cli.roles.site.base import (
    ACCOUNTANT,
    SiteBase,
    _exclusive,
    _json_bytes,
    _record,
    _trained,
)

if TYPE_CHECKING:
    from fedrema_cli.learning.training import Progress


class Training(SiteBase):
    # -- training ---------------------------------------------------------------------------

    @_exclusive
    def train_local(self, progress: Progress | None = None) -> dict[str, Any]:
        """Train this round's update (once per round) and keep it here until `submit`.

        A round already trained is not trained again: its record comes back with
        ``already_trained`` (so cron can re-run the command every time; nothing changes).

        With a privacy policy the order is what makes a crash harmless: the budget gate runs
        before any training; the trained update and the ledger body are saved privately, then
        the ledger entry is appended (a re-run appends a missing one), and only then can
        `submit` release anything.
        """
        self._require_admitted()
        repaired = self._repair_ledger()
        ledger = self._sync_ledger()
        r = current_round(self.fed)
        if r > self.config.rounds:  # nothing will ever come: done, not an error (cron)
            return {"round": r - 1, "complete": True, "rounds": self.config.rounds}
        self._require_active(r)
        if self.state.exists(_record(r)):  # a round trains once; a re-run changes nothing
            done = self.state.read_json(_record(r))
            if repaired:  # the previous run was cut off after training: it is now complete
                return {**done, "completed_after_crash": True}
            return {**done, "already_trained": True}
        if not self.fed.exists("model", r):
            raise NotYetError(f"round {r} has not started yet", hint="wait for the coordinator")
        self._check_participant(r)
        return self._train_round(r, self._start_params(r), ledger, progress=progress)

    def _train_round(
        self,
        r: int,
        start: Params,
        ledger: Any,
        *,
        head_only: bool = False,
        progress: Progress | None = None,
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
        self.check_data_unchanged(data)  # before the budget gate: name the real cause
        method = self.config.method_impl()
        trains = method.trains
        pull = None if head_only else method.proximal()
        extra = (
            {}
            if pull is None
            else {"proximal": Proximal(pull[0], part_of(read_model(self.fed, r), pull[1]))}
        )
        weights, ledger = self._class_weights(data.y_train, ledger) if trains else (None, ledger)
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
                progress=progress,
                class_weights=weights,
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
        if weights is not None:
            record["class_weights"] = weights
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

    def _check_participant(self, r: int) -> None:
        if not self.config.secure:
            return
        # Left out of round r: nothing to do until a round it can rejoin (or the end), so
        # "not yet" (75), not an error: a cron line treating 0 and 75 as fine stays quiet.
        closed = self.fed.exists("unmask-request", r)
        if closed and self.name not in survivors(self.fed, r):
            raise SitsOutError(
                f"round {r} was closed without {self.name}'s update; training for it now "
                "would spend privacy budget on an update that can no longer be sent",
                hint=rejoin_advice(self.fed, r),
            )
        for kind, members_of in (
            ("masking-roster", participants),
            ("key-roster", key_roster_parties),
        ):
            if self.fed.exists(kind, r):
                if self.name not in members_of(self.fed, r):
                    raise SitsOutError(
                        f"{self.name} is not part of round {r}'s secure aggregation (it missed "
                        "the previous round's key exchange)",
                        hint=rejoin_advice(self.fed, r),
                    )
                return
