"""The federation config: everything every party must agree on, signed by the coordinator.

It is written once by `fedrema init`, pinned by every site at `fedrema init --site`, and read
(and verified) by every command. Validation collects every problem in one message.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedrema_cli.data.tables import ImageSchema, TabularSchema
from fedrema_cli.defaults import DEFAULT_CLASS_WEIGHTING, DEFAULT_EPSILON, DEFAULT_METHOD
from fedrema_cli.errors import ConfigError, OptionError
from fedrema_cli.learning.modelspec import ModelSpec
from fedrema_cli.methods import METHODS, Method
from privacy.policy import PrivacyPolicy, grad_sample_mode_for

SCHEMA_VERSION = 2

LABEL_COUNT_NOISE = 10.0
"""Default noise multiplier of `dp_label_counts`. Composed with a site's DP-SGD steps it adds
+0.035 to epsilon at a target of 3 and +0.085 at 1 (RDP, delta 1e-5, for each of the four
heart-disease sites: one Gaussian step at q = 1 beside 20 rounds of DP-SGD), and the
inverse-frequency weights from these noisy counts scored the same balanced accuracy as
weights from the exact counts (fedrema, heart disease, epsilon 3, seeds 1-3: 0.77 and 0.76).
On its own the release would be epsilon 0.375; counted like that it would look 10x dearer."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TrainingConfig(_Frozen):
    """Local training per round; identical at every site so updates are comparable."""

    local_epochs: int = Field(default=1, ge=1, le=1000)
    batch_size: int = Field(default=16, ge=1)
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    # Head-only rounds of local training after the last round, for methods that fine-tune;
    # None: the method's own default (METHODS[...].finetune_rounds).
    finetune_rounds: int | None = Field(default=None, ge=0, le=1000)
    # Loss weight per class (`learning.training.ClassWeightedCrossEntropy`): "none"; "balanced"
    # (inverse frequency of each site's own labels; under DP from a Gaussian release of its
    # label counts, planned by the privacy policy's label_count_noise and kept in the ledger);
    # or one public weight per class, the same at every site, which costs no privacy.
    # A config without the key (written before the option existed) is unweighted, whatever
    # the command line's default (DEFAULT_CLASS_WEIGHTING) becomes.
    class_weighting: Literal["none", "balanced"] | list[float] = "none"

    @field_validator("class_weighting")
    @classmethod
    def _weights(cls, value: Any) -> Any:
        if isinstance(value, list) and (
            len(value) < 2 or not all(math.isfinite(w) and w > 0 for w in value)
        ):
            raise ValueError("class weights must be at least two positive finite numbers")
        return value


#: The coarsest fixed-point step "auto" accepts for a 2^32 sum. Rounding is stochastic
#: (unbiased), each site's error below 2^-f per coordinate of weight * delta, so the round's
#: mean delta is off by at most n * 2^-f / (total records): 1.6e-3 for 10 sites and 400
#: records at f = 4 (typically ~2e-4), below one DP-SGD step's noise (~3e-3 at lr 0.05,
#: batch 16); accuracy measured unchanged (docs/operations.md, "Communication").
MIN_FRAC_BITS = 4


class SecAggConfig(_Frozen):
    """Secure aggregation (Bonawitz et al. 2017) parameters; on by default.

    ``threshold`` t: how many sites must survive a round (default ``max(2, floor(2n/3) + 1)``,
    fixed at approval). Fixed point: values are clipped to ``clip`` per coordinate, scaled by
    ``2**frac_bits`` and summed mod ``2**modulus_bits``; the headroom rule
    ``n * max_weight * clip * 2**frac_bits < 2**(modulus_bits - 1)`` is checked at approval.
    ``modulus_bits="auto"`` (the default) derives the width from this signed config and the
    signed roster's n (`crypto.secagg.choose_width`): the narrowest of 2^24 (3 bytes per
    masked coordinate) and 2^32 (4 bytes) where the finest ``frac_bits`` the rule allows is
    at least ``min_frac_bits``; else 2^64 (8 bytes) with ``frac_bits``. 24 or 32 fix the
    width, with the finest ``frac_bits`` up to ``frac_bits`` the rule allows at it; 64 fixes
    it with ``frac_bits``, as federations made before "auto" do. 2^24 needs tight public
    bounds: ``max_weight`` (the most records any site trains on) and ``clip`` (per
    coordinate of the update).

    ``consistency_check``: Bonawitz et al.'s round 3 for an actively malicious coordinator:
    before revealing anything, each survivor signs the survivor set it was shown and waits
    until t survivors have signed the *same* set; a coordinator (or storage) that shows
    different sets to different sites is caught and nothing is revealed. It costs one more
    `submit` per round.
    """

    enabled: bool = True
    consistency_check: bool = False
    threshold: int | None = Field(default=None, ge=2)
    modulus_bits: Literal["auto", 24, 32, 64] = "auto"
    frac_bits: int = Field(default=24, ge=4, le=40)
    min_frac_bits: int = Field(default=MIN_FRAC_BITS, ge=1, le=30)
    clip: float = Field(default=64.0, gt=0)
    max_weight: int = Field(default=100_000, ge=1)


class RoundConfig(_Frozen):
    """When the coordinator stops waiting: all expected sites acted, or the deadline passed."""

    timeout_seconds: float = Field(default=24 * 3600.0, gt=0)


class CoordinatorKeys(_Frozen):
    sign_pk: str
    seal_pk: str


class FederationConfig(_Frozen):
    """The signed contract of a federation."""

    schema_version: Literal[1, 2] = SCHEMA_VERSION
    federation_id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]
    method: str = DEFAULT_METHOD
    #: the method's own options, validated by its Options model (see fedrema_cli.methods)
    method_options: dict[str, Any] = Field(default_factory=dict)
    rounds: int = Field(default=20, ge=1, le=10_000)
    seed: int = 0
    model: ModelSpec
    data: TabularSchema | ImageSchema
    training: TrainingConfig = TrainingConfig()
    secagg: SecAggConfig = SecAggConfig()
    round: RoundConfig = RoundConfig()
    privacy: PrivacyPolicy | None = None
    #: the width the global model travels in: float16 (stochastically rounded: half the bytes
    #: of every model download, accuracy measured unchanged) or float32 (every federation
    #: created before the choice existed)
    broadcast: Literal["float32", "float16"] = "float32"
    coordinator: CoordinatorKeys

    @model_validator(mode="before")
    @classmethod
    def _from_schema_1(cls, data: Any) -> Any:
        """Schema 1 kept FedReMa's knobs in a ``fedrema`` section, used by the FedReMa
        methods only; a federation created then still loads, with the same rules."""
        if isinstance(data, dict) and "fedrema" in data and "method_options" not in data:
            data = dict(data)
            section = data.pop("fedrema")
            if data.get("method") == "fedrema":
                data["method_options"] = section
        return data

    @model_validator(mode="after")
    def _check(self) -> FederationConfig:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        try:
            METHODS[self.method].parse_options(self.method_options)
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()
            )
            raise ValueError(f"method_options for {self.method}: {problems}") from None
        expected = self.data.num_classes
        if self.model.num_classes != expected:
            raise ValueError(f"model has {self.model.num_classes} classes, data has {expected}")
        if isinstance(self.data, TabularSchema):
            if self.model.kind != "mlp" or self.model.in_features != self.data.num_features:
                raise ValueError(
                    "a table needs an 'mlp' model with in_features = number of features"
                )
        elif self.model.kind != "cnn" or self.model.input_shape != self.data.input_shape:
            raise ValueError("images need a 'cnn' model with the data's input_shape")
        weighting = self.training.class_weighting
        if isinstance(weighting, list) and len(weighting) != expected:
            raise ValueError(
                f"training.class_weighting has {len(weighting)} weights for {expected} classes"
            )
        p = self.privacy
        releases = weighting == "balanced" and METHODS[self.method].trains
        if p is not None and (p.label_count_noise is not None) != releases:
            raise ValueError(
                "the privacy policy must plan a label-count release (label_count_noise) exactly "
                "when training.class_weighting is 'balanced' and the method trains"
            )
        if p is not None and (p.local_epochs, p.batch_size, p.planned_rounds) != (
            self.training.local_epochs,
            self.training.batch_size,
            self.rounds + finetune_rounds(self),
        ):
            raise ValueError(
                "the privacy policy must plan the federation's own rounds (plus its "
                "fine-tuning rounds), local epochs and batch size"
            )
        return self

    @property
    def secure(self) -> bool:
        """Whether updates go through secure aggregation (and there is anything to sum)."""
        return self.secagg.enabled and METHODS[self.method].shared is not None

    def method_impl(self) -> Method:
        """The federation's method, with its validated options."""
        cls = METHODS[self.method]
        return cls(cls.parse_options(self.method_options))


def parse_config(data: Any, *, where: str) -> FederationConfig:
    """Validate a config dict; every problem is listed in one ConfigError."""
    try:
        return FederationConfig.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
            for err in e.errors()
        )
        raise ConfigError(f"{where}: {problems}") from None


#: The command-line option behind a settings field, for errors a person can act on.
OPTIONS = {
    "target_epsilon": "--epsilon",
    "delta": "--delta",
    "max_grad_norm": "--max-grad-norm",
    "lr": "--lr",
    "local_epochs": "--epochs",
    "batch_size": "--batch-size",
    "finetune_rounds": "--finetune-rounds",
    "class_weighting": "--class-weighting",
    "threshold": "--threshold",
    "timeout_seconds": "--round-timeout",
    "rounds": "--rounds",
}


@contextmanager
def checked_options() -> Iterator[None]:
    """Report settings built from command-line values that do not validate as one line."""
    try:
        yield
    except ValidationError as e:
        problems = "; ".join(
            f"{OPTIONS.get(str(err['loc'][-1]), '.'.join(map(str, err['loc'])))}: "
            f"{err['msg'][:1].lower()}{err['msg'][1:]}"
            + (f" (got {err['input']!r})" if not isinstance(err["input"], dict) else "")
            if err["loc"]
            else err["msg"]
            for err in e.errors()
        )
        raise OptionError(problems) from None


def parse_class_weighting(text: str | None) -> Literal["none", "balanced"] | list[float]:
    """The --class-weighting value: none, balanced, or comma-separated weights."""
    if text is None:
        return DEFAULT_CLASS_WEIGHTING  # type: ignore[return-value]
    value = text.strip().lower()
    if value in ("none", "balanced"):
        return value  # type: ignore[return-value]
    try:
        return [float(w) for w in value.split(",")]
    except ValueError:
        raise OptionError(
            f"--class-weighting {text!r}: use none, balanced, or one weight per class (e.g. 1,4)"
        ) from None


def target_epsilon(epsilon: float | None, *, no_dp: bool) -> float | None:
    """The budget --epsilon and --no-dp ask for (None: no DP); both at once are refused."""
    if no_dp and epsilon is not None:
        raise OptionError("--no-dp and --epsilon contradict each other")
    if no_dp:
        return None
    return DEFAULT_EPSILON if epsilon is None else epsilon


def finetune_rounds(config: FederationConfig) -> int:
    """Head-only rounds each site trains after the last round (0 unless the method fine-tunes)."""
    return method_finetune_rounds(config.method, config.training)


def method_finetune_rounds(method: str, training: TrainingConfig) -> int:
    chosen = METHODS.get(method)
    if chosen is None or chosen.deploy != "finetune":
        return 0
    if training.finetune_rounds is None:
        return chosen.finetune_rounds
    return training.finetune_rounds


def default_threshold(n_sites: int) -> int:
    """Bonawitz-style default t = max(2, floor(2n/3) + 1), capped at n."""
    return min(n_sites, max(2, (2 * n_sites) // 3 + 1))


def linear_model(model: ModelSpec) -> ModelSpec:
    """The spec's logistic-regression counterpart: no hidden layers (tabular data only)."""
    if model.kind != "mlp" or model.in_features is None:
        raise ConfigError("a logistic-regression method needs tabular data (an 'mlp' model)")
    return ModelSpec.mlp(in_features=model.in_features, hidden=(), num_classes=model.num_classes)


def make_config(
    *,
    federation_id: str,
    model: ModelSpec,
    data: TabularSchema | ImageSchema,
    method: str = DEFAULT_METHOD,
    rounds: int = 20,
    seed: int = 0,
    training: TrainingConfig | None = None,
    secure_aggregation: bool = True,
    consistency_check: bool = False,
    threshold: int | None = None,
    timeout_seconds: float = 24 * 3600.0,
    epsilon: float | None = None,
    delta: float = 1e-5,
    max_grad_norm: float = 1.0,
    accountant: str = "rdp",
    method_options: dict[str, Any] | None = None,
    modulus_bits: Literal["auto", 24, 32, 64] = "auto",
    secagg_clip: float | None = None,
    max_weight: int | None = None,
    broadcast: Literal["float32", "float16"] = "float16",
) -> dict[str, Any]:
    """A federation config (without the coordinator's keys) from the usual choices.

    ``epsilon=None`` turns differential privacy off; otherwise the privacy policy plans the
    federation's own rounds, local epochs and batch size.
    """
    training = training or TrainingConfig()
    chosen = METHODS.get(method)  # an unknown method is reported by the config's validation
    if chosen is not None and chosen.model == "linear":
        model = linear_model(model)
    privacy = None
    if epsilon is not None:
        releases = training.class_weighting == "balanced" and chosen is not None and chosen.trains
        privacy = PrivacyPolicy(
            label_count_noise=LABEL_COUNT_NOISE if releases else None,
            target_epsilon=epsilon,
            delta=delta,
            accountant=accountant,
            max_grad_norm=max_grad_norm,
            planned_rounds=rounds + method_finetune_rounds(method, training),
            local_epochs=training.local_epochs,
            batch_size=training.batch_size,
            grad_sample_mode=grad_sample_mode_for(model.kind),  # the fastest for this kind
        )
    return {
        "federation_id": federation_id,
        "method": method,
        "rounds": rounds,
        "seed": seed,
        "model": model.model_dump(mode="json"),
        "data": data.model_dump(mode="json"),
        "training": training.model_dump(mode="json"),
        "secagg": SecAggConfig(
            enabled=secure_aggregation,
            threshold=threshold,
            consistency_check=consistency_check,
            modulus_bits=modulus_bits,
            **({} if secagg_clip is None else {"clip": secagg_clip}),
            **({} if max_weight is None else {"max_weight": max_weight}),
        ).model_dump(mode="json"),
        "round": RoundConfig(timeout_seconds=timeout_seconds).model_dump(mode="json"),
        "method_options": dict(method_options or {}),
        "privacy": privacy.model_dump(mode="json") if privacy else None,
        "broadcast": broadcast,
    }
