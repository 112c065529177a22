"""Long-term party identity: an Ed25519 key that signs everything the party writes, and an
X25519 key that others seal data to (the coordinator for heads; each site for its merged head).

Private halves never leave the party's state folder; public halves travel as base64 of the
raw 32 bytes, and their fingerprints are what a person compares when approving a site.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

import crypto
from fedrema_cli.errors import ConfigError, IntegrityError


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, *, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise IntegrityError(f"{what} is not valid base64") from None


def fingerprint(public_key_b64: str) -> str:
    """A short, human-comparable fingerprint (SHA-256, first 16 bytes, hex in groups of 4)."""
    digest = hashlib.sha256(public_key_b64.encode("ascii")).hexdigest()[:32]
    return ":".join(digest[i : i + 4] for i in range(0, 32, 4))


@dataclass(frozen=True)
class PublicIdentity:
    """What others know of a party: its verify key and its sealing key (raw, base64)."""

    sign_pk: str
    seal_pk: str

    def verify(self, signature: bytes, message: bytes, *, who: str) -> None:
        """Raise IntegrityError unless ``signature`` is this party's signature of ``message``."""
        try:
            crypto.verify_signature(unb64(self.sign_pk, what=f"{who}'s key"), signature, message)
        except crypto.SecAggError:
            raise IntegrityError(f"signature by {who} does not verify") from None

    def to_json(self) -> dict[str, str]:
        return {"sign_pk": self.sign_pk, "seal_pk": self.seal_pk}

    @classmethod
    def from_json(cls, data: dict) -> PublicIdentity:
        return cls(sign_pk=str(data["sign_pk"]), seal_pk=str(data["seal_pk"]))


@dataclass(frozen=True)
class Identity:
    """A party's private keys. Never written anywhere but its own state folder."""

    sign_sk: bytes
    seal_sk: bytes

    @classmethod
    def generate(cls) -> Identity:
        return cls(sign_sk=crypto.generate_signing_key(), seal_sk=crypto.generate_encryption_key())

    def sign(self, message: bytes) -> bytes:
        return crypto.sign(self.sign_sk, message)

    @property
    def public(self) -> PublicIdentity:
        return PublicIdentity(
            sign_pk=b64(crypto.signing_public_key(self.sign_sk)),
            seal_pk=b64(crypto.encryption_public_key(self.seal_sk)),
        )

    def to_json(self) -> dict[str, str]:
        return {
            "format": "fedrema-identity/1",
            "sign_sk": b64(self.sign_sk),
            "seal_sk": b64(self.seal_sk),
        }

    @classmethod
    def from_json(cls, data: dict) -> Identity:
        if data.get("format") != "fedrema-identity/1":
            raise ConfigError("identity file has an unknown format")
        return cls(
            sign_sk=unb64(data["sign_sk"], what="signing key"),
            seal_sk=unb64(data["seal_sk"], what="sealing key"),
        )
