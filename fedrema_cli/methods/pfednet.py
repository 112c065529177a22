"""pFedNet (Zhao, Liu, Liu, Liu, He, "Medical Federated Model with Mixture of Personalized and
Sharing Components", IEEE TPAMI 47(1):433-449, 2025; arXiv 2306.14483).

A shared part (the extractor, averaged through secure aggregation) and personalized
components z_n (here: each site's classifier head). The coordinator solves, per round,

    min_Z  (1/N) <G, Z>  +  lam * sum_{(i,j) in E} ||z_i - z_j||_2  +  1/(2 eta) ||Z - Z_t||^2

by ADMM (`fedrema_cli.merging.pfednet.admm_prox`: one eigendecomposition of Q Q^T per graph,
a per-edge group soft-threshold, the dual update), where G holds each site's update of its
component (start minus trained) and E is a k-nearest-neighbour similarity graph. The fused
group lasso pulls similar sites' components to be exactly equal: cluster-like
personalization.

The graph is built only from what DP already covers: the sites' DP-trained heads evaluated on
one public uniform probe (as FedReMa compares heads), never from raw data statistics (the
official code uses raw input covariances or label ratios computed centrally, which no privacy
accounting covers). Components travel sealed to the coordinator alone and back, as FedReMa's
heads do.

``pfednet`` scales the step so that ``lam = 0`` hands every site its own trained head
(``eta = N * step``, fixed centre) and picks ``k`` and ``lam`` on validation splits;
``pfednet-paper`` runs the official deep-code rules (lam 72, eta 0.01, rho 1, 200 iterations,
moving centre, k = 3) as the reference variant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedrema_cli.learning.params import flatten, head_logits, part_of, unflatten
from fedrema_cli.merging import pfednet as pf
from fedrema_cli.merging.fedrema import uniform_probe
from fedrema_cli.methods.base import (
    NoOptions,
    Outcome,
    PersonalHead,
    RoundInputs,
    same_block_rate,
)


class PFedNetOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: None: the extractor is the federation's (replaced by the mean every round). A number:
    #: each site keeps its own extractor, pulled towards the mean with this strength while it
    #: trains (MR-MTL's rule for the shared part; the mean still travels masked).
    extractor_pull: float | None = Field(default=None, ge=0, le=1e4)

    lam: float = Field(default=0.05, ge=0, description="weight of the fused group lasso")
    k: int = Field(default=2, ge=1, description="neighbours per site in the similarity graph")
    step: float = Field(default=1.0, gt=0, le=10, description="eta / N (1: lam 0 = own head)")
    rho: float = Field(default=1.0, gt=0)
    iterations: int = Field(default=50, ge=1, le=10_000)
    probe_samples: int = Field(default=64, ge=1)
    probe_scale: float = Field(default=0.5, gt=0)


class PFedNet(PersonalHead):
    name = "pfednet"
    next_head = "its component from the graph group lasso (ADMM)"
    deployed = "extractor + its component"
    summary = (
        "shared extractor; heads fused with similar sites' by a graph group lasso (pFedNet, "
        "graph from DP-covered head outputs)"
    )
    Options = PFedNetOptions

    def solver(self, n: int) -> pf.PFedNetParams:
        o = self.options
        assert isinstance(o, PFedNetOptions)
        return pf.PFedNetParams(
            lam=o.lam,
            eta=n * o.step,
            eta_schedule="constant",
            rho=o.rho,
            iterations=o.iterations,
            centre="fixed",
            k=o.k,
        )

    def probe_shape(self) -> tuple[int, float]:
        o = self.options
        assert isinstance(o, PFedNetOptions)
        return o.probe_samples, o.probe_scale

    def aggregate(self, inputs: RoundInputs, state: Mapping[str, Any] | None) -> Outcome:
        model = self.averaged(inputs)
        trained = {s: part_of(h, "head") for s, h in inputs.personal.items()}
        if not trained:
            return Outcome(model=model, state=dict(state) if state else None)
        sites = inputs.sites
        start_head, layout = flatten(part_of(inputs.model, "head"))
        held = dict((state or {}).get("components", {}))
        z_t = np.stack([np.asarray(held.get(s, start_head), dtype=np.float64) for s in sites])
        g = np.zeros_like(z_t)
        signals_from = z_t.copy()
        for i, s in enumerate(sites):
            if s in trained:
                vec = flatten(trained[s])[0]
                g[i] = z_t[i] - vec
                signals_from[i] = vec
        samples, scale = self.probe_shape()
        probe = uniform_probe(
            inputs.rng, feature_dim=inputs.spec.feature_dim, samples=samples, scale=scale
        )
        heads = [unflatten(v, layout) for v in signals_from]
        logits = np.stack([head_logits(h, inputs.spec, probe) for h in heads])
        solver = self.solver(len(sites))
        graph = pf.knn_graph(pf.signal_distances(pf.probe_signals(logits)), k=solver.k)
        result = pf.admm_prox(z_t, g, pf.GraphFactor.of(graph), solver)
        personal = {
            s: {k: v.astype(np.float32) for k, v in unflatten(result.z[i], layout).items()}
            for i, s in enumerate(sites)
        }
        clusters = {s: int(c) for s, c in zip(sites, result.clusters, strict=True)}
        new_state = {
            "sites": list(sites),
            "components": {s: result.z[i].tolist() for i, s in enumerate(sites)},
        }
        return Outcome(
            model=model,
            personal=personal,
            state=new_state,
            log={
                "round": inputs.round,
                "edges": [[sites[a], sites[b]] for a, b in graph.edges],
                # fused: ||z_i - z_j|| <= fuse_tol, the edges `clusters` is made of;
                # thresholded: W row exactly 0, the edges the solution is heading to fuse
                "fused_edges": result.fused_edges,
                "thresholded_edges": result.thresholded_edges,
                "clusters": clusters,
                "primal_residual": result.primal_residual,
            },
            info={
                "pfednet": {
                    "edges": len(graph.edges),
                    "fused": result.fused_edges,
                    "thresholded": result.thresholded_edges,
                }
            },
        )

    def summarize(self, log: list[dict[str, Any]], blocks: Mapping[str, int] | None) -> dict:
        """Fused edges per round (those the clusters are made of, and those thresholded to
        0) and, with known blocks, how often fused sites share one."""
        if not log:
            return {}
        # A round logged before both counts were kept has "fused_edges" holding the
        # thresholded count: it counts as that, and not towards the fused mean.
        both = [e for e in log if "thresholded_edges" in e]
        thresholded = [e.get("thresholded_edges", e["fused_edges"]) for e in log]
        stats: dict[str, Any] = {
            "mean_thresholded_edges": float(np.mean(thresholded)),
            "final_clusters": log[-1]["clusters"],
        }
        if both:
            stats["mean_fused_edges"] = float(np.mean([e["fused_edges"] for e in both]))
        if blocks:
            pairs = (
                (a, b)
                for entry in log
                for a, la in entry["clusters"].items()
                for b, lb in entry["clusters"].items()
                if a < b and la == lb
            )
            stats["peer_same_block_rate"] = same_block_rate(pairs, blocks)
        return stats


class PFedNetPaper(PFedNet):
    name = "pfednet-paper"
    next_head = "the same, by the official deep-code rules"
    deployed = "extractor + its component"
    summary = "pFedNet with the official deep-code rules (reference variant)"
    Options = NoOptions

    def solver(self, n: int) -> pf.PFedNetParams:
        return replace(pf.DEEP, k=3)

    def probe_shape(self) -> tuple[int, float]:
        return PFedNetOptions().probe_samples, PFedNetOptions().probe_scale
