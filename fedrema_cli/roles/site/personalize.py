"""A site builds, evaluates and exports its own model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedrema_cli.errors import UsageError
from fedrema_cli.learning.params import Params, params_hash
from fedrema_cli.protocol import secagg as secure
from fedrema_cli.protocol.rounds import (
    current_round,
)
from fedrema_cli.roles.site.base import (
    SiteBase,
    _exclusive,
)


class Personalizing(SiteBase):
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
