"""The federation workspace: the shared folder (or remote store) every party reads and writes.

The only code that knows where artifacts live. It holds public, signed files only:

    federation.json                      coordinator: the signed federation config
    enrollments/<site>.json              a site's request to join (self-signed)
    roster.json                          coordinator: approved sites, their keys, SecAgg indices
    rounds/<r>/model.json (+.params.safetensors)        global model for round r (float16
                                                        or float32: config ``broadcast``)
    rounds/<r>/heads/<site>.json         a site's FedReMa head for round r, sealed to that site
    rounds/<r>/keys/<site>.json          SecAgg key advert for round r
    rounds/<r>/key-roster.json           coordinator: U1(r)
    rounds/<r>/shares/<site>.json (+.to-<v>.bin)       SecAgg key shares, one ciphertext per peer v
    rounds/<r>/masking-roster.json       coordinator: U2(r); round r is open for submissions
    rounds/<r>/submissions/<site>.json (+.masked.bin)  masked update, sealed head, metadata
    rounds/<r>/unmask-request.json       coordinator: U3(r), the survivors
    rounds/<r>/reveals/<site>.json (+.bin)             unmasking shares
    rounds/<r>/result.json               coordinator: what happened in round r
    ledger/<site>/<r>.json               published copy of a site's privacy-ledger entry

Round files and ledger copies are stored gzip'd (`envelope.pack`); the bootstrap files above
``rounds/`` stay plain JSON. Every read takes both.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedrema_cli.errors import IntegrityError, StoreError
from fedrema_cli.identity import Identity, PublicIdentity
from fedrema_cli.store import envelope as env
from fedrema_cli.store.storage import Storage, open_storage

COORDINATOR = "coordinator"
#: A site's name: it becomes file and folder names in every workspace and state folder.
SITE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
#: Cap on reads before the federation's own limit is known (config, enrollments, roster).
BOOTSTRAP_MAX_BYTES = 1024 * 1024


def site_author(site: str) -> str:
    return f"site:{site}"


def round_path(r: int, *parts: str) -> str:
    return "/".join(("rounds", f"{r:04d}", *parts))


@dataclass(frozen=True)
class Artifact:
    """A verified artifact: its envelope and its verified attachments."""

    envelope: env.Envelope
    attachments: dict[str, bytes]

    @property
    def body(self) -> dict[str, Any]:
        return self.envelope.body


class Workspace:
    """Signed, write-once artifacts over a Storage backend."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        #: every read is capped at this; the federation raises it to what its model needs
        self.max_bytes = BOOTSTRAP_MAX_BYTES

    @classmethod
    def open(cls, location: str) -> Workspace:
        return cls(open_storage(location))

    def describe(self) -> str:
        return self.storage.describe()

    # -- generic signed artifacts ---------------------------------------------------------

    def put(
        self,
        base: str,
        *,
        kind: str,
        federation: str,
        round: int,
        author: str,
        identity: Identity,
        body: Mapping[str, Any],
        attachments: Mapping[str, bytes] | None = None,
        packed: bool = False,
    ) -> bool:
        """Write attachments first, then the envelope whose appearance completes the artifact.

        ``packed``: store the envelope gzip'd (`envelope.pack`; every reader takes both).
        Returns False when the identical artifact was already there (an idempotent re-run).
        """
        attachments = dict(attachments or {})
        for name, data in attachments.items():
            self.storage.write_once(f"{base}.{name}", data)
        raw = env.seal(
            kind=kind,
            federation=federation,
            round=round,
            author=author,
            body=body,
            identity=identity,
            attachments=attachments,
        )
        return self.storage.write_once(f"{base}.json", env.pack(raw) if packed else raw)

    def quarantine(self, base: str, attachments: tuple[str, ...]) -> str:
        """Move an artifact that does not verify (and its attachments) to ``quarantine/``.

        Only for files in the place of an artifact the caller is about to write as their
        author: nothing verified is ever moved. Returns where it went. A symlink or special
        file is removed, not copied (its target is not ours to read).
        """
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        dest = f"quarantine/{base.replace('/', '_')}.{stamp}"
        for suffix in ("json", *attachments):
            path = f"{base}.{suffix}"
            if not self.storage.exists(path):
                continue
            with contextlib.suppress(IntegrityError):  # symlink, special or oversized file:
                self.storage.write_once(  # removing it is all we do
                    f"{dest}.{suffix}", self.storage.read_bytes(path, max_bytes=self.max_bytes)
                )
            self.storage.delete(path)
        return dest

    def exists(self, base: str) -> bool:
        return self.storage.exists(f"{base}.json")

    def get(
        self,
        base: str,
        *,
        kind: str,
        federation: str | None,
        round: int | None,
        author: str,
        key: PublicIdentity,
        attachments: tuple[str, ...] = (),
    ) -> Artifact:
        where = f"{self.describe()}/{base}.json"
        raw = self.read_envelope(base, where=where)
        envelope = env.open_envelope(
            raw, where=where, kind=kind, federation=federation, round=round, author=author, key=key
        )
        blobs = {
            name: env.check_attachment(
                envelope, name, self._read_attachment(base, name), where=where
            )
            for name in attachments
        }
        return Artifact(envelope=envelope, attachments=blobs)

    def read_envelope(self, base: str, *, where: str | None = None) -> bytes:
        """An envelope's JSON bytes, unverified: read and unpacked, each capped at the limit."""
        stored = self.storage.read_bytes(f"{base}.json", max_bytes=self.max_bytes)
        where = where or f"{self.describe()}/{base}.json"
        return env.unpack(stored, where=where, limit=self.max_bytes)

    def _read_attachment(self, base: str, name: str) -> bytes:
        try:
            return self.storage.read_bytes(f"{base}.{name}", max_bytes=self.max_bytes)
        except IntegrityError:
            raise
        except StoreError:
            raise IntegrityError(
                f"{base}.json lists attachment {name!r} but it is missing"
            ) from None

    def read_self_authenticating(self, base: str, name: str) -> bytes | None:
        """An attachment read without its envelope (None if absent): only for content that
        authenticates itself, such as an AEAD ciphertext under a key from signed public keys,
        where the envelope's signature would add nothing but its bytes on the wire."""
        if not self.storage.exists(f"{base}.{name}"):
            return None
        return self.storage.read_bytes(f"{base}.{name}", max_bytes=self.max_bytes)

    def names(self, folder: str, suffix: str = ".json") -> list[str]:
        """Artifact names (without suffix) directly under a folder."""
        return [n[: -len(suffix)] for n in self.storage.list(folder) if n.endswith(suffix)]

    # -- bootstrap: files verified against a key carried inside them ----------------------

    def read_self_signed(self, base: str, *, kind: str, author: str, key_field: str) -> Artifact:
        """Read a file whose verify key is in its own body (federation config, enrollment).

        This proves the file is internally consistent; trust in the key itself comes from a
        fingerprint a person compared (``--coordinator-fingerprint``, ``approve``) or a pin.
        """
        where = f"{self.describe()}/{base}.json"
        raw = self.read_envelope(base, where=where)
        _, body, _ = env.parse_signed(raw, where=where)
        try:
            key = PublicIdentity.from_json(body[key_field])
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(f"{where} carries no valid public key") from None
        envelope = env.open_envelope(
            raw, where=where, kind=kind, federation=None, round=None, author=author, key=key
        )
        return Artifact(envelope=envelope, attachments={})

    def raw_sha256(self, base: str) -> str:
        return env.sha256(self.storage.read_bytes(f"{base}.json", max_bytes=self.max_bytes))
