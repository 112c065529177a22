"""Models with an explicit feature-extractor / classifier-head split, and their parameters as numpy.

FedReMa (Liang et al., ECAI 2024) shares the extractor through secure aggregation and merges the
classifier heads at the coordinator, so the split is part of the model spec that goes into the
signed federation config. Every model here is Opacus-compatible: GroupNorm, never BatchNorm,
because per-sample gradients must not mix samples.

Parameters cross party boundaries as ``dict[str, np.ndarray]`` (float32) with fully qualified
names (``extractor.0.weight``, ``head.0.bias``) and travel as safetensors, never pickles.

>>> spec = ModelSpec.mlp(in_features=13, hidden=(8,), num_classes=2)
>>> model = build_model(spec, seed=0)
>>> sorted(get_part(model, "head"))
['head.0.bias', 'head.0.weight']
>>> spec.feature_dim
8
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors import SafetensorError
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save
from torch import nn

from fedrema_cli.errors import ConfigError, IntegrityError

Part = Literal["extractor", "head", "all"]
Params = dict[str, np.ndarray]

_PARTS: tuple[str, ...] = ("extractor", "head", "all")
_HASH_DOMAIN = b"fedrema-params/1\x00"


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


def _dense(sizes: Sequence[int]) -> list[nn.Module]:
    """Linear+ReLU for each consecutive pair of sizes."""
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return layers


def _extractor(spec: ModelSpec) -> nn.Sequential:
    if spec.kind == "mlp":
        assert spec.in_features is not None
        return nn.Sequential(*_dense((spec.in_features, *spec.hidden)))
    assert spec.input_shape is not None
    c, h, w = spec.input_shape
    layers: list[nn.Module] = []
    for out in spec.channels:
        layers += [
            nn.Conv2d(c, out, kernel_size=3, padding=1),
            nn.GroupNorm(spec.norm_groups, out),
            nn.ReLU(),
        ]
        if h >= 2 and w >= 2:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        c = out
    layers.append(nn.Flatten())
    layers += _dense((c * h * w, *spec.hidden))
    return nn.Sequential(*layers)


def _head(spec: ModelSpec) -> nn.Sequential:
    sizes = (spec.feature_dim, *spec.head_hidden)
    return nn.Sequential(*_dense(sizes), nn.Linear(sizes[-1], spec.num_classes))


class SplitModel(nn.Module):
    """``head(extractor(x))``; the two halves are separate submodules so each can be exchanged."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.extractor = _extractor(spec)
        self.head = _head(spec)

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


def _check_part(part: str) -> None:
    if part not in _PARTS:
        raise ValueError(f"part must be one of {_PARTS}, got {part!r}")


def _in_part(name: str, part: str) -> bool:
    return part == "all" or name.startswith(part + ".")


def get_part(model: nn.Module, part: Part) -> Params:
    """Copy of the part's parameters as float32 numpy arrays, keys sorted by name."""
    _check_part(part)
    state = _unwrap(model).state_dict()
    return {
        name: state[name].detach().cpu().numpy().astype(np.float32, copy=True)
        for name in sorted(state)
        if _in_part(name, part)
    }


def part_shapes(spec: ModelSpec, part: Part) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a part, computed from the spec without allocating weights."""
    _check_part(part)
    return dict(_shapes(spec, part))


@functools.lru_cache(maxsize=64)
def _shapes(spec: ModelSpec, part: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    # Cached: the coordinator checks every head against the spec on every similarity row.
    with torch.device("meta"):
        model = SplitModel(spec)
    return tuple(
        (name, tuple(t.shape))
        for name, t in sorted(model.state_dict().items())
        if _in_part(name, part)
    )


def _check_params(
    params: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], what: str
) -> None:
    """Raise ConfigError naming every missing/unexpected key and the first bad shape or value."""
    missing = sorted(set(expected) - set(params))
    unexpected = sorted(set(params) - set(expected))
    if missing or unexpected:
        raise ConfigError(
            f"{what}: parameter names do not match the model spec "
            f"(missing: {missing or 'none'}; unexpected: {unexpected or 'none'})"
        )
    for name, shape in expected.items():
        arr = np.asarray(params[name])
        if tuple(arr.shape) != shape:
            raise ConfigError(f"{what}: {name} has shape {tuple(arr.shape)}, expected {shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise ConfigError(f"{what}: {name} has dtype {arr.dtype}, expected a float array")
        if not np.all(np.isfinite(arr)):
            raise ConfigError(f"{what}: {name} contains NaN or infinite values")


def set_part(model: nn.Module, part: Part, params: Mapping[str, np.ndarray]) -> None:
    """Overwrite the part's parameters in place after checking names, shapes and finiteness."""
    _check_part(part)
    inner = _unwrap(model)
    expected = {
        name: tuple(t.shape) for name, t in inner.state_dict().items() if _in_part(name, part)
    }
    _check_params(params, expected, f"set_part({part!r})")
    with torch.no_grad():
        for name, tensor in inner.state_dict(keep_vars=True).items():
            if name in expected:
                src = torch.from_numpy(np.ascontiguousarray(params[name], dtype=np.float32))
                tensor.copy_(src)


class Layout(BaseModel):
    """Where each named array lives in a flat vector; shared so vectors line up across sites."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @property
    def size(self) -> int:
        """Total number of scalars."""
        return int(sum(int(np.prod(s, dtype=np.int64)) for s in self.shapes))


def flatten(params: Mapping[str, np.ndarray]) -> tuple[np.ndarray, Layout]:
    """Concatenate arrays in sorted-name order into one float64 vector (for secure aggregation).

    Sorting makes the layout independent of dict insertion order, so two sites holding the
    same parameter names always produce vectors that add up element by element.
    """
    names = tuple(sorted(params))
    arrays = [np.asarray(params[n]) for n in names]
    layout = Layout(
        names=names,
        shapes=tuple(tuple(int(d) for d in a.shape) for a in arrays),
        dtypes=tuple(a.dtype.str for a in arrays),
    )
    if not arrays:
        return np.zeros(0, dtype=np.float64), layout
    vector = np.concatenate([a.astype(np.float64).ravel() for a in arrays])
    return vector, layout


def unflatten(vector: np.ndarray, layout: Layout) -> Params:
    """Inverse of `flatten`; arrays get back the dtype recorded in the layout."""
    vec = np.asarray(vector)
    if vec.ndim != 1 or vec.shape[0] != layout.size:
        raise ValueError(f"vector has shape {vec.shape}, layout needs ({layout.size},)")
    out: Params = {}
    offset = 0
    for name, shape, dtype in zip(layout.names, layout.shapes, layout.dtypes, strict=True):
        count = int(np.prod(shape, dtype=np.int64))
        out[name] = vec[offset : offset + count].reshape(shape).astype(np.dtype(dtype))
        offset += count
    return out


def params_hash(params: Mapping[str, np.ndarray]) -> str:
    """sha256 (hex) over sorted names, dtypes, shapes and little-endian bytes, for ledgers.

    Independent of dict order and of safetensors' file layout, so the same weights always
    hash the same wherever they were loaded from.
    """
    h = hashlib.sha256(_HASH_DOMAIN)
    for name in sorted(params):
        arr = np.asarray(params[name])
        if arr.dtype.hasobject:
            raise TypeError(f"{name}: object arrays cannot be hashed")
        arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        header = json.dumps(
            {"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape)},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        h.update(len(header).to_bytes(8, "little") + header)
        data = arr.tobytes()
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def save_params(params: Mapping[str, np.ndarray]) -> bytes:
    """Serialize to safetensors bytes (deterministic for equal inputs; no pickle involved)."""
    arrays = {}
    for name, arr in params.items():
        a = np.asarray(arr)
        if a.dtype.hasobject:
            raise TypeError(f"{name}: object arrays cannot be saved")
        arrays[name] = np.ascontiguousarray(a)
    return _st_save(arrays)


def load_params(data: bytes) -> Params:
    """Parse safetensors bytes; malformed input raises IntegrityError, never executes code."""
    try:
        loaded = _st_load(data)
    except (SafetensorError, ValueError, TypeError) as exc:
        raise IntegrityError(f"parameter blob is not valid safetensors: {exc}") from exc
    return {name: loaded[name] for name in sorted(loaded)}


_HEAD_KEY = re.compile(r"^head\.(\d+)\.(weight|bias)$")


def head_logits(
    head_params: Mapping[str, np.ndarray], spec: ModelSpec, features: np.ndarray
) -> np.ndarray:
    """Evaluate a classifier head on feature vectors ``[n, spec.feature_dim]`` in numpy (float64).

    The coordinator uses this to compare heads on a probe input (FedReMa similarity) without
    building torch models; it matches ``SplitModel.head`` up to float32 rounding.
    """
    _check_params(head_params, part_shapes(spec, "head"), "head_logits")
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != spec.feature_dim:
        raise ValueError(f"features have shape {x.shape}, expected (n, {spec.feature_dim})")
    indices = sorted({int(m.group(1)) for k in head_params if (m := _HEAD_KEY.match(k))})
    for pos, idx in enumerate(indices):
        w = np.asarray(head_params[f"head.{idx}.weight"], dtype=np.float64)
        b = np.asarray(head_params[f"head.{idx}.bias"], dtype=np.float64)
        x = x @ w.T + b
        if pos < len(indices) - 1:
            x = np.maximum(x, 0.0)
    return x
