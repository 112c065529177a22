"""A party's private state folder: keys, protocol secrets, local models, the privacy ledger.

Never shared. Files are created owner-only (0600 in a 0700 folder) and replaced atomically,
so a crash leaves either the old or the new version of every file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crypto.canonical import parse_json
from fedrema_cli.errors import ConfigError, StateBusyError, StoreError
from fedrema_cli.identity import Identity
from fedrema_cli.store.storage import LocalStorage

IDENTITY = "identity.json"
PAST_IDENTITIES = "past-identities"
#: What makes a folder a site's or the coordinator's state folder (its own record).
SITE_META = "site.json"
COORDINATOR_META = "coordinator.json"

#: How long a command waits for another one holding the same state folder.
LOCK_WAIT_SECONDS = 60.0


def not_a_state_folder(root: str | Path, kind: str, hint: str) -> ConfigError:
    """The error for a --state that is not ``kind``'s folder; a typo gets a did-you-mean."""
    from fedrema_cli.suggest import missing_folder

    why = missing_folder(root) if not Path(root).exists() else ""
    return ConfigError(
        f"{root} is not a {kind} state folder" + (f" ({why})" if why else ""), hint=hint
    )


class PartyState:
    """Typed access to one party's private folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.storage = LocalStorage(self.root, private=True)

    def exists(self, name: str) -> bool:
        return self.storage.exists(name)

    def read_bytes(self, name: str) -> bytes:
        return self.storage.read_bytes(name)

    def write_bytes(self, name: str, data: bytes) -> None:
        self.storage.replace(name, data)

    def write_once(self, name: str, data: bytes) -> bool:
        return self.storage.write_once(name, data)

    def read_json(self, name: str) -> Any:
        raw = self.storage.read_bytes(name)
        try:
            return parse_json(raw)
        except ValueError as exc:
            raise StoreError(f"{self.root / name} is damaged ({exc}; edited by hand?)") from None

    def read_meta(self, name: str, required: dict[str, type]) -> dict[str, Any]:
        """This party's own record (site.json, coordinator.json), checked before it is used."""
        meta = self.read_json(name)
        bad = (
            [k for k, kind in required.items() if not isinstance(meta.get(k), kind)]
            if isinstance(meta, dict)
            else list(required)
        )
        if bad:
            raise StoreError(
                f"{self.root / name} is damaged (edited by hand?): no valid {', '.join(bad)}",
                hint="restore this state folder from its backup",
            )
        return meta

    def write_json(self, name: str, obj: Any) -> None:
        self.storage.replace(
            name, json.dumps(obj, indent=1, sort_keys=True).encode("utf-8") + b"\n"
        )

    def delete(self, name: str) -> None:
        self.storage.delete(name)

    def list(self, folder: str) -> list[str]:
        return self.storage.list(folder)

    @contextlib.contextmanager
    def exclusive(self, *, wait_seconds: float | None = None) -> Iterator[None]:
        """Hold this folder for one command: a second command on it waits, then gives up.

        Without it a `submit` and a `withdraw` (or two `train-local`s) started at the same
        time could each act on what the other is about to change. The lock is the kernel's
        (flock on the folder itself, released when the process dies): no lock file to go
        stale, nothing written. It excludes commands on this machine only: a state folder is
        one party's private folder, not something two hosts should share.
        """
        import fcntl  # POSIX only; imported here so the rest of the module stays portable

        fd = os.open(self.root, os.O_RDONLY)
        try:
            wait = LOCK_WAIT_SECONDS if wait_seconds is None else wait_seconds
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                        break  # a file system without locks: go on as before locks existed
                    if not isinstance(exc, BlockingIOError):
                        raise StoreError(f"cannot lock {self.root}: {exc.strerror}") from None
                    if time.monotonic() >= deadline:
                        raise StateBusyError(
                            f"{self.root} is in use by another fedrema command",
                            hint="wait for it to finish, then run this again",
                        ) from None
                    time.sleep(0.05)
            # Holding the folder: what a killed write left behind can go.
            self.storage.remove_stale_temporaries()
            yield
        finally:
            os.close(fd)

    def identity(self) -> Identity:
        if not self.exists(IDENTITY):
            raise ConfigError(
                f"{self.root} holds no identity; is this a fedrema state folder?",
                hint="run `fedrema init` first, or pass the right --state",
            )
        return Identity.from_json(self.read_json(IDENTITY))

    def past_identities(self) -> dict[str, Identity]:
        """Identities this party held before a key rotation, by public signing key: rounds
        before the rotation took effect are still signed (and their heads sealed) with them."""
        out = {}
        for name in self.list(PAST_IDENTITIES):
            if name.endswith(".json"):
                identity = Identity.from_json(self.read_json(f"{PAST_IDENTITIES}/{name}"))
                out[identity.public.sign_pk] = identity
        return out

    def rotate_identity(self) -> Identity:
        """A new identity; the current one is archived first (kept: earlier rounds need it),
        so a crash in between leaves both on disk."""
        old = self.identity()
        n = len([x for x in self.list(PAST_IDENTITIES) if x.endswith(".json")]) + 1
        self.write_json(f"{PAST_IDENTITIES}/{n:04d}.json", old.to_json())
        return self.create_identity()

    def create_identity(self) -> Identity:
        identity = Identity.generate()
        self.write_json(IDENTITY, identity.to_json())
        return identity
