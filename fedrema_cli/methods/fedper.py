"""FedPer (Arivazhagan et al. 2019): a shared feature extractor, every head stays at its site."""

from __future__ import annotations

from fedrema_cli.learning.params import Params
from fedrema_cli.methods.base import Method, own_part


class FedPer(Method):
    name = "fedper"
    next_head = "its own head (never leaves the site)"
    deployed = "extractor + own head"
    summary = "shared extractor; every head stays at its site (FedPer)"
    shared = "extractor"

    def start(self, model: Params, *, own: Params | None, received: Params | None) -> Params:
        return {**model, **own_part(own, "head")}
