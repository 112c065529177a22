"""Status as one party sees it: the workspace's round status plus this party's own next step."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fedrema_cli.errors import OptionError
from fedrema_cli.protocol.status import round_status
from fedrema_cli.store.federation import Federation, read_federation
from fedrema_cli.store.workspace import Workspace

_COMMAND = re.compile(r"`fedrema ([a-z][a-z-]*)")


def next_command(step: str) -> str | None:
    """The fedrema command this party runs next (``"submit"``, ``"train-local"``...), for a
    script; None when its next step is to wait ("wait for ..., or `fedrema aggregate
    --close` after enough" is still a wait) or there is none. The prose ``next`` names it
    first, in backticks."""
    if step.startswith(("wait", "nothing")):
        return None
    found = _COMMAND.search(step)
    return found.group(1) if found else None


def federation_status(*, state: Path | None, workspace: str | None) -> dict[str, Any]:
    if state is not None:
        from fedrema_cli.roles.coordinator import Coordinator
        from fedrema_cli.roles.site import Site
        from fedrema_cli.store.state import COORDINATOR_META, PartyState

        if PartyState(state).exists(COORDINATOR_META):
            coord = Coordinator(state, workspace=workspace)
            out = round_status(coord.fed).to_json()
            out["you"], out["next"] = "coordinator", out["next_for"].get("coordinator", "")
            out["next_command"] = next_command(out["next"])
            return {**out, "ignored": dict(coord.fed.ignored)}
        site = Site(state, workspace=workspace)
        out = round_status(site.fed).to_json()
        out["you"], out["next"] = site.name, site.next_step(out)
        out["next_command"] = next_command(out["next"])
        # status evaluates nothing (it must stay cheap); it shows what `personalize` found last
        out["last_evaluation"] = site.last_evaluation()
        return {**out, "ignored": dict(site.fed.ignored)}
    if workspace is None:
        raise OptionError("say whose status: --state DIR (a party) or --workspace WS (anyone)")
    ws = Workspace.open(workspace)
    config, _ = read_federation(ws)
    # A read-only observer: it signs nothing, so any identity object will do; reads verify
    # against the coordinator's key in federation.json and the roster it signed.
    from fedrema_cli.identity import Identity

    fed = Federation(ws, config, me="observer", identity=Identity.generate())
    fed.load_roster()
    return {**round_status(fed).to_json(), "ignored": dict(fed.ignored)}
