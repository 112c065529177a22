"""A site joins: checks its data against the federation's schema, makes keys, enrolls."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

from fedrema_cli.errors import UsageError
from fedrema_cli.identity import Identity, fingerprint
from fedrema_cli.protocol import exchange
from fedrema_cli.protocol.rounds import next_unstarted_round
from fedrema_cli.roles.site.base import (
    META,
    SiteBase,
    _load_data,
)
from fedrema_cli.store.federation import read_federation
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
            if meta.get("site") == name and meta.get("data") == _data_paths(train, test):
                # the same `init` run again (a script, cron): a no-op, if it names the same
                # federation (two studies can share an id, never a signed config)
                _, digest = read_federation(ws)
                if digest != meta.get("federation_sha256"):
                    raise UsageError(
                        f"{state_dir} already holds site {name!r} of another federation "
                        f"(workspace {meta.get('workspace')}); nothing was changed",
                        hint="give --state a new folder to join this one",
                    )
                return cls(state_dir)
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
        # A running federation takes new sites too: the coordinator approves the enrollment
        # into a new roster version, in force from the next round not yet started.
        if ws.exists(f"enrollments/{name}"):
            raise UsageError(
                f"a site named {name!r} has already enrolled in {config.federation_id}",
                hint="pick another --site name",
            )
        paths = _data_paths(train, test)
        # fails with file/line/column before anything is written
        loaded = _load_data(config, paths)
        if config.secagg.enabled and len(loaded.y_train) > config.secagg.max_weight:
            raise UsageError(
                f"{train} holds {len(loaded.y_train):,} training records; this federation's "
                f"secure aggregation admits at most {config.secagg.max_weight:,} per site",
                hint="ask the coordinator to create the federation with a larger --max-records",
            )
        joined_with = loaded.train_fingerprint
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
        if digest != meta.get("federation_sha256"):
            raise UsageError(f"{state_dir} joined another federation; nothing was changed")
        exchange.write_enrollment(
            ws,
            federation_id=config.federation_id,
            federation_sha256=digest,
            site=meta["site"],
            identity=state.identity(),
        )
        return cls(state_dir)

    # -- key rotation -----------------------------------------------------------------------

    def rotate_key(self) -> dict[str, Any]:
        """Make a new identity key and ask the coordinator to put it in the next roster.

        The request is signed by the key the roster names now (only this site can ask) and
        by the new key (it is held). Until the coordinator approves it, and for every round
        before the one it takes effect in, this site keeps signing with the old key; earlier
        rounds' files stay verifiable with it. Nobody else's keys change.
        """
        self._require_admitted()
        if self.name not in self.fed.roster.names:  # type: ignore[union-attr]
            raise UsageError(f"{self.name} is no longer in the roster: there is no key to rotate")
        if next_unstarted_round(self.fed) is None:
            raise UsageError(
                f"every round of {self.fed.id} has started: a new key would never take effect; "
                "nothing was changed",
                hint="keep the key for the rest of this federation (if it leaked, tell the "
                "coordinator, who can remove this site)",
            )
        in_roster = self.fed.key_for(f"site:{self.name}").sign_pk
        current = self.fed.identity
        if current.public.sign_pk != in_roster:
            pending, _ = exchange.pending_rotations(self.fed)
            if self.name in pending and pending[self.name].sign_pk == current.public.sign_pk:
                raise UsageError(
                    f"{self.name}'s previous key rotation is not in the roster yet; nothing was "
                    "changed",
                    hint="the coordinator approves it with `fedrema approve SITE`",
                )
            # A rotation cut off after the new key was made: publish it now.
            with self.state.exclusive():
                where = exchange.write_rotation(
                    self.fed, federation_sha256=self.meta["federation_sha256"], new=current
                )
            return self._rotated(in_roster, current, where)
        with self.state.exclusive():
            new = self.state.rotate_identity()
            where = exchange.write_rotation(
                self.fed, federation_sha256=self.meta["federation_sha256"], new=new
            )
        return self._rotated(in_roster, new, where)

    def _rotated(self, old_pk: str, new: Identity, where: str) -> dict[str, Any]:
        return {
            "site": self.name,
            "published": where,
            "old_fingerprint": fingerprint(old_pk),
            "new_fingerprint": fingerprint(new.public.sign_pk),
        }


def _data_paths(train: str | Path, test: str | Path | None) -> dict[str, str | None]:
    """The data files as the site's state records them (absolute: cron runs elsewhere)."""
    return {
        "train": str(Path(train).resolve()),
        "test": str(Path(test).resolve()) if test else None,
    }
