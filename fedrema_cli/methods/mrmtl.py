"""MR-MTL (Liu, Hu, Wu, Smith, NeurIPS 2022, "On Privacy and Personalization in Cross-Silo
Federated Learning"): mean-regularized multi-task learning.

Each site keeps its own model and trains it with DP-SGD plus a proximal pull
``lam/2 * ||w - w_bar||^2`` towards the federation's average ``w_bar``; the coordinator
averages the sites' models through secure aggregation (their deltas from ``w_bar``, weighted
by record count). ``lam = 0`` is local training, ``lam -> inf`` is FedAvg; the paper finds the
middle is where cross-silo DP federations gain most. The pull uses only ``w_bar`` and the
site's own parameters, never a record, so it is applied after DP-SGD's noisy step (a
post-processing): it costs no privacy budget.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from fedrema_cli.learning.params import Params
from fedrema_cli.methods.base import Method, Part


class MRMTLOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    lam: float = Field(default=1.0, ge=0, le=1e4, description="strength of the pull to w_bar")


class MRMTL(Method):
    name = "mr-mtl"
    next_head = "its own model, pulled to the federation's mean"
    deployed = "own model"
    summary = "each site's own model, pulled towards the federation's mean (MR-MTL)"
    Options = MRMTLOptions

    def start(self, model: Params, *, own: Params | None, received: Params | None) -> Params:
        return own or model

    def proximal(self) -> tuple[float, Part] | None:
        assert isinstance(self.options, MRMTLOptions)
        return self.options.lam, "all"
