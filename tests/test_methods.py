"""The method seam: each method's pure aggregate, its start rule and options, and the registry
that every other list of methods (CLI help, docs table, benchmark) comes from."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from fedrema_cli.config import FederationConfig, make_config, parse_config
from fedrema_cli.data.datasets import get_dataset
from fedrema_cli.errors import ConfigError, UsageError
from fedrema_cli.learning.models import build_model, get_part
from fedrema_cli.learning.params import flatten, part_of
from fedrema_cli.methods import METHODS, RoundInputs, parse_method_options
from fedrema_cli.methods.base import mean_update

ROOT = Path(__file__).resolve().parents[1]
HEART = get_dataset("heart-disease")
SITES = ("a", "b", "c", "d")


def model(seed: int) -> dict[str, np.ndarray]:
    return get_part(build_model(HEART.model_spec, seed=seed), "all")


def inputs(method: str, trained: dict[str, dict[str, np.ndarray]], start: dict) -> RoundInputs:
    """What the coordinator would pass after a round in which ``trained`` came back."""
    cls = METHODS[method]
    summed, total = None, 0.0
    if cls.shared is not None:
        base = flatten(part_of(start, cls.shared))[0]
        summed = sum(10.0 * (flatten(part_of(t, cls.shared))[0] - base) for t in trained.values())
        total = 10.0 * len(trained)
    personal = {s: part_of(t, cls.personal) for s, t in trained.items()} if cls.personal else {}
    return RoundInputs(
        round=1,
        model=start,
        summed=summed,
        total_weight=total,
        personal=personal,
        sites=SITES,
        survivors=tuple(trained),
        spec=HEART.model_spec,
        rng=np.random.default_rng([0, 1]),
    )


def test_mean_update_is_the_weighted_mean_and_touches_only_its_part() -> None:
    start, a, b = model(0), model(1), model(2)
    base = flatten(part_of(start, "extractor"))[0]
    summed = 1.0 * (flatten(part_of(a, "extractor"))[0] - base) + 3.0 * (
        flatten(part_of(b, "extractor"))[0] - base
    )
    out = mean_update(start, "extractor", summed, 4.0)
    for k in part_of(start, "extractor"):
        np.testing.assert_allclose(out[k], 0.25 * a[k] + 0.75 * b[k], atol=1e-6)
    for k in part_of(start, "head"):
        np.testing.assert_array_equal(out[k], start[k])
    with pytest.raises(ValueError, match="no sample weight"):
        mean_update(start, "extractor", summed, 0.0)


def test_fedavg_averages_the_whole_model() -> None:
    start = model(0)
    trained = {s: model(i + 1) for i, s in enumerate(SITES[:3])}
    out = METHODS["fedavg"]().aggregate(inputs("fedavg", trained, start), None)
    for k in start:
        np.testing.assert_allclose(
            out.model[k], np.mean([t[k] for t in trained.values()], 0), atol=1e-6
        )
    assert out.personal == {}


def test_start_rules_of_the_baselines() -> None:
    glob, own = model(0), model(1)
    assert METHODS["fedavg"]().start(glob, own=own, received=None) is glob
    assert METHODS["local"]().start(glob, own=own, received=None) is own
    assert METHODS["local"]().start(glob, own=None, received=None) is glob
    fedper = METHODS["fedper"]().start(glob, own=own, received=None)
    for k in fedper:
        np.testing.assert_array_equal(fedper[k], (own if k.startswith("head.") else glob)[k])
    received = part_of(model(2), "head")
    for name in ("fedrema", "pfednet"):
        got = METHODS[name]().start(glob, own=own, received=received)
        for k in got:
            np.testing.assert_array_equal(got[k], (received if k.startswith("head.") else glob)[k])
    assert METHODS["mr-mtl"]().start(glob, own=own, received=None) is own


def test_pfednet_without_the_penalty_hands_every_site_its_own_head() -> None:
    start = model(0)
    trained = {s: model(i + 1) for i, s in enumerate(SITES)}
    method = METHODS["pfednet"](METHODS["pfednet"].parse_options({"lam": 0.0, "iterations": 200}))
    out = method.aggregate(inputs("pfednet", trained, start), None)
    for s, t in trained.items():
        for k, v in part_of(t, "head").items():
            np.testing.assert_allclose(out.personal[s][k], v, atol=1e-4)
    assert set(out.state["components"]) == set(SITES)
    # every site its own cluster, so no edge is fused (the log's count is the clusters')
    assert len(set(out.log["clusters"].values())) == len(SITES)
    assert out.log["fused_edges"] == 0 == out.log["thresholded_edges"]


def test_pfednet_with_a_large_penalty_fuses_connected_sites() -> None:
    start = model(0)
    trained = {s: model(i + 1) for i, s in enumerate(SITES)}
    options = METHODS["pfednet"].parse_options({"lam": 1e3, "k": 3, "iterations": 2000})
    out = METHODS["pfednet"](options).aggregate(inputs("pfednet", trained, start), None)
    heads = [flatten(out.personal[s])[0] for s in SITES]
    mean = np.mean([flatten(part_of(t, "head"))[0] for t in trained.values()], axis=0)
    for h in heads:
        np.testing.assert_allclose(h, mean, atol=1e-3)
    assert len(set(out.log["clusters"].values())) == 1
    assert out.log["fused_edges"] == len(out.log["edges"])


def test_pfednet_counts_as_fused_the_edges_its_clusters_are_made_of() -> None:
    """After the paper's few ADMM iterations every W row is thresholded to 0, yet no two
    components are equal yet: the log says 0 fused edges beside four clusters, and keeps the
    thresholded count apart (it once reported 6 fused edges and 4 clusters)."""
    start = model(0)
    trained = {s: model(i + 1) for i, s in enumerate(SITES)}
    out = METHODS["pfednet-paper"]().aggregate(inputs("pfednet-paper", trained, start), None)
    assert len(set(out.log["clusters"].values())) == len(SITES)
    assert out.log["fused_edges"] == 0
    assert out.log["thresholded_edges"] == len(out.log["edges"]) > 0


def test_pfednet_keeps_components_of_sites_that_missed_the_round() -> None:
    start = model(0)
    first = METHODS["pfednet"]().aggregate(
        inputs("pfednet", {s: model(i + 1) for i, s in enumerate(SITES)}, start), None
    )
    trained = {s: model(i + 10) for i, s in enumerate(SITES[:2])}
    second = METHODS["pfednet"]().aggregate(inputs("pfednet", trained, first.model), first.state)
    assert set(second.personal) == set(SITES)  # absent sites still get a component back


def test_fedrema_aggregate_merges_heads_and_keeps_its_state() -> None:
    start = model(0)
    trained = {s: model(i + 1) for i, s in enumerate(SITES)}
    method = METHODS["fedrema"]()
    out = method.aggregate(inputs("fedrema", trained, start), None)
    assert set(out.personal) == set(SITES) and out.state["sites"] == list(SITES)
    assert out.log["in_ccp"] and set(out.log["selected"]) == set(SITES)
    again = method.aggregate(inputs("fedrema", trained, out.model), out.state)
    assert again.state["ccp_rounds"] == 2


def test_fedrema_state_grows_with_the_roster() -> None:
    start = model(0)
    three = {s: model(i + 1) for i, s in enumerate(SITES[:3])}
    method = METHODS["fedrema"]()
    first = method.aggregate(
        RoundInputs(**{**inputs("fedrema", three, start).__dict__, "sites": SITES[:3]}), None
    )
    four = {s: model(i + 1) for i, s in enumerate(SITES)}
    second = method.aggregate(inputs("fedrema", four, first.model), first.state)
    assert second.state["sites"] == list(SITES)
    assert np.asarray(second.state["frequency"]).shape == (4, 4)


def test_the_proximal_pull_moves_weights_to_the_centre_and_costs_no_privacy() -> None:
    from fedrema_cli.config import TrainingConfig
    from fedrema_cli.learning.training import Proximal, train_local

    x = np.random.default_rng(0).normal(size=(64, HEART.model_spec.in_features)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    centre = model(5)
    distance = {}
    for lam in (0.0, 5.0):
        net = build_model(HEART.model_spec, seed=0)
        trained, result, _ = train_local(
            net, x, y, config=TrainingConfig(lr=0.05), seed=1, proximal=Proximal(lam, centre)
        )
        after = get_part(trained, "all")
        distance[lam] = sum(float(np.sum((after[k] - centre[k]) ** 2)) for k in centre)
        assert result.steps == 4
    assert distance[5.0] < 0.5 * distance[0.0]


def test_options_are_validated_into_the_signed_config() -> None:
    cfg = make_config(
        federation_id="x",
        model=HEART.model_spec,
        data=HEART.schema,
        method="pfednet",
        method_options={"lam": 0.1},
    )
    parsed = parse_config({**cfg, "coordinator": {"sign_pk": "a", "seal_pk": "b"}}, where="t")
    assert parsed.method_impl().options.lam == 0.1
    with pytest.raises(ConfigError, match="method_options for pfednet"):
        parse_config(
            {**cfg, "method_options": {"lam": -1}, "coordinator": {"sign_pk": "a", "seal_pk": "b"}},
            where="t",
        )
    with pytest.raises(UsageError, match="no option nope"):
        parse_method_options("pfednet", ["nope=1"])
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_method_options("pfednet", ["lam"])
    assert parse_method_options("mr-mtl", ["lam=0.5"]) == {"lam": 0.5}


def test_a_schema_1_config_still_loads_with_the_same_fedrema_rules() -> None:
    cfg = make_config(federation_id="x", model=HEART.model_spec, data=HEART.schema)
    old = {k: v for k, v in cfg.items() if k != "method_options"}
    old.update(
        schema_version=1, fedrema={"smoothing": 0.25}, coordinator={"sign_pk": "a", "seal_pk": "b"}
    )
    parsed = FederationConfig.model_validate(old)
    assert parsed.method_impl().options.smoothing == 0.25


def test_every_registered_method_is_in_the_docs_table_and_the_cli_help() -> None:
    from typer.testing import CliRunner

    from fedrema_cli.app import app

    generated = CliRunner().invoke(app, ["methods", "--markdown"]).stdout
    for doc in ("docs/architecture.md", "docs/benchmarks.md"):  # both show the table
        assert generated in (ROOT / doc).read_text(), (
            f"regenerate {doc}'s table: fedrema methods --markdown"
        )
    assert re.findall(r"^\| `([a-z0-9-]+)` \|", generated, flags=re.M) == list(METHODS)
    out = CliRunner().invoke(app, ["methods", "--json"])
    assert out.exit_code == 0
    assert [m["method"] for m in json.loads(out.stdout)["methods"]] == list(METHODS)


def test_summaries_count_how_often_merged_sites_share_a_planted_block() -> None:
    from fedrema_cli.methods.base import same_block_rate

    blocks = {"a": 0, "b": 0, "c": 1}
    assert same_block_rate([("a", "b"), ("a", "c")], blocks) == 0.5
    assert same_block_rate([], blocks) is None
    fedrema_log = [
        {"in_ccp": True, "selected": {"a": ["a", "b"], "b": ["b", "c"], "c": ["c"]}},
        {"in_ccp": False, "selected": {"a": ["a", "c"]}},  # after the co-learning period
    ]
    stats = METHODS["fedrema"]().summarize(fedrema_log, blocks)
    assert stats["ccp_rounds"] == 1
    assert stats["peer_same_block_rate"] == 0.5
    pfednet_log = [
        {"fused_edges": 1, "clusters": {"a": 0, "b": 0, "c": 1}},
        {"fused_edges": 3, "clusters": {"a": 0, "b": 0, "c": 0}},
    ]
    stats = METHODS["pfednet"]().summarize(pfednet_log, blocks)
    # a log from before both counts were kept: its "fused_edges" were thresholded counts
    assert stats["mean_thresholded_edges"] == 2.0 and "mean_fused_edges" not in stats
    assert stats["peer_same_block_rate"] == 2 / 4  # (a,b) twice; (a,c), (b,c) once
    logged = [pfednet_log[0], {**pfednet_log[1], "thresholded_edges": 3}]
    both = METHODS["pfednet"]().summarize(logged, blocks)
    assert both["mean_thresholded_edges"] == 2.0 and both["mean_fused_edges"] == 3.0


def test_fedrema_model_merges_whole_models_with_the_most_alike_peer() -> None:
    """Two planted pairs of alike models: each site is merged with its own pair's other model
    (whole models, nothing summed), and starts the next round from what came back."""
    rng = np.random.default_rng(0)
    base = {"a": model(1), "c": model(2)}
    trained = {
        s: {k: v + 0.01 * rng.standard_normal(v.shape).astype(np.float32) for k, v in m.items()}
        for s, m in (("a", base["a"]), ("b", base["a"]), ("c", base["c"]), ("d", base["c"]))
    }
    method = METHODS["fedrema-model"](METHODS["fedrema-model"].Options(self_weight=None))
    assert method.shared is None and method.personal == "all"
    out = method.aggregate(inputs("fedrema-model", trained, model(0)), None)
    assert {s: sorted(v) for s, v in out.log["selected"].items()} == {
        "a": ["a", "b"],
        "b": ["a", "b"],
        "c": ["c", "d"],
        "d": ["c", "d"],
    }
    for key, value in out.personal["a"].items():
        np.testing.assert_allclose(value, (trained["a"][key] + trained["b"][key]) / 2, atol=1e-6)
    start = method.start(model(0), own=trained["a"], received=out.personal["a"])
    assert all(np.array_equal(start[k], out.personal["a"][k]) for k in start)


def test_a_state_that_is_not_json_names_the_method(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new method returning a numpy array as its state (the natural first try) is told
    which method and what to do, instead of a bare "not JSON serializable" from the store."""
    from fedrema_cli import simulate as sim
    from fedrema_cli.methods.base import Outcome

    fedavg = METHODS["fedavg"]
    plain = fedavg.aggregate

    def with_array_state(self, inputs, state):  # type: ignore[no-untyped-def]
        out = plain(self, inputs, state)
        return Outcome(model=out.model, state={"velocity": np.zeros(3)})

    monkeypatch.setattr(fedavg, "aggregate", with_array_state)
    spec = sim.SimulationSpec(
        dataset="heart-disease", method="fedavg", rounds=1, secure_aggregation=False,
        workdir=tmp_path / "w",
    )  # fmt: skip
    with pytest.raises(TypeError, match=r"method fedavg: Outcome.state and .log must be plain"):
        sim.run(spec)


def test_methods_shows_what_each_option_accepts() -> None:
    """The range `--option` checks a value against is shown before anyone is refused by it,
    read from the same Options model (a new bound shows up without a docs edit)."""
    from typer.testing import CliRunner

    from fedrema_cli.app import app
    from fedrema_cli.methods import option_ranges

    assert option_ranges("mr-mtl") == {"lam": "≥ 0 and ≤ 10000: strength of the pull to w_bar"}
    fedrema = option_ranges("fedrema")
    assert fedrema["similarity"] == "softmax or centered"
    assert fedrema["smoothing"] == "≥ 0 and < 1"
    assert fedrema["self_weight"] == "≥ 0 and ≤ 1, or null"
    shown = CliRunner().invoke(app, ["methods"]).stdout
    assert "--option lam=1.0  (≥ 0 and ≤ 10000: strength of the pull to w_bar)" in shown
    doc = json.loads(CliRunner().invoke(app, ["methods", "--json"]).stdout)
    assert all(set(m["option_ranges"]) == set(m["options"]) for m in doc["methods"])
