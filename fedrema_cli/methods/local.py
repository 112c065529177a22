"""Training alone: the baselines that share nothing (local model, logistic regression, prior)."""

from __future__ import annotations

from fedrema_cli.learning.params import Params
from fedrema_cli.methods.base import Method


class Local(Method):
    name = "local"
    next_head = "its own model"
    deployed = "own model"
    summary = "every site trains alone; nothing is shared"
    shared = None

    def start(self, model: Params, *, own: Params | None, received: Params | None) -> Params:
        return own or model


class LocalLogistic(Local):
    name = "local-lr"
    next_head = "its own logistic regression"
    deployed = "own model"
    summary = "every site trains a logistic regression alone (tabular data only)"
    model = "linear"


class Majority(Local):
    name = "majority"
    next_head = "- (no training)"
    deployed = "predicts its most frequent training label"
    summary = "every site predicts its training set's most frequent class; no training"
    trains = False
