"""FedReMa (Liang et al., ECAI 2024): a shared extractor; each head merged with its most
relevant peers' (similarity of head outputs, MaxDiff selection, critical co-learning period).

The rules themselves are pure functions in `fedrema_cli.merging.fedrema`; this class feeds
them the round's heads and keeps their state. ``fedrema`` runs the config's knobs (tuned for
heads trained under DP noise, docs/fedrema.md); ``fedrema-paper`` the paper's rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedrema_cli.learning.modelspec import ModelSpec
from fedrema_cli.learning.params import Params, flatten, head_logits, part_of, unflatten
from fedrema_cli.merging import fedrema as fr
from fedrema_cli.methods.base import (
    NoOptions,
    Outcome,
    PersonalHead,
    RoundInputs,
    same_block_rate,
)


class MergeRules(BaseModel):
    """FedReMa's merging knobs (`fedrema_cli.merging.fedrema.FedReMaParams` has what each
    does). The defaults are the rules of the default ``fedrema`` method, tuned on validation
    splits for heads trained with DP noise (docs/fedrema.md).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    delta: float = Field(default=0.5, gt=0, le=1)
    t_self: float = Field(default=0.5, gt=0)
    t_peer: float = Field(default=1.0, gt=0)
    probe: Literal["uniform"] = "uniform"
    probe_scale: float = Field(default=0.5, gt=0)
    probe_samples: int = Field(default=64, ge=1)
    similarity: Literal["softmax", "centered"] = "centered"
    smoothing: float = Field(default=0.5, ge=0, lt=1)
    min_similarity: float | None = Field(default=0.0, ge=-1, le=1)
    self_weight: float | None = Field(default=0.5, ge=0, le=1)
    global_weight: float = Field(default=0.0, ge=0, le=1)
    min_ccp_rounds: int = Field(default=5, ge=0)


class FedReMaOptions(MergeRules):
    """FedReMa's options: the merging rules, and what a site does with the extractor."""

    #: None: the extractor is the federation's (replaced by the mean every round). A number:
    #: each site keeps its own extractor, pulled towards the mean with this strength while it
    #: trains (MR-MTL's rule for the shared part; the mean still travels masked).
    extractor_pull: float | None = Field(default=None, ge=0, le=1e4)


class FedReMa(PersonalHead):
    name = "fedrema"
    next_head = "its FedReMa-merged head (DP-robust rules, docs/fedrema.md)"
    deployed = "extractor + merged head (+ optional head fine-tuning)"
    summary = (
        "shared extractor; each head merged with its most relevant peers (FedReMa, made "
        "robust to DP noise; optional local fine-tuning: see docs/fedrema.md)"
    )
    Options = FedReMaOptions
    deploy = "finetune"

    def rules(self) -> fr.FedReMaParams:
        return fr.params_from(self.options)

    def logits(
        self, parts: Mapping[str, Params], present: list[str], inputs: RoundInputs
    ) -> np.ndarray:
        """How the coordinator compares what it merges: the heads on a feature-space probe."""
        return probe_logits(parts, present, inputs, self.rules())

    def aggregate(self, inputs: RoundInputs, state: Mapping[str, Any] | None) -> Outcome:
        model = self.averaged(inputs)
        assert self.personal is not None
        heads = {s: part_of(h, self.personal) for s, h in inputs.personal.items()}
        if not heads:
            return Outcome(model=model, state=dict(state) if state else None)
        template = next(iter(heads.values()))
        vectors = {s: flatten(h)[0] for s, h in heads.items()}
        previous = fr.FedReMaState.from_json(state) if state else None
        current = fr.with_sites(previous, inputs.sites)
        rules = self.rules()
        present = fr.participants(vectors, current)
        logits = self.logits(heads, present, inputs) if current.in_ccp else None
        merged, new_state, report = fr.merge(vectors, logits, current, rules)
        layout = flatten(template)[1]
        personal = {
            s: {k: v.astype(np.float32) for k, v in unflatten(vec, layout).items()}
            for s, vec in merged.items()
        }
        events = ("FedReMa's critical co-learning period ended",) if report.ccp_ended else ()
        return Outcome(
            model=model,
            personal=personal,
            state=new_state.to_json(),
            log={
                "round": inputs.round,
                "in_ccp": report.in_ccp,
                "mean_gap": report.mean_gap,
                "ccp_ended": report.ccp_ended,
                "selected": {k: list(v) for k, v in report.selected.items()},
            },
            info={"fedrema": {"in_ccp": report.in_ccp, "heads_merged": len(merged)}},
            events=events,
        )

    def summarize(self, log: list[dict[str, Any]], blocks: Mapping[str, int] | None) -> dict:
        """How long the co-learning period lasted; with known blocks, how often peers match."""
        ccp = [e for e in log if e["in_ccp"]]
        stats: dict[str, Any] = {"ccp_rounds": len(ccp)}
        picks = [len(chosen) - 1 for e in ccp for chosen in e["selected"].values()]
        stats["mean_peers_selected"] = float(np.mean(picks)) if picks else None
        if blocks:
            pairs = (
                (site, peer)
                for entry in ccp
                for site, chosen in entry["selected"].items()
                for peer in chosen
                if peer != site
            )
            stats["peer_same_block_rate"] = same_block_rate(pairs, blocks)
        return stats


class FedReMaPaper(FedReMa):
    name = "fedrema-paper"
    next_head = "merged by the paper's rules"
    deployed = "extractor + merged head"
    summary = "FedReMa with the paper's rules (reference variant)"
    Options = NoOptions
    deploy = "next"

    def rules(self) -> fr.FedReMaParams:
        return fr.PAPER


class FedReMaModel(FedReMa):
    """FedReMa's peer selection and merging applied to each site's whole model.

    Nothing is averaged over the whole federation: each site trains its own model from the
    one the coordinator merged for it (its own and its most similar peers', compared by their
    outputs on a public input-space probe) and seals it to the coordinator alone. Under DP
    on label skew the federation's mean is a poor model for any one site (docs/accuracy-
    notes.md: every pull towards it lowers accuracy), while a like site's model is a good
    one: averaging with the true block peer alone is +0.11 over local training at eps 3.
    """

    name = "fedrema-model"
    shared = None
    personal = "all"
    next_head = "its FedReMa-merged whole model (own + most similar peers')"
    deployed = "merged whole model"
    summary = (
        "no shared part; each site's whole model merged with its most similar peers' "
        "(FedReMa's selection on model outputs over a public input probe)"
    )
    Options = MergeRules
    deploy = "next"

    def start(self, model: Params, *, own: Params | None, received: Params | None) -> Params:
        if received is not None:
            return {**model, **received}
        return dict(own) if own is not None else model

    def logits(
        self, parts: Mapping[str, Params], present: list[str], inputs: RoundInputs
    ) -> np.ndarray:
        """Each whole model on one shared uniform probe in input space, [1, sites, n, classes]."""
        rules = self.rules()
        shape = (rules.probe_samples, *inputs.spec.input_dims)
        probe = inputs.rng.random(shape) * rules.probe_scale
        return np.stack([[model_logits(parts[s], inputs.spec, probe) for s in present]])


def model_logits(params: Params, spec: ModelSpec, x: np.ndarray) -> np.ndarray:
    """A whole model's logits on inputs ``x`` (torch, CPU), as float64."""
    import torch

    from fedrema_cli.learning.models import build_model, set_part

    model = build_model(spec, seed=0)
    set_part(model, "all", params)
    model.eval()
    with torch.no_grad():
        out = model(torch.as_tensor(np.asarray(x, dtype=np.float32)))
    return out.numpy().astype(np.float64)


def probe_logits(
    heads: Mapping[str, Params],
    present: list[str],
    inputs: RoundInputs,
    rules: fr.FedReMaParams,
) -> np.ndarray:
    """logits[i, j] = head_j on row i's probe: one probe per row (the paper), or one shared."""
    rows = []
    for _ in present[: 1 if rules.shared_probe else len(present)]:
        probe = fr.uniform_probe(
            inputs.rng,
            feature_dim=inputs.spec.feature_dim,
            samples=rules.probe_samples,
            scale=rules.probe_scale,
        )
        rows.append(np.stack([head_logits(heads[j], inputs.spec, probe) for j in present]))
    return np.stack(rows)
