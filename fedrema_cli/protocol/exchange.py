"""What sites and the coordinator hand each other outside the masking protocol.

Enrollment requests, plaintext updates (only with secure aggregation off), classifier heads
sealed to the coordinator (FedReMa needs them one by one: protected by DP, not by masking),
merged heads sealed back to their site, and the arithmetic that turns a sum of weighted
updates into the next model.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from crypto.canonical import canonical_json
from crypto.seal import SealContext, open_sealed, seal
from fedrema_cli.errors import IntegrityError, StoreError
from fedrema_cli.identity import Identity, PublicIdentity, b64, unb64
from fedrema_cli.learning.params import Params, flatten, load_params, part_of
from fedrema_cli.store.federation import Federation
from fedrema_cli.store.workspace import COORDINATOR, Artifact, Workspace, site_author

UPDATE = "update.safetensors"


# -- enrollment ------------------------------------------------------------------------------


def write_enrollment(
    ws: Workspace, *, federation_id: str, federation_sha256: str, site: str, identity: Identity
) -> bool:
    """Ask to join: the site's public keys, bound to the exact federation.json it checked."""
    pub = identity.public
    return ws.put(
        f"enrollments/{site}",
        kind="enrollment",
        federation=federation_id,
        round=0,
        author=site_author(site),
        identity=identity,
        body={"site": site, "keys": pub.to_json(), "federation_sha256": federation_sha256},
    )


def read_enrollment(fed: Federation, site: str, *, federation_sha256: str) -> Artifact:
    """A site's enrollment, if it was made for *this* federation.json.

    Federation ids are names people choose (two consortia may both say ``heart-disease``), so
    the enrollment names the hash of the config the site checked: an enrollment copied from
    another federation, even one with the same id, is refused.
    """
    where = f"enrollments/{site}.json"
    art = fed.ws.read_self_signed(
        f"enrollments/{site}", kind="enrollment", author=site_author(site), key_field="keys"
    )
    if art.body.get("site") != site:
        raise IntegrityError(f"{where} is {art.body.get('site')!r}'s enrollment, not {site}'s")
    if (
        art.envelope.header.get("federation") != fed.id
        or art.body.get("federation_sha256") != federation_sha256
    ):
        raise IntegrityError(
            f"{where} was made for another federation (a copy?), not this federation.json"
        )
    return art


# -- key rotation ----------------------------------------------------------------------------

ROTATIONS = "rotations"


def _rotation_claim(fed_id: str, site: str, old_sign_pk: str, keys: dict[str, str]) -> bytes:
    """What the new key signs: it belongs to this site, in this federation, after that key."""
    return canonical_json(
        {"federation": fed_id, "site": site, "old_sign_pk": old_sign_pk, "keys": keys}
    )


def write_rotation(fed: Federation, *, federation_sha256: str, new: Identity) -> str:
    """Publish a key rotation: the new public keys, signed by the old key (the envelope, so
    only the holder of the key in the roster can ask) and by the new key (so nobody can
    claim a key they do not hold). Returns where it went."""
    site, old = fed.me, fed.identity_for(10**9)
    taken = [n for n in fed.ws.names(f"{ROTATIONS}/{site}") if n.isdigit()]
    base = f"{ROTATIONS}/{site}/{max((int(n) for n in taken), default=0) + 1:04d}"
    keys = new.public.to_json()
    body = {
        "site": site,
        "federation_sha256": federation_sha256,
        "old_sign_pk": old.public.sign_pk,
        "keys": keys,
        "new_key_signature": b64(new.sign(_rotation_claim(fed.id, site, old.public.sign_pk, keys))),
    }
    fed.ws.put(
        base,
        kind="key-rotation",
        federation=fed.id,
        round=0,
        author=site_author(site),
        identity=old,
        body=body,
    )
    return f"{base}.json"


def read_rotation(fed: Federation, site: str, name: str, current: PublicIdentity) -> PublicIdentity:
    """Site ``site``'s rotation ``name``, checked: the envelope signed by ``current`` (the
    key it replaces), the new key's own signature over the claim. Returns the new keys."""
    where = f"{ROTATIONS}/{site}/{name}.json"
    art = fed.ws.get(
        f"{ROTATIONS}/{site}/{name}",
        kind="key-rotation",
        federation=fed.id,
        round=0,
        author=site_author(site),
        key=current,
    )
    body = art.body
    try:
        keys = {"sign_pk": str(body["keys"]["sign_pk"]), "seal_pk": str(body["keys"]["seal_pk"])}
        old_pk, sig = str(body["old_sign_pk"]), str(body["new_key_signature"])
    except (KeyError, TypeError):
        raise IntegrityError(f"{where} does not match the key-rotation schema") from None
    if body.get("site") != site or old_pk != current.sign_pk:
        raise IntegrityError(f"{where} does not rotate {site}'s current key")
    new = PublicIdentity.from_json(keys)
    new.verify(
        unb64(sig, what="new key signature"),
        _rotation_claim(fed.id, site, old_pk, keys),
        who=f"{site}'s new key",
    )
    return new


def pending_rotations(fed: Federation) -> tuple[dict[str, PublicIdentity], dict[str, str]]:
    """Each roster site's newest key that the latest roster does not carry yet, and why a
    rotation was refused.

    Rotations form a chain from the key the site was first approved with: each must be
    signed by the key before it (and by its own new key). A file that breaks the chain (not
    signed by the key it claims to replace: a forgery, or a copy) is refused and skipped.
    """
    out: dict[str, PublicIdentity] = {}
    refused: dict[str, str] = {}
    for site in fed.require_roster().names:
        first = next(v for v in fed.rosters if site in v.names)
        key = first.site(site).public
        for name in sorted(n for n in fed.ws.names(f"{ROTATIONS}/{site}") if n.isdigit()):
            try:
                key = read_rotation(fed, site, name, key)
            except (IntegrityError, StoreError) as exc:
                refused[site] = f"key rotation {name} refused: {exc}"
        if key.sign_pk != fed.require_roster().site(site).sign_pk:
            out[site] = key
    return out, refused


# -- shared part as one vector ----------------------------------------------------------------


def shared_vector(params: Mapping[str, np.ndarray], part: str) -> np.ndarray:
    """The shared part of a model as one float64 vector (sorted names: identical everywhere)."""
    vec, _ = flatten(part_of(params, part))
    return vec


# -- plaintext updates (secure aggregation off) ------------------------------------------------


def plain_update(weighted_delta: np.ndarray, weight: float) -> dict[str, bytes]:
    return {
        UPDATE: st_save(
            {
                "weighted_delta": np.ascontiguousarray(weighted_delta, np.float64),
                "weight": np.array([weight], dtype=np.float64),
            }
        )
    }


def read_plain_update(fed: Federation, r: int, site: str) -> tuple[np.ndarray, float]:
    """One site's plaintext update of round r (no secure aggregation): weight * delta, weight."""
    art = fed.get("submission", r, site=site, attachments=(UPDATE,))
    try:
        arrays = st_load(art.attachments[UPDATE])
        vec, w = arrays["weighted_delta"], float(arrays["weight"][0])
    except (SafetensorError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise IntegrityError(f"round {r}: the update from {site} cannot be read ({exc})") from None
    if not np.all(np.isfinite(vec)) or not np.isfinite(w) or w <= 0:
        raise IntegrityError(f"round {r}: the update from {site} is not finite")
    return vec, w


def plain_sum(fed: Federation, r: int, sites: list[str]) -> tuple[np.ndarray, float]:
    total: np.ndarray | None = None
    weight = 0.0
    for site in sites:
        vec, w = read_plain_update(fed, r, site)
        total = vec.copy() if total is None else total + vec
        weight += w
    assert total is not None
    return total, weight


# -- sealed heads ------------------------------------------------------------------------------


def _context(fed: Federation, r: int, sender: str, recipient: str) -> SealContext:
    return SealContext(
        federation_id=fed.id, round=r, sender=sender, recipient=recipient, purpose="classifier-head"
    )


def seal_head_for_coordinator(fed: Federation, r: int, head: bytes) -> str:
    ctx = _context(fed, r, site_author(fed.me), COORDINATOR)
    return b64(seal(head, unb64(fed.coordinator_key.seal_pk, what="coordinator key"), ctx))


def open_head_for_coordinator(fed: Federation, r: int, site: str) -> Params:
    body = fed.get("submission", r, site=site).body
    sealed = unb64(str(body["sealed_head"]), what=f"head from {site}")
    plain = open_sealed(
        sealed, fed.identity.seal_sk, _context(fed, r, site_author(site), COORDINATOR)
    )
    return load_params(plain)


def sealed_head_body(fed: Federation, r: int, site: str, head: bytes) -> dict[str, object]:
    """The body of a ``head`` artifact: ``head`` sealed to ``site`` alone, for round r."""
    recipient = fed.key_for(site_author(site), r)
    ctx = _context(fed, r, COORDINATOR, site_author(site))
    sealed = seal(head, unb64(recipient.seal_pk, what=f"{site}'s key"), ctx)
    return {"round": r, "sealed_head": b64(sealed)}


def open_head_for_site(fed: Federation, r: int) -> Params | None:
    """This site's merged head for round r, if the coordinator sent one."""
    if not fed.exists("head", r, site=fed.me):
        return None
    body = fed.get("head", r, site=fed.me).body
    sealed = unb64(str(body["sealed_head"]), what="merged head")
    ctx = _context(fed, r, COORDINATOR, site_author(fed.me))
    return load_params(open_sealed(sealed, fed.identity_for(r).seal_sk, ctx))
