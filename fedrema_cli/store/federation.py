"""A party's verified view of one federation: config, roster, and every round artifact by kind.

Roles ask for artifacts by *kind*, round and site; this module knows where each kind lives,
who must have signed it, and with which key to check it. Nothing is read unverified.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from crypto.canonical import canonical_json
from fedrema_cli.config import FederationConfig, parse_config
from fedrema_cli.errors import (
    ConfigError,
    IntegrityError,
    NotYetError,
    StoreError,
    WriteOnceError,
)
from fedrema_cli.identity import Identity, PublicIdentity, fingerprint
from fedrema_cli.store.envelope import sha256
from fedrema_cli.store.workspace import COORDINATOR, Artifact, Workspace, round_path, site_author

FEDERATION = "federation"
ROSTER = "roster"
ROUND_NAME = re.compile(r"[0-9]{4,5}")

#: Every file this process found where an artifact belongs but that did not verify (path ->
#: why), across Federation objects: the shell reports them once, after the command.
IGNORED: dict[str, str] = {}


@dataclass(frozen=True)
class Kind:
    """Where artifacts of one kind live and who writes them."""

    folder: str  # under rounds/<r>/; "" for a single file per round
    name: str  # the file name when ``folder`` is ""
    by_site: bool  # written by a site (one per site) or by the coordinator


KINDS: dict[str, Kind] = {
    "model": Kind("", "model", False),
    "head": Kind("heads", "", False),  # one per site, written by the coordinator
    "key-advert": Kind("keys", "", True),
    "key-roster": Kind("", "key-roster", False),
    "shares": Kind("shares", "", True),
    "masking-roster": Kind("", "masking-roster", False),
    "submission": Kind("submissions", "", True),
    "unmask-request": Kind("", "unmask-request", False),
    "survivors-signed": Kind("consistency", "", True),  # optional Bonawitz round 3
    "reveal": Kind("reveals", "", True),
    "result": Kind("", "result", False),
    "ledger-entry": Kind("", "", True),  # ledger/<site>/<r>, see _base
    "withdrawal": Kind("", "", True),  # withdrawals/<site>, once per federation (round 0)
}


class RosterSite(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    index: int = Field(ge=1)
    sign_pk: str
    seal_pk: str

    @property
    def public(self) -> PublicIdentity:
        return PublicIdentity(sign_pk=self.sign_pk, seal_pk=self.seal_pk)


class Roster(BaseModel):
    """The approved sites, their keys and SecAgg party indices (1..n in name order)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    federation_id: str
    sites: tuple[RosterSite, ...]
    threshold: int = Field(ge=1)
    approved_at: str

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sites)

    def site(self, name: str) -> RosterSite:
        for s in self.sites:
            if s.name == name:
                return s
        raise ConfigError(f"site {name!r} is not in the roster (sites: {', '.join(self.names)})")

    def by_index(self, index: int) -> RosterSite:
        for s in self.sites:
            if s.index == index:
                return s
        raise IntegrityError(f"no site has SecAgg index {index}")

    @property
    def digest(self) -> bytes:
        """Hash bound into every SecAgg session id, so a changed roster cannot be replayed."""
        return bytes.fromhex(sha256(canonical_json(self.model_dump(mode="json"))))


#: Room per site in any one artifact: what grows with n (a roster entry, a key advert in the
#: key roster, an encrypted key share, a survivor's name) is well under 1 KiB per site.
PER_SITE_BYTES = 4096


def file_limit(config: FederationConfig, sites: int = 0) -> int:
    """The largest file any artifact of this federation can need, in bytes.

    Every read is capped at it, so a hostile file (a symlink to /dev/zero, a sparse 6 GB
    file) is refused before it is read. The largest artifacts scale with the model: a masked
    update holds 8 bytes per parameter, a model 4, a sealed head as base64 about 5.4; the
    roster, the key roster, key shares and the unmask request scale with the number of
    sites n. 16 bytes per parameter, 4 KiB per site and 4 MiB of slack cover them all.
    """
    from fedrema_cli.learning.modelspec import part_size

    return 4 * 1024 * 1024 + 16 * part_size(config.model, "all") + PER_SITE_BYTES * sites


def round_number(name: str) -> int | None:
    """The round a file or folder name stands for (``0001``), or None: ASCII digits only, so
    a stray ``backup-old`` or ``²`` is passed over instead of crashing ``int()``."""
    return int(name) if ROUND_NAME.fullmatch(name) else None


def read_federation(
    ws: Workspace, *, expect_fingerprint: str | None = None
) -> tuple[FederationConfig, str]:
    """Read the federation config, check it is self-consistently signed, return it and its hash.

    The key that signed it is inside it: trust comes from the fingerprint a person compared
    (``expect_fingerprint``) or, later, from the hash the party pinned at init.
    """
    art = ws.read_self_signed(
        FEDERATION, kind="federation", author=COORDINATOR, key_field="coordinator"
    )
    config = parse_config(art.body, where=f"{ws.describe()}/federation.json")
    if art.envelope.header.get("federation") != config.federation_id:
        raise IntegrityError("federation.json header and body name different federations")
    if expect_fingerprint is not None:
        actual = fingerprint(config.coordinator.sign_pk)
        if actual != expect_fingerprint.strip().lower():
            raise IntegrityError(
                f"the coordinator's key fingerprint is {actual}, not {expect_fingerprint}: "
                "this is not the federation you were told to join"
            )
    return config, ws.raw_sha256(FEDERATION)


class Federation:
    """Verified access to one federation's workspace, acting as one party."""

    def __init__(
        self,
        ws: Workspace,
        config: FederationConfig,
        *,
        me: str,
        identity: Identity,
        roster: Roster | None = None,
    ) -> None:
        self.ws = ws
        self.config = config
        self.me = me  # "coordinator" or a site name
        self.identity = identity
        self.roster = roster
        self.coordinator_key = PublicIdentity(
            sign_pk=config.coordinator.sign_pk, seal_pk=config.coordinator.seal_pk
        )
        ws.max_bytes = file_limit(config, len(roster.sites) if roster is not None else 0)
        #: artifacts read and verified by this process (write-once: they stay valid)
        self._verified: set[str] = set()
        #: file -> why it was ignored: present where an artifact belongs, but not verifying
        self.ignored: dict[str, str] = {}
        #: what readers derived from verified, write-once artifacts (e.g. typed bodies)
        self.cache: dict[str, Any] = {}

    @property
    def id(self) -> str:
        return self.config.federation_id

    @property
    def author(self) -> str:
        return COORDINATOR if self.me == COORDINATOR else site_author(self.me)

    # -- roster -----------------------------------------------------------------------------

    def load_roster(self, *, pinned_sha256: str | None = None) -> Roster | None:
        """Read and verify the roster if the coordinator has approved one."""
        if not self.ws.exists(ROSTER):
            return None
        # Before the roster is read, n is bounded by the enrollments (every rostered site
        # enrolled); once it verifies, by the roster itself.
        self.ws.max_bytes = file_limit(self.config, len(self.ws.names("enrollments")))
        if pinned_sha256 is not None and self.ws.raw_sha256(ROSTER) != pinned_sha256:
            raise IntegrityError("roster.json changed since this party pinned it")
        art = self.ws.get(
            ROSTER,
            kind="roster",
            federation=self.id,
            round=0,
            author=COORDINATOR,
            key=self.coordinator_key,
        )
        try:
            self.roster = Roster.model_validate(art.body)
        except ValidationError:
            raise IntegrityError("roster.json does not match the roster schema") from None
        if self.roster.federation_id != self.id:
            raise IntegrityError("roster.json belongs to another federation")
        self.ws.max_bytes = file_limit(self.config, len(self.roster.sites))
        return self.roster

    def require_roster(self) -> Roster:
        if self.roster is None:
            if self.me == COORDINATOR:  # approving is this party's own next step
                raise ConfigError(
                    "you have not approved the roster yet",
                    hint="compare fingerprints, then `fedrema approve --all`",
                )
            raise NotYetError(  # a site waits for another party: "run it again later"
                "the coordinator has not approved the roster yet",
                hint="the coordinator runs `fedrema approve`; run this again then",
            )
        return self.roster

    def key_for(self, author: str) -> PublicIdentity:
        if author == COORDINATOR:
            return self.coordinator_key
        return self.require_roster().site(author.removeprefix("site:")).public

    # -- round artifacts --------------------------------------------------------------------

    def _base(self, kind: str, r: int, site: str | None) -> tuple[str, str]:
        spec = KINDS[kind]
        if kind == "ledger-entry":
            assert site is not None
            return f"ledger/{site}/{r:04d}", site_author(site)
        if kind == "withdrawal":
            assert site is not None and r == 0
            return f"withdrawals/{site}", site_author(site)
        if spec.folder:
            if site is None:
                raise ValueError(f"{kind} artifacts are per site")
            author = site_author(site) if spec.by_site else COORDINATOR
            return round_path(r, spec.folder, site), author
        return round_path(r, spec.name), COORDINATOR

    def put(
        self,
        kind: str,
        r: int,
        body: Mapping[str, Any],
        *,
        site: str | None = None,
        attachments: Mapping[str, bytes] | None = None,
    ) -> bool:
        if KINDS[kind].by_site:
            site = self.me
        base, author = self._base(kind, r, site)
        if author != self.author:
            raise ValueError(f"{self.me} cannot write {kind} artifacts")

        def write() -> bool:
            return self.ws.put(
                base,
                kind=kind,
                federation=self.id,
                round=r,
                author=author,
                identity=self.identity,
                body=body,
                attachments=attachments,
            )

        try:
            return write()
        except WriteOnceError:
            if self.exists(kind, r, site=site):
                raise  # our own, verified, different artifact: a real conflict
        # Whatever holds the place does not verify as this author's: nobody can have acted
        # on it. Move it aside (kept for whoever investigates) and write the real artifact.
        moved = self.ws.quarantine(base, tuple(attachments or ()))
        self.ignore(f"{base}.json", f"did not verify; moved to {moved}")
        return write()

    def get(
        self, kind: str, r: int, *, site: str | None = None, attachments: tuple[str, ...] = ()
    ) -> Artifact:
        base, author = self._base(kind, r, site)
        art = self.ws.get(
            base,
            kind=kind,
            federation=self.id,
            round=r,
            author=author,
            key=self.key_for(author),
            attachments=attachments,
        )
        self._verified.add(base)
        return art

    def exists(self, kind: str, r: int, *, site: str | None = None) -> bool:
        """Whether a *verified* artifact of this kind is there.

        Every decision (which round it is, which phase, what to delete or skip) rests on
        this, so a file that is present but does not verify (unsigned, forged, from another
        round, federation or author, damaged, a symlink or too large) counts as absent: it is
        recorded in ``ignored`` for the command to report, and never acted on.
        """
        base, _ = self._base(kind, r, site)
        if base in self._verified:
            return True
        if not self.ws.exists(base):
            return False
        try:
            self.get(kind, r, site=site)
        except (IntegrityError, StoreError) as exc:
            self.ignore(f"{base}.json", str(exc))
            return False
        return True

    def ignore(self, path: str, why: str) -> None:
        """Record a file that is where an artifact belongs but does not verify."""
        self.ignored[path] = why
        IGNORED[path] = why

    def present(self, kind: str, r: int, *, site: str | None = None) -> bool:
        """Whether a file sits where the artifact would (verified or not): only for
        messages that say a file is in the way, never for a decision."""
        return self.ws.exists(self._base(kind, r, site)[0])

    def sites_with(self, kind: str, r: int) -> list[str]:
        """Roster sites that have written a verified artifact of this kind for round r."""
        if kind == "ledger-entry":
            return [s for s in self.require_roster().names if self.exists(kind, r, site=s)]
        present = set(self.ws.names(round_path(r, KINDS[kind].folder)))
        return [
            s for s in self.require_roster().names if s in present and self.exists(kind, r, site=s)
        ]

    def ledger_rounds(self, site: str) -> list[int]:
        """Rounds with a file in ``ledger/<site>/`` (names parsed strictly; not verified)."""
        rounds = (round_number(n) for n in self.ws.names(f"ledger/{site}"))
        return sorted(r for r in rounds if r is not None)

    def withdrawn_sites(self) -> list[str]:
        """Roster sites that posted a withdrawal (a listing: read each with ``get`` to trust it).

        One listing of ``withdrawals/``, so every status and coordinator step can afford it,
        also on remote storage.
        """
        present = set(self.ws.names("withdrawals"))
        return [s for s in self.require_roster().names if s in present]
