"""Mask PRG: pinned vectors (cross-checked with openssl), live openssl check, chunking."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from secagg_harness import load_vectors

from crypto.errors import ParameterError
from crypto.hazmat import prg

VECTORS = load_vectors("mask_prg")["prg"]


@pytest.mark.parametrize(
    "v", VECTORS, ids=lambda v: f"{v['key'][:8]}-{v['modulus_bits']}-{v['dim']}"
)
def test_mask_known_answers(v: dict) -> None:
    words = prg.mask(bytes.fromhex(v["key"]), v["dim"], v["modulus_bits"])
    assert words.dtype == prg.uint_dtype(v["modulus_bits"])
    assert words.shape == (v["dim"],)
    assert [int(w) for w in words[:4]] == v["first_words"]
    assert [int(w) for w in words[-2:]] == v["last_words"]
    assert hashlib.sha256(words.tobytes()).hexdigest() == v["sha256"]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
@pytest.mark.parametrize("bits", [32, 64])
def test_mask_matches_openssl_cli(bits: int) -> None:
    key = hashlib.sha256(b"live openssl check").digest()
    dim = 3001
    cmd = ["openssl", "enc", "-aes-256-ctr", "-K", key.hex(), "-iv", "00" * 16, "-nosalt"]
    stream = subprocess.run(cmd, input=bytes(dim * bits // 8), capture_output=True, check=True)
    expected = np.frombuffer(stream.stdout, dtype=prg.uint_dtype(bits))
    np.testing.assert_array_equal(prg.mask(key, dim, bits), expected)


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_chunk_boundaries_match_one_shot_ctr(bits: int, extra: int) -> None:
    key = b"\x07" * 32
    dim = 2 * prg.CHUNK_BYTES // (bits // 8) + extra
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    one_shot = np.frombuffer(encryptor.update(bytes(dim * bits // 8)), dtype=prg.uint_dtype(bits))
    np.testing.assert_array_equal(prg.mask(key, dim, bits), one_shot)


def test_masks_look_uniform() -> None:
    words = prg.mask(b"\x09" * 32, 1 << 16, 64)
    bits = np.unpackbits(words.view(np.uint8))
    # 2^22 fair bits: mean within 6 standard deviations of 1/2.
    assert abs(bits.mean() - 0.5) < 6 * 0.5 / np.sqrt(bits.size)
    assert len(np.unique(words)) == words.size


def test_different_keys_give_unrelated_masks() -> None:
    a, b = prg.mask(b"\x01" * 32, 1000, 32), prg.mask(b"\x02" * 32, 1000, 32)
    assert np.count_nonzero(a == b) < 5


def test_zero_length_and_bad_arguments() -> None:
    assert prg.mask(bytes(32), 0, 32).shape == (0,)
    with pytest.raises(ParameterError):
        prg.mask(bytes(16), 4, 32)
    with pytest.raises(ParameterError):
        prg.mask(bytes(32), 4, 16)
    with pytest.raises(ParameterError):
        prg.mask(bytes(32), -1, 32)


def test_output_buffer_can_be_reused() -> None:
    buf = np.full(1000, 7, dtype=np.uint64)
    result = prg.mask(b"\x03" * 32, 1000, 64, out=buf)
    assert result is buf
    np.testing.assert_array_equal(buf, prg.mask(b"\x03" * 32, 1000, 64))
    for bad in [
        np.empty(999, np.uint64),
        np.empty(1000, np.uint32),
        np.empty(2000, np.uint64)[::2],
    ]:
        with pytest.raises(ParameterError):
            prg.mask(b"\x03" * 32, 1000, 64, out=bad)
