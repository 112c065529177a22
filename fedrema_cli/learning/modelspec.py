"""What a model is, without torch: the spec (signed in the federation config) and its layers.

Parties that never train (the coordinator, `submit`, `status`) need the model's parameter
names and shapes, not torch; this module gives them from the spec alone, and
`fedrema_cli.learning.models` builds the torch modules from the same layer plan, so the two cannot
disagree. FedReMa (Liang et al., ECAI 2024) shares the extractor and merges the classifier
heads, so the split is part of the spec. Every layer is Opacus-compatible (GroupNorm, never
BatchNorm: per-sample gradients must not mix samples).

>>> spec = ModelSpec.mlp(in_features=13, hidden=(8,), num_classes=2)
>>> part_shapes(spec, "head")
{'head.0.bias': (2,), 'head.0.weight': (2, 8)}
>>> spec.feature_dim
8
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Part = Literal["extractor", "head", "all"]
PARTS: tuple[str, ...] = ("extractor", "head", "all")


class ModelSpec(BaseModel):
    """What to build: architecture, sizes and the extractor/head split (JSON, signed in config).

    ``kind="mlp"`` (tabular): extractor = ``Linear+ReLU`` per entry of ``hidden`` (empty: the
    extractor is the identity and the head alone is a linear/logistic model, as in FLamby).
    ``kind="cnn"`` (images, ``input_shape`` = C×H×W): per entry of ``channels`` a 3×3 conv,
    GroupNorm, ReLU and a 2×2 max-pool while the map is at least 2×2; then flatten and
    ``Linear+ReLU`` per entry of ``hidden``. The head is ``Linear+ReLU`` per entry of
    ``head_hidden`` followed by the final ``Linear(…, num_classes)``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["mlp", "cnn"]
    num_classes: int = Field(ge=2)
    hidden: tuple[int, ...] = ()
    head_hidden: tuple[int, ...] = ()
    in_features: int | None = Field(default=None, ge=1)
    input_shape: tuple[int, int, int] | None = None
    channels: tuple[int, ...] = ()
    norm_groups: int = Field(default=4, ge=1)

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        for name in ("hidden", "head_hidden", "channels"):
            if any(v < 1 for v in getattr(self, name)):
                raise ValueError(f"{name} sizes must be positive, got {getattr(self, name)}")
        if self.kind == "mlp":
            if self.in_features is None:
                raise ValueError("an 'mlp' spec needs in_features")
            if self.input_shape is not None or self.channels:
                raise ValueError("input_shape and channels are for 'cnn' specs only")
        else:
            if self.input_shape is None:
                raise ValueError("a 'cnn' spec needs input_shape (C, H, W)")
            if any(v < 1 for v in self.input_shape):
                raise ValueError(f"input_shape must be positive, got {self.input_shape}")
            if self.in_features is not None:
                raise ValueError("in_features is for 'mlp' specs only; use input_shape")
            if not self.channels:
                raise ValueError("a 'cnn' spec needs at least one entry in channels")
            bad = [c for c in self.channels if c % self.norm_groups]
            if bad:
                raise ValueError(
                    f"GroupNorm needs channels divisible by norm_groups={self.norm_groups}, "
                    f"got {bad}"
                )
        return self

    @classmethod
    def mlp(
        cls,
        *,
        in_features: int,
        hidden: Sequence[int],
        num_classes: int,
        head_hidden: Sequence[int] = (),
    ) -> ModelSpec:
        """Spec of a tabular MLP."""
        return cls(
            kind="mlp",
            in_features=in_features,
            hidden=tuple(hidden),
            num_classes=num_classes,
            head_hidden=tuple(head_hidden),
        )

    @classmethod
    def cnn(
        cls,
        *,
        input_shape: tuple[int, int, int],
        channels: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (),
        head_hidden: Sequence[int] = (),
        norm_groups: int = 4,
    ) -> ModelSpec:
        """Spec of a small image CNN with GroupNorm."""
        return cls(
            kind="cnn",
            input_shape=input_shape,
            channels=tuple(channels),
            num_classes=num_classes,
            hidden=tuple(hidden),
            head_hidden=tuple(head_hidden),
            norm_groups=norm_groups,
        )

    @property
    def conv_output_shape(self) -> tuple[int, int, int]:
        """C×H×W after the convolutional blocks (CNN only)."""
        if self.input_shape is None:
            raise ValueError("conv_output_shape is defined for 'cnn' specs only")
        _, h, w = self.input_shape
        for _ in self.channels:
            if h >= 2 and w >= 2:
                h, w = h // 2, w // 2
        return (self.channels[-1], h, w)

    @property
    def feature_dim(self) -> int:
        """Width of the extractor's output, i.e. of the vectors the head consumes."""
        if self.hidden:
            return self.hidden[-1]
        if self.kind == "mlp":
            assert self.in_features is not None
            return self.in_features
        c, h, w = self.conv_output_shape
        return c * h * w

    @property
    def input_dims(self) -> tuple[int, ...]:
        """Shape of one input sample (without the batch axis)."""
        if self.kind == "mlp":
            assert self.in_features is not None
            return (self.in_features,)
        assert self.input_shape is not None
        return self.input_shape


@dataclass(frozen=True)
class Layer:
    """One entry of a part's ``nn.Sequential``; its index is its position in the plan."""

    kind: Literal["linear", "conv", "groupnorm", "relu", "maxpool", "flatten"]
    size_in: int = 0
    size_out: int = 0
    groups: int = 0

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        if self.kind == "linear":
            return {"weight": (self.size_out, self.size_in), "bias": (self.size_out,)}
        if self.kind == "conv":
            return {"weight": (self.size_out, self.size_in, 3, 3), "bias": (self.size_out,)}
        if self.kind == "groupnorm":
            return {"weight": (self.size_out,), "bias": (self.size_out,)}
        return {}


def _dense(sizes: Sequence[int]) -> list[Layer]:
    """Linear+ReLU for each consecutive pair of sizes."""
    out: list[Layer] = []
    for a, b in itertools.pairwise(sizes):
        out += [Layer("linear", a, b), Layer("relu")]
    return out


def layer_plan(spec: ModelSpec, part: Literal["extractor", "head"]) -> tuple[Layer, ...]:
    """The layers of the extractor or the head, in order."""
    if part == "head":
        sizes = (spec.feature_dim, *spec.head_hidden)
        return (*_dense(sizes), Layer("linear", sizes[-1], spec.num_classes))
    if spec.kind == "mlp":
        assert spec.in_features is not None
        return tuple(_dense((spec.in_features, *spec.hidden)))
    assert spec.input_shape is not None
    c, h, w = spec.input_shape
    layers: list[Layer] = []
    for out in spec.channels:
        layers += [
            Layer("conv", c, out),
            Layer("groupnorm", out, out, spec.norm_groups),
            Layer("relu"),
        ]
        if h >= 2 and w >= 2:
            layers.append(Layer("maxpool"))
            h, w = h // 2, w // 2
        c = out
    layers.append(Layer("flatten"))
    layers += _dense((c * h * w, *spec.hidden))
    return tuple(layers)


@lru_cache(maxsize=64)
def _shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for part in ("extractor", "head"):
        for i, layer in enumerate(layer_plan(spec, part)):  # type: ignore[arg-type]
            for suffix, shape in layer.param_shapes().items():
                shapes[f"{part}.{i}.{suffix}"] = shape
    return dict(sorted(shapes.items()))


def in_part(name: str, part: str) -> bool:
    return part == "all" or name.startswith(part + ".")


def check_part(part: str) -> None:
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")


def part_shapes(spec: ModelSpec, part: Part) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a part's parameters, sorted by name, from the spec alone."""
    check_part(part)
    return {n: s for n, s in _shapes(spec).items() if in_part(n, part)}


def part_size(spec: ModelSpec, part: Part) -> int:
    """Number of scalars in a part."""
    total = 0
    for shape in part_shapes(spec, part).values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total
