"""The coordinator's command: `aggregate`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from fedrema_cli import ui


def register(app: typer.Typer) -> None:
    app.command(name="aggregate")(aggregate)


def aggregate(
    state: ui.StateOpt,
    close: Annotated[
        bool,
        typer.Option(
            "--close", help="Stop waiting for missing sites now (needs the threshold of sites)."
        ),
    ] = False,
    workspace: ui.WorkspaceOpt = None,
    wait: ui.WaitOpt = False,
    timeout: ui.TimeoutOpt = 3600.0,
    json_out: ui.JsonOpt = False,
) -> None:
    """Move the federation forward as far as it can go now; safe to re-run.

    Fixes who takes part, closes the round when every site (or, after the deadline, at least
    the threshold of sites) has submitted, unmasks the sum of the updates, merges the heads
    with FedReMa and publishes the next round. Sites that ran `fedrema withdraw` are not
    waited for. Exit 75 when nothing could move yet.

      fedrema aggregate -s coord --wait
    """
    from fedrema_cli.errors import IntegrityError, NotYetError
    from fedrema_cli.roles.coordinator import Coordinator

    coord = Coordinator(state, workspace=workspace)
    coord.clear_stale_temporaries()
    events: list[str] = []
    rejected: dict[str, str] = {}
    withdrawn: dict[str, dict[str, object]] = {}
    bad_withdrawals: dict[str, str] = {}
    start_round = coord.current_round()

    def step() -> tuple[bool, str]:
        progress = coord.advance(close=close)
        events.extend(progress.events)
        if not json_out:
            for what, why in progress.rejected.items():
                if what not in rejected:
                    ui.warn(f"{what} refused, the site is left out of that step: {why}")
            for e in progress.events:
                ui.say(f"[green]✓[/] {e}")
            for site, why in progress.bad_withdrawals.items():
                if site not in bad_withdrawals:
                    ui.warn(f"{site}'s withdrawal refused, {site} is still waited for: {why}")
            for site, notice in progress.withdrawn.items():
                if site not in withdrawn:
                    ui.say(
                        f"  not waiting for {site}: withdrew from round "
                        f"{notice['from_round']} on ({escape(str(notice['reason']))})"
                    )
        rejected.update(progress.rejected)
        withdrawn.update(progress.withdrawn)
        bad_withdrawals.update(progress.bad_withdrawals)
        waiting = coord.waiting_for()
        finished = not wait or coord.current_round() > start_round or coord.complete()
        return finished, waiting

    gave_up = ui.wait_for(step, timeout=timeout)
    if json_out:
        ui.emit_json(
            {
                "events": events,
                "rejected": rejected,
                "withdrawn": withdrawn,
                "refused_withdrawals": bad_withdrawals,
                "round": coord.current_round(),
                "complete": coord.complete(),
                "waiting_for": coord.waiting_for(),
                "timed_out": gave_up is not None,
            }
        )
    elif coord.complete():
        ui.say("[bold]federation complete[/]: sites run `fedrema personalize`")
    if gave_up is not None:
        raise gave_up
    if not events and not coord.complete():
        if rejected:  # a refused file is all that happened: say so, loudly
            what, why = next(iter(rejected.items()))
            raise IntegrityError(
                f"{what} was refused: {why}",
                hint="that site is left out of the round: it closes without it at the "
                "deadline, or now with `fedrema aggregate --close`",
            )
        raise NotYetError(
            f"nothing to aggregate yet; waiting for {coord.waiting_for()}",
            hint="`fedrema status` shows who must act",
        )
    return None
