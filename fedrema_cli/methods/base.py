"""What a personalization method is: one class, pure, behind one small protocol.

A method decides three things and nothing else:

* what a site shares: ``shared`` (the part summed through secure aggregation, weighted by
  record count) and ``personal`` (the part sealed to the coordinator alone, one site at a
  time, covered by DP and not by masking);
* what a site trains from next round (``start``) and whether its local objective pulls
  towards the federation's model (``proximal``);
* what the coordinator makes of a round (``aggregate``): a pure function of the unmasked sum,
  the personal parts it was sent and its own persisted state, returning the next model, the
  part each site gets back, the new state and a log. No files, no keys, no clocks: the
  coordinator role reads the inputs and publishes the outcome.

Every method validates its own options (a pydantic model); they go into the signed
federation config under ``method_options``, so every site trains under the same rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from fedrema_cli.learning.modelspec import ModelSpec
from fedrema_cli.learning.params import Params, flatten, part_of, unflatten

Part = Literal["extractor", "head", "all"]


class NoOptions(BaseModel):
    """A method without options: the config's ``method_options`` must be empty."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class RoundInputs:
    """Everything the coordinator knows about a finished round, as arrays."""

    round: int
    model: Params  # the global model round ``round`` started from
    summed: np.ndarray | None  # sum over survivors of n_k * (trained_k - model) on ``shared``
    total_weight: float  # sum of n_k over the survivors
    personal: Mapping[str, Params]  # the part each survivor sealed to the coordinator
    sites: tuple[str, ...]  # the roster, in roster order
    survivors: tuple[str, ...]
    spec: ModelSpec
    rng: np.random.Generator  # public randomness (probes): seeded by federation and round


@dataclass(frozen=True)
class Outcome:
    """What a round leaves behind: published (model, personal, info) and private (state, log).

    - ``model``: the next global model. It travels at the config's broadcast width (float16
      by default, stochastically rounded), so next round's ``RoundInputs.model`` is that
      rounded copy, not exactly this.
    - ``personal``: each site's part, sealed to that site alone.
    - ``state``: kept privately at the coordinator for the next round; plain JSON (lists and
      numbers, not arrays: ``.tolist()``). ``None`` keeps the previous state unchanged.
    - ``log``: private to the coordinator (its merge log; `summarize` reads it for
      `simulate`). ``info``: merged into the signed round result **every site reads**: put
      nothing there a site may not see.
    - A ``ValueError`` from `aggregate` is reported as one line naming the method and round;
      anything else is a bug.
    """

    model: Params
    personal: dict[str, Params] = field(default_factory=dict)
    state: dict[str, Any] | None = None
    log: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    events: tuple[str, ...] = ()


def mean_update(model: Params, part: Part, summed: np.ndarray, total_weight: float) -> Params:
    """New ``part`` = old + (sum_k n_k * delta_k) / (sum_k n_k): sample-weighted FedAvg."""
    if total_weight <= 0:
        raise ValueError("the aggregate carries no sample weight")
    vec, layout = flatten(part_of(model, part))
    if summed.shape != vec.shape:
        raise ValueError(f"aggregate has {summed.shape[0]} values, the model {vec.shape[0]}")
    new = unflatten((vec + summed / total_weight).astype(np.float64), layout)
    return {**model, **{k: v.astype(np.float32) for k, v in new.items()}}


class Method:
    """The protocol every method implements; the defaults are FedAvg's."""

    name: ClassVar[str]
    summary: ClassVar[str]
    #: for the docs table (`fedrema methods --markdown`): the head a site trains from next
    #: round, and the model it deploys
    next_head: ClassVar[str] = "global head"
    deployed: ClassVar[str] = "global model"
    Options: ClassVar[type[BaseModel]] = NoOptions
    #: summed through secure aggregation; None: nothing is shared
    shared: ClassVar[Part | None] = "all"
    #: sealed to the coordinator, one site at a time; None: nothing
    personal: ClassVar[Part | None] = None
    #: ``deploy="finetune"``: after the last round, train the head alone for
    #: ``training.finetune_rounds`` rounds (default ``finetune_rounds``), under DP and in
    #: the ledger like any round
    deploy: ClassVar[Literal["next", "finetune"]] = "next"
    finetune_rounds: ClassVar[int] = 0
    #: ``"linear"``: logistic regression in place of the spec's hidden layers (tables only)
    model: ClassVar[Literal["spec", "linear"]] = "spec"
    #: False: fit the class prior, no SGD step (nothing to account)
    trains: ClassVar[bool] = True

    def __init__(self, options: BaseModel | None = None) -> None:
        self.options = options if options is not None else self.Options()

    @classmethod
    def parse_options(cls, raw: Mapping[str, Any] | None) -> BaseModel:
        """The method's options from the config (ValidationError lists every problem)."""
        return cls.Options.model_validate(dict(raw or {}))

    # -- at the site ------------------------------------------------------------------------

    def start(self, model: Params, *, own: Params | None, received: Params | None) -> Params:
        """The parameters round r trains from: the global model, by default."""
        return model

    def proximal(self) -> tuple[float, Part] | None:
        """A pull ``lam/2 * ||w - model||^2`` of one part towards the round's global model:
        (lam, part), or None."""
        return None

    # -- at the coordinator -----------------------------------------------------------------

    def aggregate(self, inputs: RoundInputs, state: Mapping[str, Any] | None) -> Outcome:
        """FedAvg of the shared part; nothing personal."""
        return Outcome(model=self.averaged(inputs))

    def averaged(self, inputs: RoundInputs) -> Params:
        """The round's model with its shared part replaced by the weighted mean update."""
        if self.shared is None or inputs.summed is None:
            return dict(inputs.model)
        return mean_update(inputs.model, self.shared, inputs.summed, inputs.total_weight)

    def summarize(self, log: list[dict[str, Any]], blocks: Mapping[str, int] | None) -> dict:
        """Statistics of the merge log for `simulate` (e.g. who was merged with whom)."""
        return {}


class PersonalHead(Method):
    """A shared extractor (summed through secure aggregation) and a personal head sealed to
    the coordinator, which sends each site a head back (FedReMa, pFedNet).

    With an ``extractor_pull`` option set, each site keeps its own extractor and is pulled
    towards the federation's mean instead of replaced by it (MR-MTL's rule for the shared
    part); the head still comes from the coordinator.
    """

    shared = "extractor"
    personal = "head"

    def start(self, model: Params, *, own: Params | None, received: Params | None) -> Params:
        pull = getattr(self.options, "extractor_pull", None)
        return personal_start(model, own=own, received=received, keep_extractor=pull is not None)

    def proximal(self) -> tuple[float, Part] | None:
        pull = getattr(self.options, "extractor_pull", None)
        return None if pull is None else (pull, "extractor")


def personal_start(
    model: Params, *, own: Params | None, received: Params | None, keep_extractor: bool
) -> Params:
    """The global model with this site's head (the one sent back, else its own), and, with
    ``keep_extractor``, its own extractor (pulled towards the mean while it trains)."""
    extractor = own_part(own, "extractor") if keep_extractor else {}
    head = received if received is not None else own_part(own, "head")
    return {**model, **extractor, **head}


def same_block_rate(pairs: Iterable[tuple[str, str]], blocks: Mapping[str, int]) -> float | None:
    """How often the sites a method paired share a known block (simulations with planted
    groups): a check that merging finds the structure. None without pairs."""
    hits = [blocks.get(a) == blocks.get(b) for a, b in pairs]
    return sum(hits) / len(hits) if hits else None


def own_part(own: Params | None, part: Part) -> Params:
    """``part`` of the site's own latest model, or nothing before its first round."""
    return part_of(own, part) if own is not None else {}
