"""A site sends what the round needs from it now (key shares, masked update, reveals)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedrema_cli.learning.params import Params, load_params, part_of, save_params
from fedrema_cli.methods import METHODS
from fedrema_cli.protocol import exchange
from fedrema_cli.protocol import secagg as secure
from fedrema_cli.protocol.rounds import (
    Actions,
    current_round,
    read_model,
)
from fedrema_cli.roles.site.base import (
    SiteBase,
    _exclusive,
    _record,
    _trained,
)


class Submitting(SiteBase):
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
        self._require_active(r, joining=True)
        if self.config.secure:
            secure.site_steps(self.secagg_view(r), r, actions)
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

    def secagg_view(self, r: int) -> secure.SiteRound:
        """The values the SecAgg driver needs for rounds r and r + 1."""
        updates = {}
        for rr in (r, r + 1):
            if (update := self.trained_update(rr)) is not None:
                delta, weight, trained = update
                updates[rr] = secure.SiteUpdate(delta, weight, self.submission_body(rr, trained))
        return secure.SiteRound(
            self.fed, self.state, self.last_round(), updates, first=self.first_round()
        )

    def submission_body(self, r: int, trained: Params) -> dict[str, Any]:
        body: dict[str, Any] = {"round": r, "method": self.config.method}
        personal = METHODS[self.config.method].personal
        if personal is not None:
            body["sealed_head"] = exchange.seal_head_for_coordinator(
                self.fed, r, save_params(part_of(trained, personal))
            )
        return body

    def _submit_plain(self, r: int, actions: Actions) -> None:
        if r < self.first_round():
            actions.waiting.append(f"round {self.first_round()}: this site joins then")
            return
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
