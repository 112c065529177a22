"""The site's commands: `train-local`, `submit`, `personalize`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fedrema_cli import ui


def register(app: typer.Typer) -> None:
    app.command(name="train-local")(train_local)
    app.command(name="submit")(submit)
    app.command(name="personalize")(personalize)
    app.command(name="withdraw")(withdraw)


def train_local(
    state: ui.StateOpt, workspace: ui.WorkspaceOpt = None, json_out: ui.JsonOpt = False
) -> None:
    """Train this round's update on this site's data (once per round; DP-SGD if the policy says).

    The privacy budget is checked before any training: a round that would cross it is refused
    and nothing is written. The update stays in the state folder until `fedrema submit`.
    Re-run for a round already trained, or once the federation is complete, it changes
    nothing and exits 0.

      fedrema train-local -s cleveland
    """
    from fedrema_cli.roles.site import Site

    site = Site(state, workspace=workspace)
    with ui.activity(f"{site.name}: training, epoch") as shown:
        record = site.train_local(progress=lambda done, total, _steps: shown.steps(done, total))
    if json_out:
        return ui.emit_json(record)
    if record.get("complete"):
        ui.say(
            f"{site.name}: the federation finished its {record['rounds']} rounds; nothing to "
            "train. next: `fedrema personalize` for your model"
        )
        return None
    if record.get("already_trained"):
        ui.say(f"{site.name}: round {record['round']} already trained; next: `fedrema submit`")
        return None
    eps = record.get("privacy")
    ui.say(
        f"[green]✓[/] {site.name}: round {record['round']} trained "
        f"({record['steps']} steps on {record['examples']} records)"
    )
    if eps:
        ui.say(
            f"  privacy: epsilon {eps['epsilon_after']:.3f} of {eps['target_epsilon']:g} "
            f"spent after this round (delta {eps['delta']:g}); recorded in the ledger"
        )
    ui.say("  next: `fedrema submit`")
    return None


def submit(
    state: ui.StateOpt,
    workspace: ui.WorkspaceOpt = None,
    wait: ui.WaitOpt = False,
    timeout: ui.TimeoutOpt = 3600.0,
    json_out: ui.JsonOpt = False,
) -> None:
    """Send what the round needs from this site now (key shares, masked update, unmasking shares).

    Safe to re-run. With --wait it stays, showing what it waits for, until this site's part
    of the round is done. Exit 75 when there was nothing to send yet: others must act first,
    or this site must run `fedrema train-local` first.

      fedrema submit -s cleveland --wait
    """
    from fedrema_cli.errors import NotYetError, StateBusyError
    from fedrema_cli.roles.site import Site

    site = Site(state, workspace=workspace)
    done: list[str] = []
    waiting: list[str] = []

    def step() -> tuple[bool, str]:
        try:
            actions = site.submit()
        except StateBusyError:
            if not wait:
                raise
            return False, "another fedrema command on this state folder to finish"
        done.extend(actions.done)
        if not json_out:
            for line in actions.done:
                ui.say(f"[green]✓[/] {site.name}: {line}")
        waiting[:] = actions.waiting
        if any("train-local" in w for w in waiting):
            return True, ""  # only this site can act next: waiting would never end
        finished = not wait or site.round_part_done()
        return finished, "; ".join(waiting) or "the coordinator"

    gave_up = ui.wait_for(step, timeout=timeout)
    untrained = any("train-local" in w for w in waiting)
    if json_out:
        ui.emit_json(
            {
                "site": site.name,
                "done": done,
                "waiting_for": waiting,
                "timed_out": gave_up is not None,
            }
        )
    elif gave_up is None and not untrained:
        for line in waiting:
            ui.say(f"  waiting for {line}")
    if gave_up is not None:
        raise gave_up
    if untrained:  # nothing is wrong: this site's own next step comes first (exit 75)
        raise NotYetError(
            f"{site.name}: nothing to submit yet: this round's update is not trained",
            hint="`fedrema train-local`, then `fedrema submit`",
        )
    if not done and not site.complete():
        raise NotYetError(
            f"{site.name}: nothing to send yet; waiting for "
            f"{'; '.join(waiting) or 'the coordinator'}",
            hint="`fedrema status` shows who must act",
        )
    return None


def personalize(
    state: ui.StateOpt,
    export: Annotated[
        Path | None,
        typer.Option(help="Write the deployable model here (safetensors + model card JSON)."),
    ] = None,
    target_sensitivity: Annotated[
        float | None,
        typer.Option(
            help="Choose the threshold to reach this sensitivity on the validation split "
            "(default: maximise balanced accuracy).",
        ),
    ] = None,
    workspace: ui.WorkspaceOpt = None,
    json_out: ui.JsonOpt = False,
) -> None:
    """Build this site's own model, evaluate it on local hold-out data, optionally export it.

    The model is the federation's shared feature extractor with this site's personalized
    classifier head (FedReMa's merged head, or the site's own head for FedPer/local).
    Its decision rule is fit on the training file, never the test file: a binary model's
    threshold (on a validation split), or with more classes the posterior moved to this
    site's own class prior.

      fedrema personalize -s cleveland --export models/cleveland
    """
    from fedrema_cli.roles.site import Site
    from fedrema_cli.views.clinical import clinical_lines, threshold_line, warning_lines

    site = Site(state, workspace=workspace)
    out = site.personalize(export, target_sensitivity=target_sensitivity)
    if json_out:
        return ui.emit_json(out)
    m = out["metrics"]
    status = "final" if out["complete"] else f"after round {out['after_round']} (not finished)"
    mark = "[yellow]![/]" if out["warnings"] else "[green]✓[/]"
    ui.say(f"{mark} {site.name}: personalized model, {status}, method {out['method']}")
    if m:  # the result: kept under -q
        ui.result(
            f"  hold-out ({m['n']} records), most probable class: accuracy {m['accuracy']:.3f}, "
            f"balanced accuracy {m['balanced_accuracy']:.3f}, AUC {ui.fmt(m['auc'])}"
        )
    for line in [threshold_line(out), *clinical_lines(out), *warning_lines(out["warnings"])]:
        ui.result(line)
    if out.get("exported"):
        ui.result(f"  exported to {out['exported']}")
    return None


def withdraw(
    state: ui.StateOpt,
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirm: a withdrawal cannot be undone.")
    ] = False,
    reason: Annotated[
        str | None,
        typer.Option(
            help="One line the coordinator and auditors see. Default: 'privacy budget spent' "
            "when it is, else 'withdrawn by the site operator'."
        ),
    ] = None,
    workspace: ui.WorkspaceOpt = None,
    json_out: ui.JsonOpt = False,
) -> None:
    """Leave the federation for good, so the coordinator stops waiting for this site.

    For a site whose privacy budget is spent, or that must stop taking part. Without it the
    coordinator waits out every phase's deadline for the missing site, every round. A round
    that already holds this site's masked update still gets its unmasking shares from the
    next `fedrema submit`; every later round goes on without it, and `fedrema personalize`
    keeps working. Re-running it changes nothing.

      fedrema withdraw -s cleveland --yes
    """
    from fedrema_cli.errors import UsageError
    from fedrema_cli.roles.site import Site

    site = Site(state, workspace=workspace)
    notice, new = site.withdraw(reason, dry_run=not yes)
    if new and not yes:
        raise UsageError(
            f"withdrawing {site.name} from round {notice.from_round} on cannot be undone: the "
            "federation goes on without it; nothing was changed",
            hint="run again with --yes",
        )
    if json_out:
        return ui.emit_json({"site": site.name, "new": new, **notice.to_json()})
    what = "withdrew" if new else "had already withdrawn"
    ui.say(
        f"[green]✓[/] {site.name} {what} from round {notice.from_round} on: {escape(notice.reason)}"
    )
    if site.reveals_before_leaving(notice):
        ui.say(
            f"  round {notice.from_round - 1} holds this site's update: "
            "`fedrema submit` once more to reveal its unmasking shares"
        )
    ui.say("  next: `fedrema personalize` builds this site's model from the rounds so far")
    return None
