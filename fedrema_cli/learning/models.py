"""The torch side of a model: build it from its spec, read and write its parts as numpy.

The layers come from `fedrema_cli.learning.modelspec.layer_plan`, the same plan that gives parameter
names and shapes to the parties that never load torch.

>>> from fedrema_cli.learning.modelspec import ModelSpec
>>> model = build_model(ModelSpec.mlp(in_features=13, hidden=(8,), num_classes=2), seed=0)
>>> sorted(get_part(model, "head"))
['head.0.bias', 'head.0.weight']
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from fedrema_cli.learning.modelspec import Layer, ModelSpec, Part, check_part, in_part, layer_plan
from fedrema_cli.learning.params import Params, check_params


def _module(layer: Layer) -> nn.Module:
    if layer.kind == "linear":
        return nn.Linear(layer.size_in, layer.size_out)
    if layer.kind == "conv":
        return nn.Conv2d(layer.size_in, layer.size_out, kernel_size=3, padding=1)
    if layer.kind == "groupnorm":
        return nn.GroupNorm(layer.groups, layer.size_out)
    if layer.kind == "relu":
        return nn.ReLU()
    if layer.kind == "maxpool":
        return nn.MaxPool2d(2)
    return nn.Flatten()


class SplitModel(nn.Module):
    """``head(extractor(x))``; the two halves are separate submodules so each can be exchanged."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.extractor = nn.Sequential(*map(_module, layer_plan(spec, "extractor")))
        self.head = nn.Sequential(*map(_module, layer_plan(spec, "head")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.extractor(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The extractor's output (used for class prototypes)."""
        return self.extractor(x)


def build_model(spec: ModelSpec, *, seed: int) -> SplitModel:
    """Build the model with a deterministic initialisation that leaves the global RNG untouched.

    Every site must start from the same weights; the seed is part of the federation config.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SplitModel(spec)
    return model


def _unwrap(model: nn.Module) -> SplitModel:
    """The SplitModel inside an Opacus ``GradSampleModule`` (or the model itself)."""
    inner: nn.Module = model
    while not isinstance(inner, SplitModel) and isinstance(
        getattr(inner, "_module", None), nn.Module
    ):
        inner = inner._module  # type: ignore[assignment]
    if not isinstance(inner, SplitModel):
        raise TypeError(f"expected a SplitModel, got {type(model).__name__}")
    return inner


def get_part(model: nn.Module, part: Part) -> Params:
    """Copy of the part's parameters as float32 numpy arrays, keys sorted by name."""
    check_part(part)
    state = _unwrap(model).state_dict()
    return {
        name: state[name].detach().cpu().numpy().astype(np.float32, copy=True)
        for name in sorted(state)
        if in_part(name, part)
    }


def set_part(model: nn.Module, part: Part, params: Mapping[str, np.ndarray]) -> None:
    """Overwrite the part's parameters in place after checking names, shapes and finiteness."""
    check_part(part)
    inner = _unwrap(model)
    expected = {
        name: tuple(t.shape) for name, t in inner.state_dict().items() if in_part(name, part)
    }
    check_params(params, expected, f"set_part({part!r})")
    with torch.no_grad():
        for name, tensor in inner.state_dict(keep_vars=True).items():
            if name in expected:
                tensor.copy_(torch.from_numpy(np.ascontiguousarray(params[name], dtype=np.float32)))
