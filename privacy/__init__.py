"""Differential privacy for fedrema: Opacus DP-SGD, a persisted accountant, the budget gate,
the hash-chained signed ledger, an independent epsilon check and the report.

Importing ``privacy`` does not import torch; ``privacy.engine`` (DP-SGD) does, on first use of
``make_private``/``private_training`` through this package.
"""

from typing import Any

from privacy.accountant import ACCOUNTANT_SCHEMA, SiteAccountant
from privacy.analysis import Mechanism, epsilon, merge_history
from privacy.budget import GATE_TOLERANCE, BudgetStatus, budget_status, check_round
from privacy.errors import (
    AccountingError,
    BudgetExceededError,
    LedgerIntegrityError,
    PolicyError,
    PrivacyError,
    RoundAlreadyTrainedError,
    StateError,
    UnsupportedTrainingSetup,
)
from privacy.ledger import (
    GENESIS_HASH,
    LedgerBody,
    LedgerEntry,
    ParsedLedger,
    Problem,
    ProblemKind,
    body_from_record,
    encode_line,
    ensure_round_not_recorded,
    history_from_entries,
    ledger_head,
    library_versions,
    load_verified,
    make_entry,
    parse_lines,
    restore_accountant,
    round_epsilons,
    verify_chain,
)
from privacy.policy import PrivacyPolicy, RoundPlan, plan_noise, plan_round

_LAZY = {  # heavy imports (torch, Opacus, dp-accounting/scipy) load on first use only
    "IndependentEpsilon": "privacy.independent",
    "independent_epsilon": "privacy.independent",
}
_ENGINE_NAMES = (
    "PrivateTraining",
    "RoundRecord",
    "make_private",
    "make_private_for_plan",
    "private_training",
    "to_standard_module",
    "standard_state_dict",
    "validate_training_setup",
    "dataset_fingerprint",
    "model_fingerprint",
    "tensor_fingerprint",
)


def __getattr__(name: str) -> Any:
    # The engine imports torch and Opacus, the independent check dp-accounting and scipy
    # (seconds); load them only when asked for.
    if name in _ENGINE_NAMES:
        from privacy import engine

        return getattr(engine, name)
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'privacy' has no attribute {name!r}")


__all__ = [
    "ACCOUNTANT_SCHEMA",
    "GATE_TOLERANCE",
    "GENESIS_HASH",
    "AccountingError",
    "BudgetExceededError",
    "BudgetStatus",
    "IndependentEpsilon",
    "LedgerBody",
    "LedgerEntry",
    "LedgerIntegrityError",
    "Mechanism",
    "ParsedLedger",
    "PolicyError",
    "PrivacyError",
    "PrivacyPolicy",
    "RoundAlreadyTrainedError",
    "Problem",
    "ProblemKind",
    "RoundPlan",
    "SiteAccountant",
    "StateError",
    "UnsupportedTrainingSetup",
    "body_from_record",
    "budget_status",
    "check_round",
    "encode_line",
    "ensure_round_not_recorded",
    "epsilon",
    "history_from_entries",
    "independent_epsilon",
    "ledger_head",
    "library_versions",
    "load_verified",
    "make_entry",
    "merge_history",
    "parse_lines",
    "plan_noise",
    "plan_round",
    "restore_accountant",
    "round_epsilons",
    "verify_chain",
    *_ENGINE_NAMES,
]
