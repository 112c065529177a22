"""A site builds, evaluates and exports its own model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedrema_cli.errors import OptionError, UsageError
from fedrema_cli.learning.params import Params, params_hash
from fedrema_cli.protocol import secagg as secure
from fedrema_cli.protocol.rounds import current_round, derive_seed
from fedrema_cli.roles.site.base import (
    EVALUATION,
    SiteBase,
    SiteData,
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

    def test_metrics(self) -> dict[str, Any] | None:
        """Argmax metrics of the model this site would deploy now, on its test file (None
        without one). What `simulate --track` scores after every round: no threshold, no
        intervals, nothing written."""
        from fedrema_cli.learning.metrics import basic_metrics

        scored = self.test_proba()
        return basic_metrics(*scored).to_json() if scored is not None else None

    def test_proba(self) -> tuple[Any, Any] | None:
        """The deployed model's class probabilities on the test file and the test labels
        (None without a test file): what `simulate` scores per record."""
        from fedrema_cli.learning.training import predict_proba

        data = self.data()
        if data.x_test is None or data.y_test is None:
            return None
        model, _, _ = self._deployed_model()
        return predict_proba(model, data.x_test), data.y_test

    def _deployed_model(self) -> tuple[Any, Params, int]:
        """The model to deploy now, its parameters, and the last finished round."""
        from fedrema_cli.learning.models import build_model, set_part

        params, last = self.personalized_params()
        model = build_model(self.config.model, seed=self.config.seed)
        set_part(model, "all", params)
        return model, params, last

    @_exclusive
    def personalize(
        self, export: str | Path | None = None, *, target_sensitivity: float | None = None
    ) -> dict[str, Any]:
        """Build this site's model, choose its decision threshold, evaluate it, maybe export it.

        ``metrics`` are the argmax metrics (what `simulate` always reported). The threshold
        (binary tasks) is chosen on a stratified, seeded validation split of the *training*
        file, to maximise balanced accuracy or to reach ``target_sensitivity``; the test file
        is scored only at that fixed threshold (``clinical``: every metric with a 95%
        interval). The federation trains on the whole training file, so the validation records
        were seen in training: the threshold is fit in-sample, never on test data. Warnings
        (a one-class model, AUC below 0.5) are kept in the state folder for `status`.
        """
        from fedrema_cli.learning.training import evaluate

        # A run cut off after training a round but before its ledger append (here: the last
        # fine-tuning round) must not export that model before its spend is on record.
        self._require_admitted()
        k = self.config.model.num_classes
        if target_sensitivity is not None and not 0 < target_sensitivity <= 1:
            raise OptionError(f"--target-sensitivity must be in (0, 1], got {target_sensitivity}")
        if target_sensitivity is not None and k != 2:
            raise UsageError(
                f"--target-sensitivity needs a binary task; this one has {k} classes",
                hint="leave it out: the prediction is the most probable class",
            )
        self._repair_ledger()
        model, params, last = self._deployed_model()
        secure.forget_secrets(self.state, before=last + 1)  # finished rounds need no secrets
        data = self.data()
        metrics = None
        if data.x_test is not None:
            metrics = evaluate(model, data.x_test, data.y_test, num_classes=k)
        out: dict[str, Any] = {
            "site": self.name,
            "federation": self.config.federation_id,
            "method": self.config.method,
            "after_round": last,
            "complete": last >= self.config.rounds,
            "model_hash": params_hash(params),
            "metrics": metrics.to_json() if metrics else None,
            **self._operating_point(model, data, target_sensitivity),
        }
        self.state.write_json(EVALUATION, _evaluation_summary(out))
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

    def _operating_point(
        self, model: Any, data: SiteData, target_sensitivity: float | None
    ) -> dict[str, Any]:
        """The operating point (binary: a threshold chosen on validation data; more classes:
        the site's class prior, `PriorShift`), the test report at it, class balance, warnings."""
        import numpy as np

        from fedrema_cli.learning.metrics import (
            clinical_report,
            model_warnings,
            prior_shift,
            select_threshold,
            validation_split,
        )
        from fedrema_cli.learning.training import predict_proba

        k = self.config.model.num_classes
        val = validation_split(
            data.y_train, seed=derive_seed(self.config.seed, self.name, "validation")
        )
        training_proba = predict_proba(model, data.x_train)
        # binary: a threshold chosen on the validation split; more classes: the posterior
        # moved to the site's class prior (both fit on the training file alone)
        shift = prior_shift(training_proba, data.y_train) if k > 2 else None
        at_point = shift.apply if shift is not None else (lambda p: p)
        val_proba = at_point(training_proba[val])
        choice = (
            select_threshold(
                val_proba,
                data.y_train[val],
                target_sensitivity=target_sensitivity,
                training_scores=training_proba,
            )
            if k == 2
            else None
        )
        point = choice if choice is not None else shift
        assert point is not None  # k == 2 chose a threshold, k > 2 a prior shift
        threshold = choice.threshold if choice is not None else None
        report = None
        if data.x_test is not None and data.y_test is not None:
            report = clinical_report(
                at_point(predict_proba(model, data.x_test)),
                data.y_test,
                threshold=threshold,
                seed=derive_seed(self.config.seed, self.name, "bootstrap"),
                private=self.config.privacy is not None,
            )
            warnings = list(report.warnings)
            warned_on = "test"
        else:  # no test file: the validation split is all this site can look at
            warnings = model_warnings(
                val_proba,
                data.y_train[val],
                threshold=threshold,
                private=self.config.privacy is not None,
            )
            warned_on = "validation"

        def counts(y: Any) -> list[int] | None:
            if y is None:
                return None
            return [int(c) for c in np.bincount(np.asarray(y, dtype=np.int64), minlength=k)[:k]]

        return {
            "threshold": point.to_json(),
            "decision_rule": (
                f"predict class 1 when P(class 1) >= {threshold:.6g}"
                if threshold is not None
                else "predict the class with the largest P(c|x) * threshold.class_weights[c]"
            ),
            "clinical": report.to_json() if report is not None else None,
            "class_balance": {
                "train": counts(data.y_train),
                "validation": counts(data.y_train[val]),
                "test": counts(data.y_test),
            },
            "warnings": [{**w.to_json(), "on": warned_on} for w in warnings],
        }

    def last_evaluation(self) -> dict[str, Any] | None:
        """What the last `personalize` found (round, model hash, warnings), or None."""
        if not self.state.exists(EVALUATION):
            return None
        return self.state.read_json(EVALUATION)


def _evaluation_summary(out: dict[str, Any]) -> dict[str, Any]:
    clinical = out.get("clinical") or {}
    return {
        "after_round": out["after_round"],
        "model_hash": out["model_hash"],
        "threshold": out["threshold"].get("threshold"),
        "balanced_accuracy": (clinical.get("balanced_accuracy") or {}).get("value"),
        "warnings": out["warnings"],
    }
