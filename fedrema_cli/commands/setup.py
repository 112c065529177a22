"""`fedrema init` (a federation, or a site joining one) and `fedrema approve`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedrema_cli import ui
from fedrema_cli.defaults import CLASS_WEIGHTING_HELP, DEFAULT_EPSILON, DEFAULT_METHOD
from fedrema_cli.methods import method_help


def register(app: typer.Typer) -> None:
    app.command(name="init")(init)
    app.command(name="approve")(approve)
    app.command(name="rotate-key")(rotate_key)


#: init's options that shape the federation: only its creator sets them.
FEDERATION_OPTIONS = (
    "preset", "features", "label", "classes", "hidden", "feature_ranges", "federation_id",
    "method", "option", "rounds", "epochs", "batch_size", "lr", "class_weighting", "seed",
    "epsilon", "delta", "max_grad_norm", "no_dp", "threshold", "no_secure_aggregation",
    "consistency_check", "round_timeout", "max_records", "update_clip",
)  # fmt: skip
#: init's options for a hospital joining one.
JOINING_OPTIONS = ("train", "test", "coordinator_fingerprint")


def given_options(ctx: typer.Context, names: tuple[str, ...]) -> list[str]:
    """The options among ``names`` the user set (command line or environment), as typed."""
    said = ("COMMANDLINE", "ENVIRONMENT")  # by name: Typer may bring its own Click
    opts = {p.name: p.opts[0] for p in ctx.command.params}
    return [opts[n] for n in names if getattr(ctx.get_parameter_source(n), "name", None) in said]


def init(
    ctx: typer.Context,
    state: ui.StateOpt,
    workspace: Annotated[
        str,
        typer.Option(
            "--workspace",
            "-w",
            envvar="FEDREMA_WORKSPACE",
            help="The federation workspace shared by all parties (a folder, or "
            "sftp://user@host/path).",
        ),
    ],
    site: Annotated[
        str | None,
        typer.Option(
            help="Join as this site (a hospital) instead of creating the federation.",
            rich_help_panel="Joining as a site",
        ),
    ] = None,
    train: Annotated[
        Path | None,
        typer.Option(
            help="The site's training data (CSV/Parquet table, or .npz with x, y).",
            rich_help_panel="Joining as a site",
        ),
    ] = None,
    test: Annotated[
        Path | None,
        typer.Option(
            help="The site's hold-out data, used by `personalize` to evaluate.",
            rich_help_panel="Joining as a site",
        ),
    ] = None,
    coordinator_fingerprint: Annotated[
        str | None,
        typer.Option(
            help="The coordinator key fingerprint you were given out of band; init refuses a "
            "workspace signed by anyone else.",
            rich_help_panel="Joining as a site",
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Data schema and model of a bundled dataset: " + ui.DATASET_HELP,
            rich_help_panel="Creating a federation",
        ),
    ] = None,
    features: Annotated[
        str | None,
        typer.Option(
            help="Your own table instead of a preset: the feature columns, comma-separated, "
            "in model input order.",
            rich_help_panel="Creating a federation",
        ),
    ] = None,
    label: Annotated[
        str | None,
        typer.Option(
            help="The label column of your table.", rich_help_panel="Creating a federation"
        ),
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(
            help="The label's values, comma-separated (e.g. 0,1).",
            rich_help_panel="Creating a federation",
        ),
    ] = None,
    hidden: Annotated[
        str | None,
        typer.Option(
            help="Hidden layer sizes of the MLP feature extractor (default 32,16).",
            rich_help_panel="Creating a federation",
        ),
    ] = None,
    feature_ranges: Annotated[
        str | None,
        typer.Option(
            help="With --features: a plausible range per feature from public knowledge "
            "(reference values, a code book; never the records), e.g. age=20:80,lactate=0:20. "
            "Every site then scales by these instead of its own statistics, so DP covers "
            "preprocessing too.",
            rich_help_panel="Creating a federation",
        ),
    ] = None,
    federation_id: Annotated[
        str | None,
        typer.Option(
            help="A short name for the federation (lowercase, digits, . _ -).",
            rich_help_panel="Creating a federation",
        ),
    ] = None,
    method: Annotated[
        str,
        typer.Option(help=method_help(), rich_help_panel="Creating a federation"),
    ] = DEFAULT_METHOD,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            help="A method option, KEY=VALUE (repeat it), e.g. --option lam=0.1; signed into "
            "the federation config.",
            rich_help_panel="Creating a federation",
        ),
    ] = None,
    rounds: Annotated[int, typer.Option(min=1, rich_help_panel="Creating a federation")] = 20,
    epochs: Annotated[
        int,
        typer.Option(
            min=1, help="Local epochs per round.", rich_help_panel="Creating a federation"
        ),
    ] = 1,
    batch_size: Annotated[int, typer.Option(min=1, rich_help_panel="Creating a federation")] = 16,
    lr: Annotated[float, typer.Option(min=0, rich_help_panel="Creating a federation")] = 0.05,
    class_weighting: Annotated[
        str | None,
        typer.Option(help=CLASS_WEIGHTING_HELP, rich_help_panel="Creating a federation"),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seeds the initial model.", rich_help_panel="Creating a federation")
    ] = 0,
    epsilon: Annotated[
        float | None,
        typer.Option(
            help=f"Record-level privacy budget per site (DP-SGD; default {DEFAULT_EPSILON:g}).",
            rich_help_panel="Privacy",
        ),
    ] = None,
    delta: Annotated[float, typer.Option(rich_help_panel="Privacy")] = 1e-5,
    max_grad_norm: Annotated[
        float, typer.Option(help="DP-SGD per-sample clipping norm.", rich_help_panel="Privacy")
    ] = 1.0,
    no_dp: Annotated[
        bool,
        typer.Option(
            "--no-dp",
            help="Train without differential privacy (not for real patient data).",
            rich_help_panel="Privacy",
        ),
    ] = False,
    threshold: Annotated[
        int | None,
        typer.Option(
            help="Secure aggregation: sites that must survive a round (default 2n/3+1).",
            rich_help_panel="Secure aggregation",
        ),
    ] = None,
    no_secure_aggregation: Annotated[
        bool,
        typer.Option(
            "--no-secure-aggregation",
            help="Send plaintext updates (for comparison only).",
            rich_help_panel="Secure aggregation",
        ),
    ] = False,
    consistency_check: Annotated[
        bool,
        typer.Option(
            "--consistency-check",
            help="Bonawitz's round 3 against a coordinator that shows sites different survivor "
            "sets: sites sign the set before revealing (one more `submit` per round).",
            rich_help_panel="Secure aggregation",
        ),
    ] = False,
    round_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds the coordinator waits for missing sites before going on without them.",
            rich_help_panel="Secure aggregation",
        ),
    ] = 24 * 3600.0,
    max_records: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="The most training records any site will have (public; default 100000). "
            "A site with more cannot submit. A tight bound (e.g. 256) with a tight "
            "--update-clip lets the masked sum use 3-byte words instead of 4.",
            rich_help_panel="Secure aggregation",
        ),
    ] = None,
    update_clip: Annotated[
        float | None,
        typer.Option(
            min=1e-6,
            help="Each coordinate of a masked update is clipped to ±this (public; default 64). "
            "Model deltas of one round are far smaller (about 0.1 on the bundled data).",
            rich_help_panel="Secure aggregation",
        ),
    ] = None,
    json_out: ui.JsonOpt = False,
) -> None:
    """Create a federation (coordinator), or join one (a site, with --site).

    The coordinator creates the workspace and shows its key fingerprint; each hospital joins
    with its own state folder and its own data, which never leaves it:

      fedrema init -w /shared/heart -s coord --preset heart-disease --rounds 20

      fedrema init -w /shared/sepsis -s coord --features age,lactate,hr --label sepsis --classes 0,1

      fedrema init -w /shared/heart -s cleveland --site cleveland --train c.csv --test c_test.csv
    """
    from fedrema_cli.config import target_epsilon
    from fedrema_cli.errors import OptionError
    from fedrema_cli.roles import onboarding as actions

    if site is not None and (stray := given_options(ctx, FEDERATION_OPTIONS)):
        raise OptionError(
            f"{', '.join(stray)}: set by the coordinator when it created the federation; a "
            "site joining with --site takes every setting from the signed config (see it with "
            "`fedrema status`)",
            hint="leave them out",
        )
    if site is None and (stray := given_options(ctx, JOINING_OPTIONS)):
        raise OptionError(
            f"{', '.join(stray)}: for a hospital joining with --site NAME; creating a "
            "federation takes no data",
            hint="add --site NAME to join, or leave them out to create the federation",
        )
    if site is not None:
        out = actions.join(
            workspace=workspace,
            state=state,
            site=site,
            train=train,
            test=test,
            coordinator_fingerprint=coordinator_fingerprint,
        )
        if json_out:
            return ui.emit_json(out)
        if out["already_joined"]:
            ui.say(f"[green]✓[/] {site} already joined [bold]{out['federation']}[/]: no change")
            ui.say(f"  next: {out['next']}")
            return None
        ui.say(f"[green]✓[/] {site} asked to join [bold]{out['federation']}[/]")
        ui.say(
            f"  site key fingerprint: [bold]{out['fingerprint']}[/] (read it to the coordinator)"
        )
        if not out["coordinator_fingerprint_checked"]:
            ui.warn(
                "the coordinator's key was taken from the workspace unchecked (no "
                f"--coordinator-fingerprint): it is {out['coordinator_fingerprint']}; compare it "
                "with the one the coordinator gave you before you train"
            )
        for w in out["warnings"]:
            ui.warn(f"{w['message']} Likely cause: {w['cause']}. Try: {w['advice']}.")
        ui.say("  next: the coordinator runs `fedrema approve`; then `fedrema submit`")
        return None
    out = actions.create(
        workspace=workspace,
        state=state,
        preset=preset,
        features=features,
        label=label,
        classes=classes,
        hidden=hidden,
        feature_ranges=feature_ranges,
        federation_id=federation_id,
        method=method,
        method_options=option,
        rounds=rounds,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        class_weighting=class_weighting,
        seed=seed,
        epsilon=target_epsilon(epsilon, no_dp=no_dp),
        delta=delta,
        max_grad_norm=max_grad_norm,
        threshold=threshold,
        secure_aggregation=not no_secure_aggregation,
        consistency_check=consistency_check,
        round_timeout=round_timeout,
        max_records=max_records,
        update_clip=update_clip,
    )
    if json_out:
        return ui.emit_json(out)
    ui.say(f"[green]✓[/] federation [bold]{out['federation']}[/] created in {workspace}")
    ui.say(f"  coordinator key fingerprint: [bold]{out['fingerprint']}[/] (give it to every site)")
    ui.say(
        f"  method {out['method']}, {out['rounds']} rounds, privacy: {out['privacy']}, "
        f"secure aggregation: {'on' if out['secure_aggregation'] else 'OFF'}"
    )
    for w in out["warnings"]:
        ui.warn(w)
    ui.say("  next: each site runs `fedrema init --site NAME ...`, then you run `fedrema approve`")
    return None


def approve(
    state: ui.StateOpt,
    sites: Annotated[list[str] | None, typer.Argument(help="Sites to approve.")] = None,
    all_sites: Annotated[bool, typer.Option("--all", help="Approve every enrolled site.")] = False,
    remove: Annotated[
        list[str] | None,
        typer.Option("--remove", help="Remove this site from the roster (from the next round)."),
    ] = None,
    yes: Annotated[
        bool,
        typer.Option("--yes", "-y", help="Sign even if enrolled sites are left out; no question."),
    ] = False,
    workspace: ui.WorkspaceOpt = None,
    json_out: ui.JsonOpt = False,
) -> None:
    """List enrolled sites with their key fingerprints, or sign the roster (the sites, t of n).

    Compare each fingerprint with the one the hospital read to you, then:

      fedrema approve -s coord --all

    In a running federation the same command signs a new roster version, in force from the
    next round whose key exchange has not started: `approve SITE` adds a newly enrolled site
    (or approves its key rotation), `approve --remove SITE` removes one. Before it leaves out
    an enrolled site you did not name it asks (or needs --yes); --remove names its site, so it
    does not ask.
    """
    import sys

    from fedrema_cli.errors import UsageError
    from fedrema_cli.roles import onboarding as actions
    from fedrema_cli.roles.coordinator import RosterChange

    def confirm(change: RosterChange) -> bool:
        if not change.left_out or yes:
            return True
        left = ", ".join(change.left_out)
        if json_out or not sys.stdin.isatty():
            raise UsageError(
                f"this roster leaves out enrolled site(s) {left}; nothing was signed",
                hint="approve them by name, or pass --yes to leave them out",
            )
        return typer.confirm(
            f"The roster leaves out enrolled site(s) {left}. Sign it anyway?", default=False
        )

    out = actions.approve(
        state=state,
        workspace=workspace,
        sites=sites,
        all_sites=all_sites,
        remove=remove,
        confirm=confirm,
    )
    if json_out:
        return ui.emit_json(out)
    ui.console.print(
        ui.table(
            "Enrolled sites",
            ["site", "key fingerprint", "approved", "key rotation to approve"],
            [
                (
                    e["site"],
                    e["fingerprint"],
                    "yes" if e["approved"] else "no",
                    e["pending_new_key"] or "",
                )
                for e in out["enrollments"]
            ],
        )
    )
    for e in out["enrollments"]:
        if e["pending_new_key"]:
            ui.say(
                f"  {e['site']} asks to rotate its key to {e['pending_new_key']}: compare it "
                f"with the one the hospital read to you, then `fedrema approve {e['site']}`"
            )
    for site, why in out["refused_enrollments"].items():
        ui.warn(f"enrollment {site!r} refused, not approved: {why}")
    fixed = (
        f"{', '.join(out['roster'])}; secure aggregation needs t = {out['threshold']} of "
        f"n = {out['n']} ({out['threshold_rule']})"
        if out["roster_approved"]
        else ""
    )
    if out["signed"]:
        changes = [
            f"{what} {', '.join(out[key])}"
            for what, key in (("added", "added"), ("removed", "removed"))
            if out[key] and out["version"] > 1
        ] + [f"new key {s} ({fp})" for s, fp in out["rotated_fingerprints"].items()]
        ui.say(
            f"[green]✓[/] roster version {out['version']} signed, in force from round "
            f"{out['effective_from_round']}: {fixed}"
        )
        if changes:
            ui.say(f"  changes: {'; '.join(changes)}")
        if out["left_out"]:
            ui.say(f"  left out (enrolled, not approved): {', '.join(out['left_out'])}")
        if out["version"] == 1:
            ui.say(
                "  next: each site runs `fedrema submit` (key exchange), then `fedrema train-local`"
            )
    elif out["unchanged"]:
        ui.say(f"  the roster is already signed for {fixed}; nothing changed")
    elif sites or all_sites or remove:
        ui.say("  nothing was signed")
    elif not out["roster_approved"]:
        ui.say("  approve with `fedrema approve --all` or `fedrema approve SITE ...`")
    else:
        ui.say(f"  roster version {out['version']}: {fixed}")
    return None


def rotate_key(
    state: ui.StateOpt, workspace: ui.WorkspaceOpt = None, json_out: ui.JsonOpt = False
) -> None:
    """Replace this site's identity key (it leaked, or its server was rebuilt).

    Publishes the new public key signed by the old one and by the new one; the coordinator
    approves it (`fedrema approve SITE`) into the next roster version. Rounds before that keep
    the old key, so their files still verify; nobody else's keys change.

      fedrema rotate-key -s cleveland
    """
    from fedrema_cli.roles.site import Site

    out = Site(state, workspace=workspace).rotate_key()
    if json_out:
        return ui.emit_json(out)
    ui.say(
        f"[green]✓[/] {out['site']}: new key {out['new_fingerprint']} published "
        f"({out['published']}), signed by the old key {out['old_fingerprint']}"
    )
    ui.say(
        "  next: read the new fingerprint to the coordinator, who runs "
        f"`fedrema approve {out['site']}`; rounds before then use the old key"
    )
    return None
