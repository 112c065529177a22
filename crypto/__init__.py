"""Secure aggregation as pure code: Bonawitz et al. 2017 double masking over bytes and arrays.

Bytes and numpy arrays in, bytes and numpy arrays out: no file I/O, no printing, no logging,
randomness passed in. Two levels, as in pyca/cryptography:

* recipes: :mod:`crypto.secagg` (the protocol: import its states and functions from there),
  :mod:`crypto.seal` (HPKE sealing of a small payload to one recipient), the long-term key
  helpers below, :mod:`crypto.errors`;
* :mod:`crypto.hazmat`: the building blocks underneath (HKDF, AES-CTR mask PRG, AES-GCM,
  Shamir, X25519, Ed25519, fixed point). Only this package should import them.

Long-term identity keys (raw 32-byte keys, see ``docs/architecture.md``):
:func:`generate_signing_key` / :func:`signing_public_key` / :func:`sign` /
:func:`verify_signature` (Ed25519; ``verify_signature`` raises
:class:`~crypto.errors.IntegrityError`), and :func:`generate_encryption_key` /
:func:`encryption_public_key` (X25519, the key heads are sealed to).
"""

from crypto.errors import (
    DecryptionError,
    DoubleRevealError,
    HeadroomError,
    InsufficientSurvivors,
    IntegrityError,
    InvalidShare,
    MalformedMessage,
    ParameterError,
    ProtocolAborted,
    SecAggError,
    StageError,
)
from crypto.hazmat.ed25519 import generate_private_key as generate_signing_key
from crypto.hazmat.ed25519 import public_key as signing_public_key
from crypto.hazmat.ed25519 import sign
from crypto.hazmat.ed25519 import verify as verify_signature
from crypto.hazmat.x25519 import generate_private_key as generate_encryption_key
from crypto.hazmat.x25519 import public_key as encryption_public_key
from crypto.seal import SealContext, open_sealed, seal

__all__ = [
    "DecryptionError",
    "DoubleRevealError",
    "HeadroomError",
    "InsufficientSurvivors",
    "IntegrityError",
    "InvalidShare",
    "MalformedMessage",
    "ParameterError",
    "ProtocolAborted",
    "SealContext",
    "SecAggError",
    "StageError",
    "encryption_public_key",
    "generate_encryption_key",
    "generate_signing_key",
    "open_sealed",
    "seal",
    "sign",
    "signing_public_key",
    "verify_signature",
]
