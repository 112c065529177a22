"""Model parameters as numpy: flat vectors, hashes, safetensors bytes, a numpy head forward.

Parameters cross party boundaries as ``dict[str, np.ndarray]`` (float32) with fully qualified
names (``extractor.0.weight``, ``head.0.bias``) and travel as safetensors, never pickles.
No torch here: the coordinator and the protocol steps do not need it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict
from safetensors import SafetensorError
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from fedrema_cli.errors import ConfigError, IntegrityError
from fedrema_cli.learning.modelspec import ModelSpec, part_shapes

Params = dict[str, np.ndarray]

_HASH_DOMAIN = b"fedrema-params/1\x00"


def check_params(
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


def part_of(params: Mapping[str, np.ndarray], part: str) -> Params:
    """The arrays of one part of a split model (``"all"``: every array)."""
    return {k: v for k, v in params.items() if part == "all" or k.startswith(part + ".")}


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
    check_params(head_params, part_shapes(spec, "head"), "head_logits")
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
