"""HAZMAT: low-level building blocks for crypto.secagg; do not use them directly.

One primitive per module, each a few typed functions over bytes and numpy arrays, all on
pyca ``cryptography`` (nothing hand-rolled, no non-cryptographic randomness for secrets):

* :mod:`~crypto.hazmat.kdf`: HKDF-SHA256 with length-prefixed, structured ``info``;
* :mod:`~crypto.hazmat.prg`: AES-256-CTR mask generator, uint32/uint64 words;
* :mod:`~crypto.hazmat.aead`: AES-256-GCM, random nonce, mandatory associated data;
* :mod:`~crypto.hazmat.shamir`: t-of-n Shamir over GF(2^521 - 1) for 32-byte secrets;
* :mod:`~crypto.hazmat.x25519` / :mod:`~crypto.hazmat.ed25519`: key agreement, signatures;
* :mod:`~crypto.hazmat.fixed_point`: clip, stochastic rounding, two's complement, headroom;
* :mod:`~crypto.hazmat.randomness`: the injected randomness source.
"""
