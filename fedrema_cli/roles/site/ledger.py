"""A site's privacy ledger: the budget gate before training, the signed hash-chained entries,
their published copies, and the checks that its spend cannot shrink."""

from __future__ import annotations

from typing import Any

from crypto.canonical import canonical_json
from fedrema_cli.identity import unb64
from fedrema_cli.methods import METHODS
from fedrema_cli.protocol.messages import ResultBody
from fedrema_cli.protocol.messages import read as read_body
from fedrema_cli.protocol.rounds import current_round, derive_seed, timestamp
from fedrema_cli.roles.site.base import (
    ACCOUNTANT,
    FINGERPRINT_KEY,
    LABEL_RELEASE,
    LEDGER,
    SiteBase,
    _json_bytes,
    _record,
    read_ledger_text,
)
from fedrema_cli.store.envelope import sha256
from fedrema_cli.store.federation import round_number


class Ledger(SiteBase):
    # -- privacy ----------------------------------------------------------------------------

    def _verify_own(self, signature: bytes, message: bytes) -> None:
        if self.fed.roster is None or self.name not in self.fed.ever_listed():
            import crypto

            pk = unb64(self.fed.identity.public.sign_pk, what="own key")
            crypto.verify_signature(pk, signature, message)
            return
        self.fed.ledger_verifier(self.name)(signature, message)

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
        pending = [LABEL_RELEASE] if self.state.exists(LABEL_RELEASE) and 0 not in recorded else []
        for name in self.state.list("rounds"):
            r = round_number(name)
            if r is None or r in recorded or not self.state.exists(_record(r)):
                continue
            pending.append(_record(r))
        for path in pending:
            record = self.state.read_json(path)
            if "ledger_body" not in record:  # nothing was trained (majority class): no spend
                continue
            body = LedgerBody.model_validate(record["ledger_body"], strict=False)
            entry = make_entry(  # signed with the key in force for the entry's round
                entries[-1] if entries else None, body, self.fed.identity_for(body.round).sign
            )
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

    def _class_weights(self, y: Any, ledger: Any) -> tuple[list[float] | None, Any]:
        """This site's loss weight per class (None: unweighted), and the ledger after any release.

        "balanced" under DP: the weights come from label counts released once, before the
        site's first trained round, by the Gaussian mechanism the policy planned; the release
        is kept privately (`LABEL_RELEASE`, the commit marker), then recorded as the ledger's
        round-0 entry (one step at q = 1), so the accountant, the published ledger, the
        report and the independent check all compose it with the DP-SGD steps.
        """
        import numpy as np

        from fedrema_cli.learning.training import balanced_class_weights
        from privacy import LedgerIntegrityError, SiteAccountant, body_from_record

        weighting = self.config.training.class_weighting
        if weighting == "none":
            return None, ledger
        if isinstance(weighting, list):
            return [float(w) for w in weighting], ledger
        k = self.config.model.num_classes
        policy = self.config.privacy
        if policy is None:
            return [float(w) for w in balanced_class_weights(y, k, private=False)[0]], ledger
        if self.state.exists(LABEL_RELEASE):
            return list(self.state.read_json(LABEL_RELEASE)["weights"]), ledger
        if ledger.entries:
            raise LedgerIntegrityError(
                f"{LABEL_RELEASE} is missing although the ledger records trained rounds: the "
                "class weights this site trained with are lost",
                hint=f"restore {LABEL_RELEASE} from a backup",
            )
        assert policy.label_count_noise is not None  # the config's validation ties the two
        seed = derive_seed(self.config.seed, self.name, "label-counts")
        weights, release = balanced_class_weights(
            y,
            k,
            private=True,
            rng=np.random.default_rng(seed if self.simulated_noise else None),
            delta=policy.delta,
            mechanism=policy.accountant,
            noise_multiplier=policy.label_count_noise,
        )
        assert release is not None
        accountant = SiteAccountant(mechanism=policy.accountant, history=release.history())
        at = timestamp()
        body = body_from_record(
            release,
            accountant=accountant,
            delta=policy.delta,
            target_epsilon=policy.target_epsilon,
            federation=self.config.federation_id,
            site=self.name,
            round=0,
            dataset_fingerprint=self._ledger_fingerprint(self.data().train_fingerprint),
            model_hashes={},
            timestamp=at,
        )
        self.state.write_once(
            LABEL_RELEASE,
            _json_bytes(
                {
                    "weights": [float(w) for w in weights],
                    "noisy_counts": [float(c) for c in release.counts],
                    "noise_multiplier": release.noise_multiplier,
                    "released_at": at,
                    "ledger_body": body.model_dump(mode="json"),
                }
            ),
        )
        ledger = self._sync_ledger()
        self.state.write_json(ACCOUNTANT, accountant.state_dict())
        return [float(w) for w in weights], ledger

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
            and self.name in read_body(self.fed, "result", k, ResultBody).survivors
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
