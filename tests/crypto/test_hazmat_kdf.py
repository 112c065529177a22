"""HKDF-SHA256: RFC 5869 known answers, pinned derive_key outputs, context separation."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from secagg_harness import load_vectors

from crypto.errors import ParameterError
from crypto.hazmat import kdf

RFC = load_vectors("hkdf_rfc5869")["vectors"]
PINNED = load_vectors("mask_prg")["kdf"]
SID = bytes(range(32))


@pytest.mark.parametrize("v", RFC, ids=lambda v: v["name"][:3])
def test_rfc5869_okm(v: dict) -> None:
    ikm, salt, info = (bytes.fromhex(v[k]) for k in ("ikm", "salt", "info"))
    okm = kdf.hkdf_sha256(ikm, salt=salt or None, info=info, length=v["length"])
    assert okm.hex() == v["okm"]


@pytest.mark.parametrize("v", RFC, ids=lambda v: v["name"][:3])
def test_rfc5869_prk_is_consistent(v: dict) -> None:
    # The vector file itself: PRK = HMAC-SHA256(salt or zeros, IKM) (RFC 5869 §2.2).
    salt = bytes.fromhex(v["salt"]) or bytes(32)
    assert hmac.new(salt, bytes.fromhex(v["ikm"]), hashlib.sha256).hexdigest() == v["prk"]


@pytest.mark.parametrize("v", PINNED, ids=lambda v: v["purpose"])
def test_derive_key_pinned(v: dict) -> None:
    key = kdf.derive_key(
        bytes.fromhex(v["ikm"]),
        purpose=v["purpose"].encode(),
        session_id=bytes.fromhex(v["session_id"]),
        parties=v["parties"],
    )
    assert key.hex() == v["key"]
    fields = [kdf.KDF_LABEL, v["purpose"].encode(), bytes.fromhex(v["session_id"])]
    fields += [kdf.u32(len(v["parties"])), *(kdf.u32(p) for p in v["parties"])]
    assert kdf.encode_fields(fields).hex() == v["info"]


def test_every_context_field_separates_keys() -> None:
    ikm = b"\x01" * 32
    base = kdf.derive_key(ikm, purpose=b"pair", session_id=SID, parties=(1, 2))
    variants = [
        kdf.derive_key(ikm, purpose=b"self", session_id=SID, parties=(1, 2)),
        kdf.derive_key(ikm, purpose=b"pair", session_id=bytes(32), parties=(1, 2)),
        kdf.derive_key(ikm, purpose=b"pair", session_id=SID, parties=(2, 1)),
        kdf.derive_key(ikm, purpose=b"pair", session_id=SID, parties=(1, 2, 3)),
        kdf.derive_key(ikm, purpose=b"pair", session_id=SID, parties=(12,)),
        kdf.derive_key(b"\x02" * 32, purpose=b"pair", session_id=SID, parties=(1, 2)),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_encode_fields_is_unambiguous() -> None:
    assert kdf.encode_fields([b"a", b"bc"]) != kdf.encode_fields([b"ab", b"c"])
    assert kdf.encode_fields([b"", b"x"]) != kdf.encode_fields([b"x", b""])
    assert kdf.encode_fields([b"x"]) != kdf.encode_fields([b"x", b""])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"purpose": b"", "session_id": SID},
        {"purpose": b"p", "session_id": SID[:31]},
        {"purpose": b"p", "session_id": SID, "parties": (-1,)},
        {"purpose": b"p", "session_id": SID, "parties": (2**32,)},
    ],
)
def test_derive_key_rejects_bad_context(kwargs: dict) -> None:
    with pytest.raises(ParameterError):
        kdf.derive_key(b"k" * 32, **kwargs)
