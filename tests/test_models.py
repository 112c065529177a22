"""Models: Opacus compatibility, the extractor/head split and parameter I/O."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator
from pydantic import ValidationError

from fedrema_cli.errors import ConfigError, IntegrityError
from fedrema_cli.learning.models import SplitModel, build_model, get_part, set_part
from fedrema_cli.learning.modelspec import ModelSpec, part_shapes
from fedrema_cli.learning.params import (
    Layout,
    flatten,
    head_logits,
    load_params,
    params_hash,
    save_params,
    unflatten,
)

MLP = ModelSpec.mlp(in_features=13, hidden=(32, 16), num_classes=2)
MLP_DEEP_HEAD = ModelSpec.mlp(in_features=13, hidden=(16,), num_classes=3, head_hidden=(8, 4))
LOGREG = ModelSpec.mlp(in_features=13, hidden=(), num_classes=2)
CNN = ModelSpec.cnn(input_shape=(1, 8, 8), channels=(16, 32), hidden=(64,), num_classes=10)
CNN_RGB = ModelSpec.cnn(
    input_shape=(3, 12, 10), channels=(8, 8, 16), num_classes=5, head_hidden=(12,)
)
SPECS = [MLP, MLP_DEEP_HEAD, LOGREG, CNN, CNN_RGB]
IDS = ["mlp", "mlp-deep-head", "logreg", "cnn", "cnn-rgb"]


def _batch(spec: ModelSpec, n: int = 5) -> torch.Tensor:
    return torch.randn(n, *spec.input_dims, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_opacus_validator_strict_passes(spec: ModelSpec) -> None:
    model = build_model(spec, seed=0)
    assert ModuleValidator.validate(model, strict=True) == []
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_forward_shapes_and_feature_dim(spec: ModelSpec) -> None:
    model = build_model(spec, seed=0)
    x = _batch(spec)
    assert model.extractor(x).shape == (5, spec.feature_dim)
    assert model(x).shape == (5, spec.num_classes)


def test_feature_dims() -> None:
    assert MLP.feature_dim == 16
    assert LOGREG.feature_dim == 13
    assert CNN.conv_output_shape == (32, 2, 2)
    assert CNN.feature_dim == 64
    assert CNN_RGB.conv_output_shape == (16, 1, 1)  # 12x10 → 6x5 → 3x2 → 1x1
    assert CNN_RGB.feature_dim == 16


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
@pytest.mark.parametrize("spec", [MLP, CNN], ids=["mlp", "cnn"])
def test_per_sample_gradients_through_opacus(spec: ModelSpec) -> None:
    gsm = GradSampleModule(build_model(spec, seed=0))
    x = _batch(spec, n=4)
    loss = torch.nn.functional.cross_entropy(gsm(x), torch.zeros(4, dtype=torch.long))
    loss.backward()
    for name, p in gsm.named_parameters():
        assert p.grad_sample is not None, name
        assert p.grad_sample.shape == (4, *p.shape)
    # Parameter I/O sees through the Opacus wrapper.
    assert get_part(gsm, "head").keys() == get_part(build_model(spec, seed=0), "head").keys()


def test_build_is_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = get_part(build_model(CNN, seed=7), "all")
    assert torch.equal(torch.rand(1), expected_next)
    b = get_part(build_model(CNN, seed=7), "all")
    c = get_part(build_model(CNN, seed=8), "all")
    assert params_hash(a) == params_hash(b)
    assert params_hash(a) != params_hash(c)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_parts_partition_the_model(spec: ModelSpec) -> None:
    model = build_model(spec, seed=0)
    ext, head, full = (get_part(model, p) for p in ("extractor", "head", "all"))
    assert all(k.startswith("extractor.") for k in ext)
    assert all(k.startswith("head.") for k in head)
    assert full.keys() == ext.keys() | head.keys()
    assert list(full) == sorted(full)
    assert all(v.dtype == np.float32 for v in full.values())
    for part, params in (("extractor", ext), ("head", head), ("all", full)):
        assert {k: v.shape for k, v in params.items()} == part_shapes(spec, part)


def test_get_part_returns_copies() -> None:
    model = build_model(MLP, seed=0)
    params = get_part(model, "head")
    params["head.0.bias"][:] = 99.0
    assert not np.any(get_part(model, "head")["head.0.bias"] == 99.0)


@pytest.mark.parametrize("part", ["extractor", "head", "all"])
def test_set_part_round_trip(part: str) -> None:
    source = build_model(CNN, seed=1)
    target = build_model(CNN, seed=2)
    other = "head" if part == "extractor" else "extractor"
    untouched = get_part(target, other)
    set_part(target, part, get_part(source, part))
    assert params_hash(get_part(target, part)) == params_hash(get_part(source, part))
    if part != "all":
        assert params_hash(get_part(target, other)) == params_hash(untouched)
    x = _batch(CNN)
    if part == "all":
        assert torch.equal(source(x), target(x))


def test_set_part_accepts_float64_and_casts() -> None:
    model = build_model(MLP, seed=0)
    params = {k: v.astype(np.float64) + 1.0 for k, v in get_part(model, "head").items()}
    set_part(model, "head", params)
    assert np.allclose(get_part(model, "head")["head.0.bias"], params["head.0.bias"])


def test_set_part_rejects_bad_params_with_clear_errors() -> None:
    model = build_model(MLP, seed=0)
    head = get_part(model, "head")
    with pytest.raises(ConfigError, match=r"missing: \['head.0.bias'\]"):
        set_part(model, "head", {"head.0.weight": head["head.0.weight"]})
    with pytest.raises(ConfigError, match=r"unexpected: \['head.9.weight'\]"):
        set_part(model, "head", {**head, "head.9.weight": head["head.0.weight"]})
    with pytest.raises(ConfigError, match=r"head.0.weight has shape \(2, 15\), expected \(2, 16\)"):
        set_part(model, "head", {**head, "head.0.weight": np.zeros((2, 15), np.float32)})
    with pytest.raises(ConfigError, match="NaN"):
        set_part(model, "head", {**head, "head.0.bias": np.array([np.nan, 0], np.float32)})
    with pytest.raises(ConfigError, match="dtype"):
        set_part(model, "head", {**head, "head.0.bias": np.array([1, 0], np.int64)})
    with pytest.raises(ValueError, match="part must be one of"):
        get_part(model, "classifier")  # type: ignore[arg-type]
    # Nothing was written by the failed calls.
    assert params_hash(get_part(model, "head")) == params_hash(head)


def test_flatten_unflatten_round_trip_and_order_independence() -> None:
    params = get_part(build_model(CNN, seed=3), "all")
    vector, layout = flatten(params)
    assert vector.dtype == np.float64
    assert vector.shape == (layout.size,) == (sum(v.size for v in params.values()),)
    back = unflatten(vector, layout)
    assert list(back) == list(params)
    for k in params:
        assert back[k].dtype == np.float32
        np.testing.assert_array_equal(back[k], params[k])
    reordered = dict(reversed(list(params.items())))
    vector2, layout2 = flatten(reordered)
    np.testing.assert_array_equal(vector, vector2)
    assert layout == layout2
    # The layout travels in JSON.
    assert Layout.model_validate_json(layout.model_dump_json()) == layout
    with pytest.raises(ValueError, match="layout needs"):
        unflatten(vector[:-1], layout)


def test_flatten_empty() -> None:
    vector, layout = flatten({})
    assert vector.shape == (0,)
    assert unflatten(vector, layout) == {}


def test_params_hash_is_stable() -> None:
    params = {
        "head.0.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
        "head.0.bias": np.array([0.5, -1.0], dtype=np.float32),
    }
    # Golden value: the ledger format must not drift between releases.
    assert params_hash(params) == "d08535d24841a3edf8b31bcaeeb6ba705c6e08a30b1a1c2c5fa15deeae0c69ed"
    assert params_hash(dict(reversed(list(params.items())))) == params_hash(params)
    big_endian = {k: v.astype(">f4") for k, v in params.items()}
    assert params_hash(big_endian) == params_hash(params)
    changed = {**params, "head.0.bias": np.array([0.5, -1.0000001], dtype=np.float32)}
    assert params_hash(changed) != params_hash(params)
    reshaped = {**params, "head.0.weight": params["head.0.weight"].reshape(3, 2)}
    assert params_hash(reshaped) != params_hash(params)
    as_f64 = {k: v.astype(np.float64) for k, v in params.items()}
    assert params_hash(as_f64) != params_hash(params)


def test_safetensors_round_trip() -> None:
    params = get_part(build_model(MLP_DEEP_HEAD, seed=0), "all")
    blob = save_params(params)
    assert isinstance(blob, bytes)
    assert save_params(dict(reversed(list(params.items())))) == blob  # deterministic bytes
    back = load_params(blob)
    assert list(back) == sorted(params)
    assert params_hash(back) == params_hash(params)
    model = build_model(MLP_DEEP_HEAD, seed=9)
    set_part(model, "all", back)
    assert params_hash(get_part(model, "all")) == params_hash(params)


def test_load_params_rejects_garbage() -> None:
    with pytest.raises(IntegrityError, match="not valid safetensors"):
        load_params(b"\x80\x04\x95 definitely not safetensors")
    blob = save_params({"a": np.zeros(3, np.float32)})
    with pytest.raises(IntegrityError):
        load_params(blob[:-4])


@pytest.mark.parametrize("spec", [MLP, MLP_DEEP_HEAD, LOGREG, CNN, CNN_RGB], ids=IDS)
def test_head_logits_matches_torch_head(spec: ModelSpec) -> None:
    model = build_model(spec, seed=4)
    rng = np.random.default_rng(0)
    probe = rng.uniform(0.0, 0.5, size=(7, spec.feature_dim))  # FedReMa's default probe
    with torch.no_grad():
        expected = model.head(torch.from_numpy(probe).float()).numpy()
    got = head_logits(get_part(model, "head"), spec, probe)
    assert got.shape == (7, spec.num_classes)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_head_logits_checks_inputs() -> None:
    head = get_part(build_model(MLP, seed=0), "head")
    with pytest.raises(ValueError, match=r"expected \(n, 16\)"):
        head_logits(head, MLP, np.zeros((2, 13)))
    with pytest.raises(ConfigError, match="missing"):
        head_logits({"head.0.weight": head["head.0.weight"]}, MLP, np.zeros((2, 16)))


def test_spec_json_round_trip_and_validation() -> None:
    for spec in SPECS:
        again = ModelSpec.model_validate_json(spec.model_dump_json())
        assert again == spec
        assert again.feature_dim == spec.feature_dim
    with pytest.raises(ValidationError, match="input_shape"):
        ModelSpec(kind="cnn", channels=(8,), num_classes=2)
    with pytest.raises(ValidationError, match="divisible"):
        ModelSpec.cnn(input_shape=(1, 8, 8), channels=(6,), num_classes=2)
    with pytest.raises(ValidationError, match="in_features"):
        ModelSpec(kind="mlp", num_classes=2)
    with pytest.raises(ValidationError):
        ModelSpec.mlp(in_features=3, hidden=(0,), num_classes=2)
    with pytest.raises(ValidationError):
        ModelSpec.model_validate({"kind": "mlp", "in_features": 3, "num_classes": 2, "x": 1})
    with pytest.raises(ValidationError):
        MLP.num_classes = 3  # type: ignore[misc]  # frozen


def test_split_model_is_head_of_extractor() -> None:
    model = build_model(MLP, seed=0)
    assert isinstance(model, SplitModel)
    x = _batch(MLP)
    assert torch.equal(model(x), model.head(model.extractor(x)))
    assert torch.equal(model.features(x), model.extractor(x))
