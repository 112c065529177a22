"""The bodies of the round's signed files, as typed objects: each read and verified once.

Every artifact's body is checked against its schema when first read (a signed file that does
not match is an IntegrityError, never a KeyError deep in a role), and kept for the rest of
the command: the files are write-once, so what verified once stays true.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedrema_cli.errors import IntegrityError
from fedrema_cli.store.federation import Federation


class Body(BaseModel):
    """Fields a reader relies on; others (added by later versions) are kept, not refused."""

    model_config = ConfigDict(frozen=True, extra="allow")

    round: int = Field(ge=0)


class ModelBody(Body):
    created: str


class KeyAdvertBody(Body):
    advert: str


class KeyRosterBody(Body):
    """U1(r): the sites whose key adverts the round uses, and each advert's signature by its
    site (so a site checks every peer's keys without downloading every advert)."""

    parties: tuple[str, ...]
    roster: str
    opened_at: str
    advert_signatures: dict[str, str] | None = None  # None: written before they were carried


class MaskingRosterBody(Body):
    """U2(r): the sites the round is open to (with secure aggregation: who shared keys)."""

    participants: tuple[str, ...]
    roster: str | None = None
    opened_at: str


class SharesBody(Body):
    """R1 ShareKeys(r): the commitment to b_u; the ciphertexts are attachments, one per peer."""

    commitment: str


class SubmissionBody(Body):
    method: str
    sealed_head: str | None = None  # the method's personal part, sealed to the coordinator


class UnmaskRequestBody(Body):
    """U3(r): the survivors whose masked updates are in the sum."""

    survivors: tuple[str, ...]
    dropped: tuple[str, ...] = ()
    request: str
    opened_at: str


class SurvivorsSignedBody(Body):
    unmask_request_sha256: str


class ResultBody(Body):
    """What happened in round r, signed by the coordinator: the evidence every audit uses."""

    method: str
    expected: tuple[str, ...]
    survivors: tuple[str, ...]
    dropped: tuple[str, ...] = ()
    secure_aggregation: bool
    finished_at: str


class WithdrawalBody(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    from_round: int = Field(ge=1, strict=True)
    reason: str
    at: str


BODIES: dict[str, type[BaseModel]] = {
    "model": ModelBody,
    "key-advert": KeyAdvertBody,
    "key-roster": KeyRosterBody,
    "masking-roster": MaskingRosterBody,
    "shares": SharesBody,
    "submission": SubmissionBody,
    "unmask-request": UnmaskRequestBody,
    "survivors-signed": SurvivorsSignedBody,
    "result": ResultBody,
    "withdrawal": WithdrawalBody,
}

_B = TypeVar("_B", bound=BaseModel)


def read(fed: Federation, kind: str, r: int, cls: type[_B], *, site: str | None = None) -> _B:
    """The verified, typed body of one artifact (cached for the rest of the command)."""
    if BODIES[kind] is not cls:
        raise TypeError(f"{kind} bodies are {BODIES[kind].__name__}, not {cls.__name__}")
    key = (kind, r, site)
    cache: dict[Any, Any] = fed.cache.setdefault("bodies", {})
    if key not in cache:
        body = fed.get(kind, r, site=site).body
        try:
            cache[key] = cls.model_validate(body)
        except ValidationError as exc:
            where = f"round {r}'s {kind}" + (f" from {site}" if site else "")
            first = exc.errors()[0]
            field = ".".join(map(str, first["loc"])) or "body"
            raise IntegrityError(
                f"{where} is signed but does not match its schema ({field}: {first['msg']})"
            ) from None
    return cache[key]
