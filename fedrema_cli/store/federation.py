"""A party's verified view of one federation: config, roster, and every round artifact by kind.

Roles ask for artifacts by *kind*, round and site; this module knows where each kind lives,
who must have signed it, and with which key to check it. Nothing is read unverified.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
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
from fedrema_cli.identity import Identity, PublicIdentity, fingerprint, unb64
from fedrema_cli.store import envelope as env
from fedrema_cli.store.envelope import sha256
from fedrema_cli.store.workspace import COORDINATOR, Artifact, Workspace, round_path, site_author

FEDERATION = "federation"
ROSTER = "roster"
#: Later roster versions (2, 3, ...): ``rosters/0002.json``; version 1 is ``roster.json``.
ROSTERS = "rosters"
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
    """One version of the approved sites: their keys, SecAgg party indices and threshold t.

    Version 1 (``roster.json``) numbers its sites 1..n in name order. A later version
    (``rosters/<v>.json``, write-once like every file) is in force from
    ``effective_from_round`` on and names the file it amends by hash; a site keeps its index
    for good and a new site gets the next unused one, so an index never means two sites.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    federation_id: str
    sites: tuple[RosterSite, ...]
    threshold: int = Field(ge=1)
    approved_at: str
    version: int = Field(default=1, ge=1)
    effective_from_round: int = Field(default=1, ge=1)
    previous_sha256: str | None = None

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


def roster_base(version: int) -> str:
    """Where roster version ``version`` lives in the workspace."""
    return ROSTER if version == 1 else f"{ROSTERS}/{version:04d}"


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
        #: every identity this party has held (key rotation), by public signing key
        self.identities: dict[str, Identity] = {identity.public.sign_pk: identity}
        #: the verified roster versions, oldest first; ``roster`` is the latest
        self.rosters: list[Roster] = [roster] if roster is not None else []
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

    @property
    def roster(self) -> Roster | None:
        """The latest roster version (None before approval)."""
        return self.rosters[-1] if self.rosters else None

    def load_roster(self, *, pinned_sha256: str | None = None) -> Roster | None:
        """Read and verify every roster version the coordinator has signed; return the latest.

        Version 1 is checked against the hash this party pinned; each later version must be
        signed by the coordinator, numbered in sequence, name the previous file's hash and
        not take effect before it. Anything else is refused: a party never guesses who is in.
        """
        if not self.ws.exists(ROSTER):
            self.rosters = []
            return None
        # Before the roster is read, n is bounded by the enrollments (every rostered site
        # enrolled); once it verifies, by the roster itself.
        self.ws.max_bytes = file_limit(self.config, len(self.ws.names("enrollments")))
        if pinned_sha256 is not None and self.ws.raw_sha256(ROSTER) != pinned_sha256:
            raise IntegrityError("roster.json changed since this party pinned it")
        versions = [self._read_roster_version(1, None)]
        names = {n for n in self.ws.names(ROSTERS)}
        v = 2
        while f"{v:04d}" in names:
            previous = versions[-1]
            roster = self._read_roster_version(v, self.ws.raw_sha256(roster_base(v - 1)))
            if roster.effective_from_round < previous.effective_from_round:
                raise IntegrityError(
                    f"{roster_base(v)}.json takes effect before the version it amends"
                )
            versions.append(roster)
            names.discard(f"{v:04d}")
            v += 1
        stray = sorted(n for n in names if round_number(n) is not None)
        if stray:
            raise IntegrityError(
                f"{ROSTERS}/{stray[0]}.json is not the next roster version (expected "
                f"{v:04d}): refusing a roster whose history has a gap"
            )
        self.rosters = versions
        self.ws.max_bytes = file_limit(self.config, max(len(r.sites) for r in versions))
        return self.roster

    def _read_roster_version(self, v: int, previous_sha256: str | None) -> Roster:
        where = f"{roster_base(v)}.json"
        art = self.ws.get(
            roster_base(v),
            kind="roster",
            federation=self.id,
            round=0,
            author=COORDINATOR,
            key=self.coordinator_key,
        )
        try:
            roster = Roster.model_validate(art.body)
        except ValidationError:
            raise IntegrityError(f"{where} does not match the roster schema") from None
        if roster.federation_id != self.id:
            raise IntegrityError(f"{where} belongs to another federation")
        if roster.version != v or roster.previous_sha256 != previous_sha256:
            raise IntegrityError(f"{where} is not version {v} amending the roster before it")
        indices = [s.index for s in roster.sites]
        if indices != sorted(set(indices)) or len({s.name for s in roster.sites}) != len(indices):
            raise IntegrityError(f"{where} lists a site or a party index twice")
        return roster

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

    def roster_for(self, r: int) -> Roster:
        """The roster version in force for round r: who is expected, with which keys and t."""
        self.require_roster()
        for roster in reversed(self.rosters):
            if roster.effective_from_round <= max(r, 1):
                return roster
        return self.rosters[0]

    def site_entry(self, name: str, r: int) -> RosterSite:
        """Site ``name`` as the roster in force for round r lists it; a site that round's
        roster does not list is refused (its files for that round are not the protocol's)."""
        roster = self.roster_for(r)
        if name in roster.names:
            return roster.site(name)
        raise IntegrityError(f"{name} is not in the roster for round {r}")

    def ever_listed(self) -> tuple[str, ...]:
        """Every site any roster version listed, in first-listed order."""
        seen: dict[str, None] = {}
        for roster in self.rosters:
            seen.update(dict.fromkeys(roster.names))
        return tuple(seen)

    def first_round(self, name: str) -> int | None:
        """The first round the site is in the roster for (None: never listed)."""
        for roster in self.rosters:
            if name in roster.names:
                return roster.effective_from_round
        return None

    def removed_from(self, name: str) -> int | None:
        """The round from which the coordinator removed the site (None: not removed)."""
        listed = False
        for roster in self.rosters:
            if name in roster.names:
                listed = True
            elif listed:
                return roster.effective_from_round
        return None

    def identity_for(self, r: int) -> Identity:
        """This party's identity for round r: the key the roster in force then names.

        r = 0 (per-federation files, e.g. a withdrawal): the latest key, as `key_for` checks.
        """
        if self.me == COORDINATOR or not self.rosters or self.me not in self.ever_listed():
            return self.identity
        roster = self.roster_for(r)
        if r < 1 or self.me not in roster.names:  # per-federation, or out of that round: latest
            roster = next(x for x in reversed(self.rosters) if self.me in x.names)
        return self.identities.get(roster.site(self.me).sign_pk, self.identity)

    def key_for(self, author: str, r: int = 0) -> PublicIdentity:
        """The key that must have signed ``author``'s artifact of round r.

        r = 0 (per-federation files, e.g. a withdrawal): the site's latest key.
        """
        if author == COORDINATOR:
            return self.coordinator_key
        name = author.removeprefix("site:")
        if r >= 1:
            return self.site_entry(name, r).public
        for roster in reversed(self.rosters):
            if name in roster.names:
                return roster.site(name).public
        return self.require_roster().site(name).public

    def ledger_verifier(self, site: str) -> Callable[[bytes, bytes], None]:
        """Verify one of ``site``'s privacy-ledger entries with the key the roster named for
        the round the (signed) entry is about: entries signed before a key rotation stay
        valid under the old key, and the old key cannot sign for rounds after it."""
        import crypto
        from crypto.canonical import parse_json

        def verify(signature: bytes, payload: bytes) -> None:
            r = parse_json(payload).get("round")
            if not isinstance(r, int) or isinstance(r, bool):
                raise IntegrityError("a ledger entry without a round")
            pk = self.key_for(site_author(site), max(r, 1)).sign_pk
            crypto.verify_signature(unb64(pk, what=f"{site}'s key"), signature, payload)

        return verify

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
                identity=self.identity_for(r),
                body=body,
                attachments=attachments,
                packed=True,
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
            key=self.key_for(author, r),
            attachments=attachments,
        )
        self._verified.add(base)
        return art

    def verify_detached(
        self, kind: str, r: int, body: Mapping[str, Any], signature: str, *, site: str
    ) -> None:
        """Check ``signature`` as the one ``site``'s artifact of this kind and round with this
        body would carry (IntegrityError if not), without reading the artifact."""
        base, author = self._base(kind, r, site)
        env.verify_detached(
            signature,
            kind=kind,
            federation=self.id,
            round=r,
            author=author,
            body=body,
            key=self.key_for(author, r),
            where=f"{base}.json (signature carried by another file)",
        )

    def read_self_authenticating(
        self, kind: str, r: int, name: str, *, site: str | None = None
    ) -> bytes | None:
        """One attachment of an artifact, read without its signed envelope (None if absent).

        Only for bytes whose content proves who made them (an AEAD ciphertext under a key
        derived from signed public keys, with the round's session in its associated data):
        anything else placed there fails that check, as a forged envelope would fail here.
        """
        base, _ = self._base(kind, r, site)
        return self.ws.read_self_authenticating(base, name)

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
        """Sites of round r's roster that have written a verified artifact of this kind."""
        names = self.roster_for(r).names
        if kind == "ledger-entry":
            return [s for s in names if self.exists(kind, r, site=s)]
        present = set(self.ws.names(round_path(r, KINDS[kind].folder)))
        return [s for s in names if s in present and self.exists(kind, r, site=s)]

    def ledger_rounds(self, site: str) -> list[int]:
        """Rounds with a file in ``ledger/<site>/`` (names parsed strictly; not verified)."""
        rounds = (round_number(n) for n in self.ws.names(f"ledger/{site}"))
        return sorted(r for r in rounds if r is not None)

    def withdrawn_sites(self) -> list[str]:
        """Roster sites that posted a withdrawal (a listing: read each with ``get`` to trust it).

        One listing of ``withdrawals/``, so every status and coordinator step can afford it,
        also on remote storage.
        """
        self.require_roster()
        present = set(self.ws.names("withdrawals"))
        return [s for s in self.ever_listed() if s in present]
