r"""Bytes of unmasked payloads, measured and reduced: pFedNet's communication mechanism, pure.

pFedNet (Zhao et al., TPAMI 2025, arXiv 2306.14483) claims up to 60% less communication. Its
official code (ApplicationTechnologyOfMedicalBigData/pFedNet-code@0e40514,
``codeOnPublicData/FedStudy_compress``; reference notes algorithms.md §2 "Communication
mechanism") measures an update by the size of its DEFLATE zip, and reduces it in two steps:

1. the "differentially sparse" fused-lasso smoothing, which makes adjacent coordinates of an
   update equal (``smooth_update``);
2. sparse ternary compression, STC (``stc``): the top-p tails become their means, the rest 0.

Here: ``deflate_size`` measures, ``stc_encode``/``stc_decode`` give STC a compact byte format
(no pickle), ``smooth_update`` solves the smoothing exactly, and ``encode_floats`` gives
float16/bfloat16 payloads with ``float_error`` measuring what they lose. This is for payloads
that are *not* masked: a SecAgg-masked vector is uniformly random and does not compress.

>>> rng = np.random.default_rng(0)
>>> g = np.repeat(rng.normal(size=20), 50) + 0.01 * rng.normal(size=1000)  # steps + noise
>>> smooth = smooth_update(g, SmoothingParams(gamma=0.05))
>>> deflate_size(smooth) < deflate_size(g) // 4
True
>>> blob = stc_encode(smooth, p=0.2)
>>> np.array_equal(stc_decode(blob), stc(smooth, p=0.2)), len(blob) < 100
(True, True)
"""

from __future__ import annotations

import struct
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

DEFLATE_LEVEL = 6
"""zlib's default level, which the official code's ``zipfile.ZIP_DEFLATED`` uses."""

STC_MAGIC = b"STC1"
_STC_HEADER = struct.Struct("<4sQff")  # magic, length, positive mean, negative mean


def _float32(x: np.ndarray) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"a payload must be a 1-D vector, got shape {a.shape}")
    a = a.astype("<f4")
    if not np.isfinite(a).all():
        raise ValueError("a payload must be finite (in float32)")
    return a


def deflate_size(x: np.ndarray, level: int = DEFLATE_LEVEL) -> int:
    """Bytes of the zlib (DEFLATE) stream of x as little-endian float32.

    The official code zips CSV text, whose size also depends on how floats print; the binary
    float32 stream is the payload we would send, so that is what we measure.
    """
    return len(zlib.compress(_float32(x).tobytes(), level))


# --- sparse ternary compression --------------------------------------------------------------


def _stc_parts(x: np.ndarray, p: float) -> tuple[np.ndarray, float, float]:
    """Symbols (0 zero, 1 positive tail, 2 negative tail) and the two tails' float32 means.

    As ``Compress.get_topK``: the positive tail is the entries at or above the (1 - p)
    quantile of max(x, 0) over the whole vector, likewise for the negative side. Unlike the
    official code, exact zeros never join a tail (there a zero quantile, i.e. fewer than a p
    share of positive entries, made every 0 both "positive" and "negative").
    """
    if not 0 < p <= 1:
        raise ValueError(f"p must be in (0, 1], got {p}")
    a = _float32(x).astype(np.float64)
    symbols = np.zeros(a.size, dtype=np.uint8)
    means = []
    for sign, code in ((1.0, 1), (-1.0, 2)):
        side = np.clip(sign * a, 0.0, None)
        tail = (side > 0) & (side >= np.quantile(side, 1.0 - p)) if a.size else side > 0
        symbols[tail] = code
        means.append(float(np.float32(a[tail].mean())) if tail.any() else 0.0)
    return symbols, means[0], means[1]


def stc(x: np.ndarray, p: float = 0.2) -> np.ndarray:
    """Sparse ternary compression of x (official p = 0.2): float32 with three values at most."""
    symbols, mu_pos, mu_neg = _stc_parts(x, p)
    return np.array([0.0, mu_pos, mu_neg], dtype=np.float32)[symbols]


def stc_encode(x: np.ndarray, p: float = 0.2, level: int = DEFLATE_LEVEL) -> bytes:
    """STC of x as bytes: header (magic, length, two float32 means), then DEFLATE'd symbols.

    Symbols are packed four to a byte, two bits each, lowest bits first. At p = 0.2 up to 40%
    of the coordinates are non-zero, where two bits per coordinate beat delta-coded indices
    (one byte per index at least) plus signs; DEFLATE then codes the symbols' skew and the
    runs that fused smoothing creates.
    """
    symbols, mu_pos, mu_neg = _stc_parts(x, p)
    padded = np.zeros(-(-symbols.size // 4) * 4, dtype=np.uint8)
    padded[: symbols.size] = symbols
    quads = padded.reshape(-1, 4)
    packed = quads[:, 0] | (quads[:, 1] << 2) | (quads[:, 2] << 4) | (quads[:, 3] << 6)
    header = _STC_HEADER.pack(STC_MAGIC, symbols.size, mu_pos, mu_neg)
    return header + zlib.compress(packed.astype(np.uint8).tobytes(), level)


def stc_decode(blob: bytes) -> np.ndarray:
    """The float32 vector ``stc_encode`` wrote; a clear ValueError on anything malformed."""
    if len(blob) < _STC_HEADER.size:
        raise ValueError("STC payload is shorter than its header")
    magic, n, mu_pos, mu_neg = _STC_HEADER.unpack_from(blob)
    if magic != STC_MAGIC:
        raise ValueError("not an STC payload (bad magic)")
    if not (np.isfinite(mu_pos) and np.isfinite(mu_neg)):
        raise ValueError("STC payload has a non-finite mean")
    expected = -(-n // 4)
    inflater = zlib.decompressobj()
    try:  # max_length bounds the output, so a forged length cannot inflate without limit
        packed = inflater.decompress(blob[_STC_HEADER.size :], expected + 1)
    except zlib.error as exc:
        raise ValueError(f"STC payload is not valid DEFLATE: {exc}") from None
    if len(packed) != expected or not inflater.eof or inflater.unused_data:
        raise ValueError(f"STC payload holds {len(packed)} symbol bytes, expected {expected}")
    b = np.frombuffer(packed, dtype=np.uint8)
    symbols = np.stack([(b >> s) & 3 for s in (0, 2, 4, 6)], axis=1).reshape(-1)
    if (symbols == 3).any() or symbols[n:].any():
        raise ValueError("STC payload has an invalid symbol")
    return np.array([0.0, mu_pos, mu_neg], dtype=np.float32)[symbols[:n]]


# --- "differentially sparse" fused-lasso smoothing ------------------------------------------


@dataclass(frozen=True)
class SmoothingParams:
    """The smoothing's knobs; the defaults are the official code's (``OFFICIAL_SMOOTHING``).

    ``gamma`` ("gama", 10 in ``get_clients_proxy``); chunks of ``chunk`` coordinates (3000),
    then ``tail_chunk`` (1000) while that many remain, then the rest as one chunk
    (``all_long_cluster``); ``chunk=None`` smooths the whole vector at once. ``pin_chunk_end``
    keeps the official square difference matrix, whose last row penalizes gamma |g_last| of
    each chunk as if the chunk ended at a fixed 0; without it the penalty is the pure first
    differences.
    """

    gamma: float = 10.0
    chunk: int | None = 3000
    tail_chunk: int | None = 1000
    pin_chunk_end: bool = True

    def __post_init__(self) -> None:
        if not self.gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}")
        for name in ("chunk", "tail_chunk"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")


OFFICIAL_SMOOTHING = SmoothingParams()


def chunk_bounds(n: int, params: SmoothingParams = OFFICIAL_SMOOTHING) -> list[tuple[int, int]]:
    """[start, stop) of each chunk: full chunks, then full tail chunks, then the remainder."""
    if params.chunk is None:
        return [(0, n)] if n else []
    bounds, start = [], 0
    for size in (params.chunk, params.tail_chunk or params.chunk):
        while n - start >= size:
            bounds.append((start, start + size))
            start += size
    if start < n:
        bounds.append((start, n))
    return bounds


def tv_prox(y: np.ndarray, lam: float, *, pin_end: bool = False) -> np.ndarray:
    r"""Exact argmin_v 1/2 ||v - y||^2 + lam sum_k |v_{k+1} - v_k| (+ lam |v_last| if pinned).

    Johnson's dynamic programme for the 1-D fused lasso (J. Comput. Graph. Stat. 22(2), 2013):
    a forward pass keeps the derivative of the partial objective as a piecewise-linear function
    in a deque of knots, clips it to [-lam, lam] and records where (b_lo, b_hi), then the
    backward pass is v_k = clip(v_{k+1}, b_lo_k, b_hi_k). Every knot is pushed and popped once,
    so the time is O(n), and the result is the minimizer itself, not an iterate. ``pin_end``
    adds the official square difference matrix's last row: the vector is followed by a 0.
    """
    y = np.asarray(y, dtype=np.float64)
    n = y.size
    if n == 0 or lam == 0:
        return y.copy()
    knots: deque[tuple[float, float, float]] = deque()  # (position, slope jump, offset jump)
    lo, hi = np.empty(n), np.empty(n)
    a_left, c_left, a_right, c_right = 1.0, -y[0], 1.0, -y[0]
    clipped = n if pin_end else n - 1
    for k in range(clipped):
        while knots and a_left * knots[0][0] + c_left <= -lam:
            _, da, dc = knots.popleft()
            a_left, c_left = a_left + da, c_left + dc
        if not knots:
            a_right, c_right = a_left, c_left
        while knots and a_right * knots[-1][0] + c_right >= lam:
            _, da, dc = knots.pop()
            a_right, c_right = a_right - da, c_right - dc
        if not knots:
            a_left, c_left = a_right, c_right
        lo[k] = (-lam - c_left) / a_left
        hi[k] = (lam - c_right) / a_right
        knots.appendleft((lo[k], a_left, c_left + lam))
        knots.append((hi[k], -a_right, lam - c_right))
        if k + 1 < n:
            a_left, c_left = 1.0, -lam - y[k + 1]
            a_right, c_right = 1.0, lam - y[k + 1]
    v = np.empty(n)
    if pin_end:
        v[-1] = min(max(0.0, lo[-1]), hi[-1])
    else:  # root of the last derivative
        while knots and a_left * knots[0][0] + c_left <= 0.0:
            _, da, dc = knots.popleft()
            a_left, c_left = a_left + da, c_left + dc
        v[-1] = -c_left / a_left
    for k in range(n - 2, -1, -1):
        v[k] = min(max(v[k + 1], lo[k]), hi[k])
    return v


def smooth_update(g: np.ndarray, params: SmoothingParams = OFFICIAL_SMOOTHING) -> np.ndarray:
    r"""The official "clustered gradient" of update g, computed exactly; float64.

    The official code solves, per chunk, y = argmin gamma ||Lambda (y - w)||_1 +
    1/(2s) ||y - (w - s g)||^2 (Lambda the square first-difference matrix, s = 0.001) by 20
    ADMM iterations from y = 0, and sends clamp((w - y)/s, min g, max g). Substituting
    y = w - s v turns the problem into s [gamma ||Lambda v||_1 + 1/2 ||v - g||^2], so
    (w - y)/s = prox_{gamma ||Lambda .||_1}(g): the weights w and the step s cancel, and the
    exact answer is a 1-D total-variation prox, which ``tv_prox`` solves in O(n). No
    well-kept library ships an exact one (scikit-image's ``denoise_tv_chambolle`` iterates to
    a tolerance; prox-tv's last release is from 2018). The exact prox needs no eigenvector
    cache, and the truncated ADMM's output is not reproduced. The clamp is kept as in the
    reference; it only acts with ``pin_chunk_end``, which can pull a chunk's end past min g.
    """
    a = np.asarray(g, dtype=np.float64)
    if a.ndim != 1 or not np.isfinite(a).all():
        raise ValueError("g must be a finite 1-D vector")
    if a.size == 0:
        return a.copy()
    pieces = [
        tv_prox(a[start:stop], params.gamma, pin_end=params.pin_chunk_end)
        for start, stop in chunk_bounds(a.size, params)
    ]
    return np.clip(np.concatenate(pieces), a.min(), a.max())


# --- lower-bit float payloads ----------------------------------------------------------------

FloatKind = Literal["float32", "float16", "bfloat16"]
_WIDTH = {"float32": 4, "float16": 2, "bfloat16": 2}


def encode_floats(x: np.ndarray, kind: FloatKind) -> bytes:
    """x as little-endian float32, float16, or bfloat16 (the top half of float32, rounded to
    nearest even, as uint16). Refuses values the format cannot hold rather than send inf."""
    a = _float32(x)
    if kind == "float32":
        return a.tobytes()
    if kind == "float16":
        with np.errstate(over="ignore"):
            h = a.astype("<f2")
        if not np.isfinite(h).all():
            raise ValueError("payload exceeds the float16 range (|x| <= 65504)")
        return h.tobytes()
    if kind == "bfloat16":
        bits = a.view("<u4").astype(np.uint64)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        b = rounded.astype("<u2")
        if ((b & 0x7F80) == 0x7F80).any():
            raise ValueError("payload exceeds the bfloat16 range")
        return b.tobytes()
    raise ValueError(f"unknown float kind {kind!r}: use float32, float16 or bfloat16")


def decode_floats(blob: bytes, kind: FloatKind) -> np.ndarray:
    """The float32 vector that ``encode_floats(x, kind)`` wrote."""
    if kind not in _WIDTH:
        raise ValueError(f"unknown float kind {kind!r}: use float32, float16 or bfloat16")
    if len(blob) % _WIDTH[kind]:
        raise ValueError(f"{len(blob)} bytes is not a whole number of {kind} values")
    if kind == "float32":
        out = np.frombuffer(blob, dtype="<f4").astype(np.float32)
    elif kind == "float16":
        out = np.frombuffer(blob, dtype="<f2").astype(np.float32)
    else:
        bits = np.frombuffer(blob, dtype="<u2").astype(np.uint32) << 16
        out = bits.view(np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"{kind} payload holds a non-finite value")
    return out


def round_float16(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """x rounded *stochastically* to float16: to one of its two float16 neighbours, the upper
    with probability proportional to the distance from the lower, so E[result] = x.

    For a model broadcast every round: round-to-nearest would swallow every change smaller
    than half a float16 step (2^-12 relative) round after round; unbiased rounding adds noise
    of at most one step instead, which averages out. Refuses values beyond float16's range.

    >>> x = np.full(10_000, 1 + 2**-12)  # a quarter of the way from 1 to the next float16
    >>> h = round_float16(x, np.random.default_rng(0))
    >>> sorted(set(h.tolist())), bool(abs(h.astype(np.float64).mean() - (1 + 2**-12)) < 2e-5)
    ([1.0, 1.0009765625], True)
    """
    a = np.asarray(x, dtype=np.float64)
    if not np.isfinite(a).all() or (np.abs(a) > 65504).any():
        raise ValueError("payload exceeds the float16 range (|x| <= 65504)")
    near = a.astype(np.float16)
    below = near.astype(np.float64) > a
    with np.errstate(over="ignore"):  # the neighbour of +-65504 is inf: never chosen
        lo = np.where(below, np.nextafter(near, np.float16(-np.inf)), near)
        hi = np.where(below, near, np.nextafter(near, np.float16(np.inf)))
    lo64, hi64 = lo.astype(np.float64), hi.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_up = np.where(np.isfinite(hi64) & (hi64 > lo64), (a - lo64) / (hi64 - lo64), 0.0)
    up = rng.random(a.shape) < p_up
    return np.where(up, hi, lo).astype(np.float16)


@dataclass(frozen=True)
class FloatError:
    """What a lower-bit payload costs and loses against float32."""

    kind: str
    bytes: int
    max_abs_error: float
    relative_l2_error: float  # ||x - decoded|| / ||x|| (0 for a zero vector)


def float_error(x: np.ndarray, kind: FloatKind) -> FloatError:
    """Encode, decode and measure the error against x's float32 values."""
    a = _float32(x)
    blob = encode_floats(a, kind)
    back = decode_floats(blob, kind).astype(np.float64)
    diff = back - a.astype(np.float64)
    norm = float(np.linalg.norm(a.astype(np.float64)))
    return FloatError(
        kind=kind,
        bytes=len(blob),
        max_abs_error=float(np.abs(diff).max()) if a.size else 0.0,
        relative_l2_error=float(np.linalg.norm(diff) / norm) if norm > 0 else 0.0,
    )
