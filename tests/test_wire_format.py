"""The wire format every party derives from the signed config (#11): the masked sum's width
and the model's float width, and what federations made before these choices keep."""

from __future__ import annotations

from fedrema_cli.config import FederationConfig, make_config
from fedrema_cli.data.datasets import get_dataset
from fedrema_cli.protocol.secagg import width

HEART = get_dataset("heart-disease")
KEYS = {"coordinator": {"sign_pk": "s", "seal_pk": "p"}}


def _config(**kw: object) -> FederationConfig:
    raw = make_config(federation_id="x", model=HEART.model_spec, data=HEART.schema, **kw)
    return FederationConfig.model_validate({**raw, **KEYS})


def test_new_federations_sum_at_2_32_when_the_headroom_rule_allows() -> None:
    config = _config()
    assert config.secagg.modulus_bits == "auto" and config.broadcast == "float16"
    assert width(config, 4) == (32, 6)
    assert width(config, 10) == (32, 5)
    assert width(config, 100) == (64, 24)  # f would be 2 < 4: the wide sum
    assert width(_config(modulus_bits=64), 4) == (64, 24)


def test_a_config_signed_before_keeps_its_width_and_float32_models() -> None:
    raw = {**make_config(federation_id="x", model=HEART.model_spec, data=HEART.schema), **KEYS}
    del raw["broadcast"]
    raw["secagg"] = {**raw["secagg"], "modulus_bits": 64}
    del raw["secagg"]["min_frac_bits"]
    old = FederationConfig.model_validate(raw)
    assert old.broadcast == "float32"
    assert width(old, 4) == (64, 24)
