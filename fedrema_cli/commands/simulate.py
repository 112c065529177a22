"""`fedrema simulate`: a whole federation on one machine; `fedrema prepare-data`: example files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedrema_cli import ui
from fedrema_cli.defaults import CLASS_WEIGHTING_HELP, DEFAULT_METHOD
from fedrema_cli.methods import method_help, parse_method_options


def register(app: typer.Typer) -> None:
    app.command(name="simulate")(simulate)
    app.command(name="prepare-data")(prepare_data)


def simulate(
    dataset: Annotated[
        str,
        typer.Argument(help=ui.DATASET_HELP),
    ],
    method: Annotated[
        str,
        typer.Option(help=method_help() + "; several separated by commas give one table."),
    ] = DEFAULT_METHOD,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option", help="A method option, KEY=VALUE (repeat it), e.g. --option lam=0.1."
        ),
    ] = None,
    rounds: Annotated[int, typer.Option(min=1, help="Federation rounds.")] = 20,
    seed: Annotated[
        int,
        typer.Option(
            help="Seeds the site split, model start, batches and (simulations only) the DP "
            "noise, so a run repeats. With secure aggregation the masked sum rounds "
            "stochastically from the OS's randomness (as at real sites): repeated runs agree "
            "to about 4 decimals; with --no-secure-aggregation, exactly."
        ),
    ] = 1,
    epochs: Annotated[int, typer.Option(min=1, help="Local epochs per round.")] = 1,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Batch size (under DP: the expected Poisson batch).")
    ] = 16,
    lr: Annotated[float, typer.Option(min=0, help="Learning rate of local SGD.")] = 0.05,
    class_weighting: Annotated[str | None, typer.Option(help=CLASS_WEIGHTING_HELP)] = None,
    finetune_rounds: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Head-only local rounds after the last round, for methods that fine-tune "
            "(default: fedavg-ft 5, fedrema 0); under DP they are planned into the budget and "
            "recorded in the ledger.",
        ),
    ] = None,
    epsilon: Annotated[
        float | None,
        typer.Option(
            help="Record-level privacy budget per site (DP-SGD). Privacy is on by default "
            "(epsilon 3); --no-dp trains without it, for comparison.",
            rich_help_panel="Privacy",
        ),
    ] = None,
    delta: Annotated[
        float, typer.Option(help="Record-level delta per site.", rich_help_panel="Privacy")
    ] = 1e-5,
    no_dp: Annotated[
        bool,
        typer.Option(
            "--no-dp", help="Train without differential privacy.", rich_help_panel="Privacy"
        ),
    ] = False,
    no_secure_aggregation: Annotated[
        bool,
        typer.Option(
            "--no-secure-aggregation",
            help="Plaintext updates, for comparison.",
            rich_help_panel="Secure aggregation",
        ),
    ] = False,
    drop: Annotated[
        list[str] | None,
        typer.Option(
            help="SITE:STAGE\\[@ROUND]: the site does nothing in that stage (keys, submit, "
            "unmask, offline) of that round (default: round 1); repeatable, e.g. "
            "--drop va:unmask@3.",
            rich_help_panel="Secure aggregation",
        ),
    ] = None,
    validation: Annotated[
        bool,
        typer.Option(
            "--validation",
            help="Model selection: train on 75% of each site's training file and score on the "
            "other 25%; the test files are never read.",
        ),
    ] = False,
    secagg_bits: Annotated[
        str,
        typer.Option(
            "--secagg-bits",
            help="Width of the masked sum: auto (2^24 or else 2^32 when the headroom rule "
            "allows, else 2^64), 24, 32 or 64 (64: every round before 'auto', for comparing "
            "bytes).",
            rich_help_panel="Secure aggregation",
        ),
    ] = "auto",
    secagg_bounds: Annotated[
        str,
        typer.Option(
            "--secagg-bounds",
            help="The public bounds the headroom rule uses: data (max_weight = the smallest "
            "power of two >= the largest site's training records, clip = 4 per coordinate "
            "of the update) or config (the config defaults: 100,000 and 64, as `fedrema "
            "init` writes them; for comparing bytes).",
            rich_help_panel="Secure aggregation",
        ),
    ] = "data",
    broadcast: Annotated[
        str,
        typer.Option(
            help="Width of the model download: float16 (stochastically rounded) or float32 "
            "(every round before float16, for comparing bytes).",
        ),
    ] = "float16",
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Keep every party's folders here (default: a temporary folder, removed)."
        ),
    ] = None,
    json_out: ui.JsonOpt = False,
) -> None:
    """Run a whole federation on this machine and print each site's test accuracy.

    Every hospital and the coordinator get their own folders and run the real commands' code;
    only the process is shared.

      fedrema simulate heart-disease --method fedrema --rounds 20 --seed 1 --json

      fedrema simulate heart-disease --method local,fedavg,fedrema --epsilon 1

      fedrema simulate heart-disease --method fedavg --no-dp --no-secure-aggregation

    Bytes on the wire (--json ``communication``; a third table): every file a party creates
    in the workspace is an upload, every file it reads that another party wrote a download,
    each counted once per party, filed under its round and kind by its path. Keys:
    ``sites.<site>`` and ``mean`` (over sites) and ``coordinator`` hold ``bytes_up`` and
    ``bytes_down`` (mean bytes per round over rounds 1..R) and ``up_by_kind`` /
    ``down_by_kind`` (the same split by file kind: key-advert, shares, masked-update,
    submission (envelope and sealed head), reveal, ledger-entry, model, key-roster,
    masking-roster, unmask-request, head, result); ``setup`` holds each party's one-off bytes
    (config, enrollment, roster), not in the per-round figures.
    """
    from fedrema_cli import simulate as sim
    from fedrema_cli.config import (
        TrainingConfig,
        checked_options,
        parse_class_weighting,
        target_epsilon,
    )

    epsilon = target_epsilon(epsilon, no_dp=no_dp)
    methods = [m.strip() for m in method.split(",") if m.strip()]
    drops = tuple(sim.Drop.parse(d) for d in (drop or []))
    options = {m: parse_method_options(m, option) if option else {} for m in methods}
    with checked_options():
        training = TrainingConfig(
            local_epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            finetune_rounds=finetune_rounds,
            class_weighting=parse_class_weighting(class_weighting),
        )
    results = []
    for m in methods:
        spec = sim.SimulationSpec(
            dataset=dataset,
            method=m,
            rounds=rounds,
            seed=seed,
            secure_aggregation=not no_secure_aggregation,
            epsilon=epsilon,
            delta=delta,
            training=training,
            method_options=options[m],
            drops=drops,
            secagg_bits=secagg_bits,
            secagg_bounds=secagg_bounds,
            broadcast=broadcast,
            validation=validation,
            workdir=(workdir / m) if workdir and len(methods) > 1 else workdir,
        )
        with ui.activity(f"{m}: rounds") as status:
            status.steps(0, rounds)  # set-up and round 1 show 0/R, not a bare clock

            def progress(r: int, total: int, status: ui.Activity = status) -> None:
                status.steps(r, total)

            results.append(sim.run(spec, on_round=progress))
    if json_out:
        return ui.emit_json(results[0] if len(results) == 1 else {"results": results})
    for t in results_tables(results):
        ui.console.print(t)
    for line in warning_lines(results):
        ui.result(line)  # warnings stay under -q
    return None


def results_tables(results: list[dict]) -> list[object]:
    """Per-site accuracy (sites down, methods across), then the means per method."""
    first = results[0]
    sites = list(first["sites"])
    methods = [r["method"] for r in results]
    per_site = ui.table(
        "Test accuracy per hospital",
        ["site", "test n", *methods],
        [
            (s, first["sites"][s]["n_test"], *[r["sites"][s]["accuracy"] for r in results])
            for s in sites
        ],
    )
    private = any(r["privacy"] for r in results)
    columns = [
        "method",
        "mean accuracy",
        "acc. @op.",
        "mean balanced acc.",
        "mean AUC",
        "bal. acc. @thr.",
        "sens. @thr.",
    ]
    if private:
        columns.append("max ε spent")
    rows = []
    for r in results:
        row = [
            r["method"],
            r["mean_accuracy"],
            r.get("mean_accuracy_at_operating_point"),
            r["mean_balanced_accuracy"],
            r["mean_auc"],
            r.get("mean_balanced_accuracy_at_threshold"),
            r.get("mean_sensitivity_at_threshold"),
        ]
        if private:
            eps = [v["epsilon"] for v in r["sites"].values() if v["epsilon"] is not None]
            row.append(max(eps) if eps else None)
        rows.append(row)
    privacy = (
        f"DP ε={first['privacy']['epsilon']:g}, δ={first['privacy']['delta']:g}"
        if first["privacy"]
        else "no DP"
    )
    secure = "on" if any(r["secure_aggregation"] for r in results) else "off"
    rounds = f"{first['rounds']} round" + ("s" if first["rounds"] != 1 else "")
    caption = (
        f"{first['dataset']}, {rounds}, seed {first['seed']}, {privacy}, secure aggregation "
        f"{secure}"
    )
    caption += (
        "; @thr.: at a threshold chosen per site on a validation split of its training file; "
        "@op.: at each site's decision rule (that threshold, or with more than two classes "
        "the site's own class prior)"
    )
    return [
        per_site,
        ui.table("Mean over hospitals", columns, rows, caption=caption),
        bytes_table(results),
    ]


def bytes_table(results: list[dict]) -> object:
    """Mean bytes per site per round, up and down, and the two largest kinds each way."""

    def largest(by_kind: dict[str, float]) -> str:
        top = sorted(by_kind.items(), key=lambda kv: -kv[1])[:2]
        return ", ".join(f"{k} {v:,.0f}" for k, v in top) or "–"

    rows = []
    for r in results:
        m = r["communication"]["mean"]
        rows.append(
            [
                r["method"],
                f"{m['bytes_up']:,.0f}",
                f"{m['bytes_down']:,.0f}",
                f"{m['bytes_up'] + m['bytes_down']:,.0f}",
                largest(m["up_by_kind"]),
                largest(m["down_by_kind"]),
            ]
        )
    return ui.table(
        "Bytes per site per round (mean over sites and rounds)",
        ["method", "up", "down", "total", "largest up", "largest down"],
        rows,
    )


def warning_lines(results: list[dict]) -> list[str]:
    """Every site's degenerate-model warnings, per method."""
    from fedrema_cli.views.clinical import warning_lines as lines

    out = []
    for r in results:
        for site, v in r["sites"].items():
            for w in v.get("warnings", []):
                out += lines([w], prefix=f"{r['method']}, {site} ({w['at']}): ")
    return out


def prepare_data(
    dataset: Annotated[str, typer.Argument(help=ui.DATASET_HELP)],
    out: Annotated[Path, typer.Option(help="Folder for the per-site train/test files.")],
    seed: Annotated[int, typer.Option()] = 1,
    json_out: ui.JsonOpt = False,
) -> None:
    """Write each site's train and test file of a bundled dataset (for trying the real CLI).

    fedrema prepare-data heart-disease --out hospitals/
    """
    from fedrema_cli.data.datasets import get_dataset
    from fedrema_cli.errors import StoreError, UsageError
    from fedrema_cli.store.storage import check_output_folder

    info = get_dataset(dataset)
    hint = "give --out a new or empty folder you can write to"
    check_output_folder(out, option="--out", holds="the site files", hint=hint)
    try:
        files = info.prepare(out, seed)  # each file whole or not at all (temp + rename)
    except StoreError as exc:  # a place this user cannot write, a full disk: names the file
        raise UsageError(str(exc), hint=hint) from None
    if json_out:
        return ui.emit_json({s: {k: str(v) for k, v in p.items()} for s, p in files.items()})
    for site, paths in files.items():
        ui.say(f"{site}: train {paths['train']}  test {paths['test']}")
    return None
