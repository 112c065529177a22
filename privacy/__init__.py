"""Differential privacy: Opacus DP-SGD, a persisted accountant, the budget gate, the signed ledger, reports."""
