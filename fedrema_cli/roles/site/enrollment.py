"""A site joins: checks its data against the federation's schema, makes keys, enrolls."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

from fedrema_cli.errors import UsageError
from fedrema_cli.protocol import exchange
from fedrema_cli.roles.site.base import (
    META,
    SiteBase,
    _load_data,
)
from fedrema_cli.store.federation import ROSTER, read_federation
from fedrema_cli.store.state import COORDINATOR_META, PartyState
from fedrema_cli.store.storage import lasting_location
from fedrema_cli.store.workspace import SITE_NAME, Workspace


class Enrollment(SiteBase):
    # -- joining ----------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        *,
        workspace: str,
        state_dir: str | Path,
        name: str,
        train: str | Path,
        test: str | Path | None,
        coordinator_fingerprint: str | None = None,
    ) -> Self:
        """Check the data against the federation's schema, make keys, and ask to join."""
        if not SITE_NAME.fullmatch(name):
            raise UsageError(
                f"site name {name!r} is not allowed: use 1-63 lowercase letters, "
                "digits, '.', '_' or '-', starting with a letter or digit"
            )
        state = PartyState(state_dir)
        ws = Workspace.open(workspace)
        if state.exists(META):
            meta = state.read_json(META)
            if meta.get("site") == name and not ws.exists(f"enrollments/{name}"):
                return cls._finish_enrollment(ws, state, state_dir, meta)
            raise UsageError(
                f"{state_dir} already holds site {meta.get('site')!r}; nothing was changed"
            )
        if state.exists(COORDINATOR_META):
            raise UsageError(
                f"{state_dir} is the coordinator's state folder; a site needs a folder of "
                "its own; nothing was changed",
                hint="give --state a new folder",
            )
        config, digest = read_federation(ws, expect_fingerprint=coordinator_fingerprint)
        if ws.exists(ROSTER):
            raise UsageError(
                f"{config.federation_id} is already running (its roster is approved); "
                "sites cannot join a running federation yet; nothing was changed",
                hint="ask the coordinator",
            )
        if ws.exists(f"enrollments/{name}"):
            raise UsageError(
                f"a site named {name!r} has already enrolled in {config.federation_id}",
                hint="pick another --site name",
            )
        paths = {
            "train": str(Path(train).resolve()),
            "test": str(Path(test).resolve()) if test else None,
        }
        # fails with file/line/column before anything is written
        joined_with = _load_data(config, paths).train_fingerprint
        identity = state.create_identity()
        state.write_json(
            META,
            {
                "format": "fedrema-site/1",
                "site": name,
                "workspace": lasting_location(workspace),
                "federation_id": config.federation_id,
                "federation_sha256": digest,
                "data": paths,
                # train-local names a file changed since (else: a confusing budget refusal)
                "data_sha256": {"train": joined_with},
            },
        )
        exchange.write_enrollment(
            ws,
            federation_id=config.federation_id,
            federation_sha256=digest,
            site=name,
            identity=identity,
        )
        return cls(state_dir)

    @classmethod
    def _finish_enrollment(
        cls, ws: Workspace, state: PartyState, state_dir: str | Path, meta: dict[str, Any]
    ) -> Self:
        """A re-run of an `init --site` whose enrollment never reached the workspace."""
        config, digest = read_federation(ws)
        if digest != meta.get("federation_sha256") or ws.exists(ROSTER):
            raise UsageError(
                f"{state_dir} joined another federation, or this one is already running; "
                "nothing was changed"
            )
        exchange.write_enrollment(
            ws,
            federation_id=config.federation_id,
            federation_sha256=digest,
            site=meta["site"],
            identity=state.identity(),
        )
        return cls(state_dir)
