"""FedAvg (McMahan et al. 2017): one shared model, the sample-weighted mean of the sites'.

With fine-tuning (``fedavg-ft``), each site then trains the head alone on its own data for a
few rounds before deploying (FLamby's "FedAvg + fine-tuning" baseline).
"""

from __future__ import annotations

from fedrema_cli.methods.base import Method


class FedAvg(Method):
    name = "fedavg"
    next_head = "global head"
    deployed = "global model"
    summary = "one shared model, sample-weighted average (FedAvg)"


class FedAvgFineTune(FedAvg):
    name = "fedavg-ft"
    next_head = "global head"
    deployed = "global model, head fine-tuned locally"
    summary = "FedAvg, then each site fine-tunes the head on its own data"
    deploy = "finetune"
    finetune_rounds = 5
