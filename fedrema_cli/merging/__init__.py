"""Merging methods behind one interface: what a site shares, and where its next head comes from.

Adding a method is one entry in METHODS; the CLI's ``--method`` choices are its keys. The
baselines (majority class, local-only, FedAvg, FedAvg + fine-tuning, FedPer) differ from FedReMa
only in these fields, so every method runs the same model, data, local steps and protocol code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Part = Literal["extractor", "all"]


@dataclass(frozen=True)
class Method:
    """How a method splits the model between the federation and the site.

    ``deploy`` is the model ``personalize`` evaluates and exports: ``"next"`` is what the site
    would train from next (global model, merged or own head); ``"finetune"`` then trains the
    head alone on local data for ``training.finetune_rounds`` more rounds (default: the
    method's ``finetune_rounds``) once the federation is complete. Those rounds are ordinary
    local rounds (DP-SGD and in the ledger under a privacy policy, which plans them), so the
    fine-tuned model is covered like any update. ``model="linear"`` drops the hidden layers
    (logistic regression on tabular data); ``trains=False`` fits the class prior instead of
    taking SGD steps.
    """

    name: str
    summary: str
    shared_part: Part | None  # summed through secure aggregation; None: nothing is shared
    sends_head: bool  # classifier head sealed to the coordinator (FedReMa needs it)
    head_source: Literal["global", "merged", "own"]  # head a site trains from next round
    deploy: Literal["next", "finetune"] = "next"
    finetune_rounds: int = 0  # default when the config does not say
    model: Literal["spec", "linear"] = "spec"
    trains: bool = True
    paper_rules: bool = False  # FedReMa: the paper's rules, ignoring the config's knobs


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "fedrema",
            "shared extractor; each head merged with its most relevant peers (FedReMa, made "
            "robust to DP noise; optional local fine-tuning: see docs/fedrema.md)",
            "extractor",
            True,
            "merged",
            deploy="finetune",
        ),
        Method(
            "fedrema-paper",
            "FedReMa with the paper's rules (reference variant)",
            "extractor",
            True,
            "merged",
            paper_rules=True,
        ),
        Method(
            "fedavg", "one shared model, sample-weighted average (FedAvg)", "all", False, "global"
        ),
        Method(
            "fedavg-ft",
            "FedAvg, then each site fine-tunes the head on its own data",
            "all",
            False,
            "global",
            deploy="finetune",
            finetune_rounds=5,
        ),
        Method(
            "fedper",
            "shared extractor; every head stays at its site (FedPer)",
            "extractor",
            False,
            "own",
        ),
        Method("local", "every site trains alone; nothing is shared", None, False, "own"),
        Method(
            "local-lr",
            "every site trains a logistic regression alone (tabular data only)",
            None,
            False,
            "own",
            model="linear",
        ),
        Method(
            "majority",
            "every site predicts its training set's most frequent class; no training",
            None,
            False,
            "own",
            trains=False,
        ),
    )
}
