"""Secure aggregation at scale: cost growth in sites n and parameters d, memory, bytes (not a test).

Run from the repository root::

    .venv/bin/python benchmarks/scale.py              # full grid (make bench-scale), ~10 min
    .venv/bin/python benchmarks/scale.py --quick      # n <= 30, d <= 1e5, under a minute
    .venv/bin/python benchmarks/scale.py --chunk-sweep  # streaming chunk size vs throughput
    .venv/bin/python benchmarks/scale.py --probe-memory # one site / finalize, n=10, d=1e6
    .venv/bin/python benchmarks/scale.py --probe-cli-site  # real `fedrema submit`, n=50, d=1e7
    .venv/bin/python benchmarks/scale.py --replot       # plots again from results.json
    git archive 44660a9 crypto | tar -x -C /tmp/before  # ... and the code before streaming:
    SCALE_CRYPTO_ROOT=/tmp/before .venv/bin/python benchmarks/scale.py --probe-memory

For n in {4, 10, 30, 50, 100} simulated sites and d in {1e4, 1e6, 1e7} parameters (model
parameters; the protocol vector has d + 1 words, the last is the weight), each with no
dropout and with 10% of the sites (at least one) dropping after ShareKeys (the costliest
stage to drop at: the coordinator must rebuild their pair masks), one round of the real
``crypto.secagg`` code runs in a fresh child process:

* every site runs every step (key advert, ShareKeys, encode + mask + serialize, unmask
  answer); per-site CPU and wall time are means over the sites that ran the step;
* masked inputs go to files, as in the workspace, and the coordinator reads them back one
  at a time (``fix_survivors`` and ``finalize`` stream them);
* site time is split into encoding (float32 update to fixed point) and masking (the
  client's Round 2 step: decrypt shares, derive keys, stream the masks, serialize);
* peak memory comes from ``tracemalloc`` (numpy reports its buffers to it) in a separate,
  untimed pass of the same step (every step is a pure function, so it can run twice). The
  site figure is one representative site (party 1), from before its float32 update exists
  until its message bytes exist (the peak is the encoded input, the masked vector and the
  wire bytes; the update is freed once encoded, a site that keeps it adds 4 bytes per
  parameter). The
  coordinator figure is the larger of U3 (``fix_survivors``) and unmasking (``finalize``
  and decoding). The whole child process's peak resident set (``VmHWM``: interpreter, all
  n simulated sites' states, the check sum) is reported too, as an upper bound;
* bytes moved: every message's wire size, per site (up and down) and at the coordinator;
* the recovered sum must equal the sum of the survivors' encoded inputs exactly, or the run
  stops with an error.

Growth exponents are least-squares slopes in log-log space over the three largest values
of n (or d) of each series, printed next to the protocol's theory (fixed per-call costs
flatten the small end). Also in the same run: the mask PRG and the streamed masking
loop as a fraction of ``openssl speed -evp aes-256-ctr``. Timings on a shared 2-core
machine are noisy; each configuration runs once (the largest take minutes), so read the
exponents, not the third digit. Outputs: ``benchmarks/results/scale/results.json`` and
``summary.txt``, plots in ``docs/img/scale.png``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# SCALE_CRYPTO_ROOT: take crypto/ from another tree (e.g. an older commit) for --probe-memory.
sys.path.insert(0, str(ROOT))
sys.path.insert(0, os.environ.get("SCALE_CRYPTO_ROOT", str(ROOT)))
importlib.import_module("crypto.secagg")  # before benchmarks/secagg.py puts the checkout first
sys.path.insert(1, str(ROOT / "benchmarks"))

import secagg as secagg_bench  # noqa: E402  (benchmarks/secagg.py: openssl, PRG rate, t)

from crypto.hazmat import prg  # noqa: E402
from crypto.secagg import (  # noqa: E402
    MaskedInput,
    RoundContext,
    SecAggParams,
    _derive,
    decode_aggregate,
    encode_update,
    finalize,
    fix_key_roster,
    fix_masking_roster,
    fix_survivors,
    route_ciphertexts,
    start_round,
)

OUT = ROOT / "benchmarks" / "results" / "scale"
IMG = ROOT / "docs" / "img"
GRID_N = (4, 10, 30, 50, 100)
GRID_D = (10_000, 1_000_000, 10_000_000)
QUICK_N = (4, 10, 30)
QUICK_D = (10_000, 100_000)
GIB = 1 << 30
MIB = 1 << 20


# --- memory and time ------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


class PeakRSS:
    """The process's peak resident memory so far (Linux ``VmHWM``)."""

    @staticmethod
    def absolute_bytes() -> int:
        return _status_kib("VmHWM") * 1024


def traced_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated by ``fn()`` beyond what was live before (tracemalloc sees numpy)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def encode(params: SecAggParams, values: np.ndarray, u: int) -> np.ndarray:
    """A site's fixed-point encoding of its update (rounding seeded per site)."""
    return encode_update(params, values, weight=1.0, rng=np.random.default_rng(u))


class Clock:
    """CPU and wall seconds of the calls made through it, summed per party."""

    def __init__(self) -> None:
        self.cpu: dict[Any, float] = {}
        self.wall: dict[Any, float] = {}

    def run(self, who: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        c, w = time.process_time(), time.perf_counter()
        result = fn(*args, **kwargs)
        self.cpu[who] = self.cpu.get(who, 0.0) + time.process_time() - c
        self.wall[who] = self.wall.get(who, 0.0) + time.perf_counter() - w
        return result


def _mean(values: Any) -> float:
    values = list(values)
    return sum(values) / len(values)


# --- one configuration (child process) ------------------------------------------------------


def dropped_parties(n: int, dropout: bool) -> set[int]:
    """10% of the sites (at least one), spread over the party range; party 1 always stays."""
    if not dropout:
        return set()
    k = max(1, round(0.1 * n))
    return {n - i * (n // k) for i in range(k)}


def one_config(n: int, d: int, dropout: bool, workdir: Path) -> dict[str, Any]:
    """Run one round of n sites with d parameters; every figure of the result table."""
    params = SecAggParams(
        threshold=secagg_bench.default_threshold(n),
        modulus_bits=32,
        dim=d + 1,
        frac_bits=16,
        clip=1.0,
        max_weight=1.0,
    )
    ctx = RoundContext("scale", 1, bytes(32), params, tuple(range(1, n + 1)))
    drop = dropped_parties(n, dropout)
    site = {step: Clock() for step in ("advert", "share", "encode", "mask", "answer")}
    coord = Clock()
    up = dict.fromkeys(ctx.parties, 0)
    down = dict.fromkeys(ctx.parties, 0)

    started = {u: site["advert"].run(u, start_round, ctx, u) for u in ctx.parties}
    adverts = [a for _, a in started.values()]
    for a in adverts:
        up[a.party] += len(a.to_bytes())
    roster = coord.run("U1", fix_key_roster, ctx, adverts)
    roster_bytes = len(roster.to_bytes())
    shared = {}
    for u, (state, _) in started.items():
        down[u] += roster_bytes
        shared[u] = site["share"].run(u, state.handle, roster)
        up[u] += len(shared[u][1].to_bytes())
    share_msgs = [m for _, m in shared.values()]
    masking = coord.run("U2", fix_masking_roster, ctx, roster, share_msgs)
    inboxes = {
        u: coord.run("route", route_ciphertexts, masking, share_msgs, u) for u in ctx.parties
    }
    masking_bytes = len(masking.to_bytes())

    expected = np.zeros(params.dim, dtype=params.dtype)
    paths: dict[int, Path] = {}
    after_mask = {}
    site_peak = 0

    def update(u: int) -> np.ndarray:
        values = np.random.default_rng(u).standard_normal(d, dtype=np.float32)
        values *= np.float32(0.05)
        return values

    def mask(state: Any, x: np.ndarray, u: int) -> tuple[Any, bytes]:
        new_state, msg = state.handle(masking, inbox=inboxes[u], x=x)
        return new_state, msg.to_bytes()

    for u, (state, _) in shared.items():
        down[u] += masking_bytes + sum(len(c) for c in inboxes[u].values())
        if u in drop:
            continue
        if u == 1:  # untimed pass for memory: the update, its encoding, masking, wire bytes
            site_peak = traced_peak(lambda s=state: mask(s, encode(params, update(1), 1), 1))
        values = update(u)
        x = site["encode"].run(u, encode, params, values, u)
        after_mask[u], blob = site["mask"].run(u, mask, state, x, u)
        np.add(expected, x, out=expected)
        up[u] += len(blob)
        paths[u] = workdir / f"masked-{u}.bin"
        paths[u].write_bytes(blob)
        del x, blob, values

    def from_files(parties: Any) -> Iterator[MaskedInput]:
        return (MaskedInput.from_bytes(paths[u].read_bytes()) for u in parties)

    request = coord.run("U3", fix_survivors, ctx, masking, from_files(sorted(paths)))
    request_bytes = len(request.to_bytes())
    answers = []
    for u in request.survivors:
        down[u] += request_bytes
        _, answer = site["answer"].run(u, after_mask[u].handle, request)
        up[u] += len(answer.to_bytes())
        answers.append(answer)

    def unmask() -> Any:
        inputs = from_files(request.survivors)
        total = finalize(ctx, roster, masking, request, inputs, answers)
        return total, decode_aggregate(params, total)

    total, _ = coord.run("finalize", unmask)
    # Untimed pass for memory (every coordinator function is pure): U3, then unmasking.
    coord_peak = max(
        traced_peak(lambda: fix_survivors(ctx, masking, from_files(sorted(paths)))),
        traced_peak(unmask),
    )
    process_peak = PeakRSS.absolute_bytes()
    for p in paths.values():
        p.unlink()
    exact = bool(np.array_equal(total, expected))
    if not exact:
        raise SystemExit(f"wrong sum for n={n} d={d} dropout={dropout}")
    survivors = [u for u in ctx.parties if u not in drop]
    steps = {
        step: {"cpu_s": _mean(c.cpu.values()), "wall_s": _mean(c.wall.values())}
        for step, c in site.items()
    }
    return {
        "n": n,
        "d": d,
        "t": params.threshold,
        "dropped": len(drop),
        "exact_sum": exact,
        "site_steps": steps,
        "site_cpu_s": sum(s["cpu_s"] for s in steps.values()),
        "site_wall_s": sum(s["wall_s"] for s in steps.values()),
        "site_peak_bytes": site_peak,
        "coordinator_cpu_s": sum(coord.cpu.values()),
        "coordinator_wall_s": sum(coord.wall.values()),
        "coordinator_finalize_cpu_s": coord.cpu["finalize"],
        "coordinator_finalize_wall_s": coord.wall["finalize"],
        "coordinator_steps_cpu_s": coord.cpu,
        "coordinator_peak_bytes": coord_peak,
        "process_peak_rss_bytes": process_peak,
        "bytes_up_per_site": _mean(up[u] for u in survivors),
        "bytes_down_per_site": _mean(down[u] for u in survivors),
        "bytes_per_round": sum(up.values()) + sum(down.values()),
    }


# --- throughput next to openssl -------------------------------------------------------------


def streamed_rate(masks: int, d: int, repeats: int, chunk_bytes: int = prg.CHUNK_BYTES) -> float:
    """Mask bytes per second of the protocol's streamed loop (``apply_masks``), best of runs."""
    acc = np.zeros(d, dtype=np.uint32)
    keys = [(os.urandom(32), 1 if i % 2 else -1) for i in range(masks)]
    best = math.inf
    for _ in range(repeats + 1):
        start = time.perf_counter()
        _derive.apply_masks(acc, keys, 32, chunk_bytes=chunk_bytes)
        best = min(best, time.perf_counter() - start)
    return masks * d * 4 / best


def whole_mask_rate(masks: int, d: int, repeats: int) -> float:
    """The same work done the pre-streaming way: each whole mask into a buffer, then added."""
    acc, buf = np.zeros(d, dtype=np.uint32), np.empty(d, dtype=np.uint32)
    keys = [os.urandom(32) for _ in range(masks)]
    best = math.inf
    for _ in range(repeats + 1):
        start = time.perf_counter()
        for key in keys:
            np.add(acc, prg.mask(key, d, 32, out=buf), out=acc)
        best = min(best, time.perf_counter() - start)
    return masks * d * 4 / best


def throughput(quick: bool) -> dict[str, Any]:
    ssl = secagg_bench.openssl_aes_ctr(1 if quick else 3, quick)
    rates = secagg_bench.prg_throughput(quick)
    streamed = streamed_rate(50, 1_000_000, 2 if quick else 5)
    whole = whole_mask_rate(50, 1_000_000, 2 if quick else 5)
    out: dict[str, Any] = {
        "openssl_bytes_per_s": ssl["bytes_per_s"] if ssl else None,
        "openssl_command": ssl["command"] if ssl else None,
        "prg_mask_uint32_bytes_per_s": rates["uint32"],
        "prg_mask_uint64_bytes_per_s": rates["uint64"],
        "streamed_50_masks_1e6_bytes_per_s": streamed,
        "whole_masks_50_masks_1e6_bytes_per_s": whole,
    }
    if ssl:
        for k in list(out):
            if k.endswith("bytes_per_s") and k != "openssl_bytes_per_s":
                out[k.replace("bytes_per_s", "fraction_of_openssl")] = out[k] / ssl["bytes_per_s"]
    return out


def chunk_sweep() -> None:
    print("apply_masks: 50 masks over 10^6 uint32 words, best of 5 (GB/s of mask words)")
    for kib in (16, 64, 128, 256, 512, 1024, 4096):
        rate = streamed_rate(50, 1_000_000, 5, chunk_bytes=kib * 1024)
        print(f"  chunk {kib:>5} KiB: {rate / 1e9:5.2f} GB/s")
    print(f"  whole masks one after the other: {whole_mask_rate(50, 1_000_000, 5) / 1e9:5.2f} GB/s")


# --- the grid, fits, plots ------------------------------------------------------------------


def run_child(n: int, d: int, dropout: bool, workdir: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", str(n), str(d), str(int(dropout))]
    cmd += ["--workdir", str(workdir)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"n={n} d={d} dropout={dropout} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares exponent b of y = a * x^b (None with fewer than two points)."""
    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len({x for x, _ in pairs}) < 2:
        return None
    lx, ly = np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs])
    return float(np.polyfit(lx, ly, 1)[0])


FITS: list[tuple[str, str, Callable[[dict[str, Any]], float], str, str]] = [
    # (quantity, grows with, value, theory exponent, why)
    ("site masking time", "n", lambda r: r["site_steps"]["mask"]["cpu_s"], "1",
     "O(n*d): one PRG expansion per peer"),
    ("site masking time", "d", lambda r: r["site_steps"]["mask"]["cpu_s"], "1",
     "O(n*d)"),
    ("site encoding time", "d", lambda r: r["site_steps"]["encode"]["cpu_s"], "1", "O(d)"),
    ("site ShareKeys time", "n", lambda r: r["site_steps"]["share"]["cpu_s"], "2",
     "O(n^2): Shamir shares of 2 secrets for n peers at degree t-1 ~ 2n/3"),
    ("coordinator finalize time", "n", lambda r: r["coordinator_finalize_cpu_s"], "1 | 2",
     "O(n*d) without dropouts; O(n_dropped*n*d) = O(n^2*d) at 10% dropouts"),
    ("coordinator finalize time", "d", lambda r: r["coordinator_finalize_cpu_s"], "1",
     "O(d) per mask"),
    ("bytes per round", "n", lambda r: r["bytes_per_round"], "1 .. 2",
     "O(n*d + n^2): vectors plus n^2 share ciphertexts"),
    ("site peak memory", "d", lambda r: r["site_peak_bytes"], "1", "O(d) + O(chunk)"),
    ("coordinator peak memory", "d", lambda r: r["coordinator_peak_bytes"], "1",
     "O(d) + O(chunk): sum plus one input"),
]  # fmt: skip


def fits(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    ns, ds = sorted({r["n"] for r in rows}), sorted({r["d"] for r in rows})
    for name, axis, value, theory, why in FITS:
        for dropout in (False, True):
            sel = [r for r in rows if bool(r["dropped"]) == dropout]
            fixed_values = ds if axis == "n" else ns
            for fixed in fixed_values:
                key = "d" if axis == "n" else "n"
                pts = sorted((r for r in sel if r[key] == fixed), key=lambda r: r[axis])
                pts = pts[-3:]  # the three largest: fixed per-call costs flatten the small end
                b = slope([r[axis] for r in pts], [value(r) for r in pts])
                if b is not None:
                    out.append({"quantity": name, "axis": axis, key: fixed, "dropouts": dropout,
                                "exponent": b, "theory": theory, "why": why})  # fmt: skip
    return out


def plots(rows: list[dict[str, Any]], suffix: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = OUT if suffix else IMG  # a --quick plot stays beside its (uncommitted) results
    folder.mkdir(parents=True, exist_ok=True)
    panels = [  # row 1: the site; row 2: the coordinator (and the bytes, the memory)
        ("per-site CPU s (whole round)", lambda r: r["site_cpu_s"], "n"),
        ("per-site wall s (whole round)", lambda r: r["site_wall_s"], "n"),
        ("bytes moved per round", lambda r: r["bytes_per_round"], "n"),
        ("coordinator CPU s (all barriers)", lambda r: r["coordinator_cpu_s"], "n"),
        ("coordinator wall s (all barriers)", lambda r: r["coordinator_wall_s"], "n"),
        ("peak memory (tracemalloc), MiB", None, "d"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    for ax, (title, value, _) in zip(axes.flat, panels, strict=True):
        if value is None:
            for who, key, marker in (("site", "site_peak_bytes", "o"),
                                     ("coordinator", "coordinator_peak_bytes", "s")):  # fmt: skip
                for n in sorted({r["n"] for r in rows}):
                    pts = sorted((r for r in rows if r["n"] == n and r["dropped"]),
                                 key=lambda r: r["d"])  # fmt: skip
                    ax.plot([r["d"] for r in pts], [r[key] / MIB for r in pts], marker=marker,
                            label=f"{who} n={n}", alpha=0.8)  # fmt: skip
            ax.set_xlabel("parameters d")
        else:
            for d in sorted({r["d"] for r in rows}):
                for dropout, style in ((False, "-"), (True, "--")):
                    pts = sorted((r for r in rows if r["d"] == d and bool(r["dropped"]) == dropout),
                                 key=lambda r: r["n"])  # fmt: skip
                    label = f"d={d:.0e}" + (" 10% drop" if dropout else "")
                    ax.plot([r["n"] for r in pts], [value(r) for r in pts], style, marker="o",
                            label=label)  # fmt: skip
            ax.set_xlabel("sites n")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle("crypto.secagg at scale (one run, 2-core shared machine)")
    fig.tight_layout()
    path = folder / f"scale{suffix}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| n | d | dropped | site CPU s | site wall s | encode s | mask s | site peak MiB | "
            "coord CPU s | coord wall s | finalize s | coord peak MiB | up/site MB | "
            "bytes/round MB | exact |")  # fmt: skip
    lines = [head, "|" + "---|" * 15]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['d']:.0e} | {r['dropped']} | {r['site_cpu_s']:.3f} | "
            f"{r['site_wall_s']:.3f} | {r['site_steps']['encode']['cpu_s']:.3f} | "
            f"{r['site_steps']['mask']['cpu_s']:.3f} | "
            f"{r['site_peak_bytes'] / MIB:.1f} | {r['coordinator_cpu_s']:.3f} | "
            f"{r['coordinator_wall_s']:.3f} | {r['coordinator_finalize_cpu_s']:.3f} | "
            f"{r['coordinator_peak_bytes'] / MIB:.1f} | {r['bytes_up_per_site'] / 1e6:.3f} | "
            f"{r['bytes_per_round'] / 1e6:.1f} | {'yes' if r['exact_sum'] else 'NO'} |"
        )
    return "\n".join(lines)


def acceptance(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    bounds = (("site", 50, GIB, "site_peak_bytes"),
              ("coordinator", 100, 4 * GIB, "coordinator_peak_bytes"))  # fmt: skip
    for who, n, limit, key in bounds:
        for r in rows:
            if r["n"] == n and r["d"] == 10_000_000:
                ok = r[key] < limit and r["process_peak_rss_bytes"] < limit
                out.append(
                    f"{who} peak, n={n}, d=1e7, {r['dropped']} dropped: {r[key] / MIB:.0f} MiB "
                    f"(whole simulation process {r['process_peak_rss_bytes'] / MIB:.0f} MiB; "
                    f"bound {limit / GIB:.0f} GiB): {'PASS' if ok else 'FAIL'}"
                )
    exact = all(r["exact_sum"] for r in rows)
    verdict = "PASS" if exact else "FAIL"
    out.append(f"exact sum recovered in all {len(rows)} configurations: {verdict}")
    return out


def probe_memory(n: int = 10, d: int = 1_000_000) -> None:
    """Peak allocation of one site's round-2 step and of finalize, d = 1e6, n = 10.

    Runs against whichever crypto/ is imported, so ``SCALE_CRYPTO_ROOT=<older tree>`` gives
    the same figures for code from before streaming.
    """
    import crypto

    params = SecAggParams(threshold=secagg_bench.default_threshold(n), modulus_bits=32,
                          dim=d + 1, frac_bits=16, clip=1.0, max_weight=1.0)  # fmt: skip
    ctx = RoundContext("probe", 1, bytes(32), params, tuple(range(1, n + 1)))
    started = {u: start_round(ctx, u) for u in ctx.parties}
    roster = fix_key_roster(ctx, [a for _, a in started.values()])
    shared = {u: s.handle(roster) for u, (s, _) in started.items()}
    msgs = [m for _, m in shared.values()]
    masking = fix_masking_roster(ctx, roster, msgs)
    after, blobs = {}, {}

    def site(u: int) -> None:
        values = np.random.default_rng(u).standard_normal(d, dtype=np.float32)
        x = encode(params, values, u)
        inbox = route_ciphertexts(masking, msgs, u)
        after[u], msg = shared[u][0].handle(masking, inbox=inbox, x=x)
        blobs[u] = msg.to_bytes()

    site_peak = traced_peak(lambda: site(1))
    for u in ctx.parties[1:]:
        site(u)
    request = fix_survivors(ctx, masking, [MaskedInput.from_bytes(b) for b in blobs.values()])
    answers = [after[u].handle(request)[1] for u in request.survivors]
    loaded = (MaskedInput.from_bytes(memoryview(b).tobytes()) for b in blobs.values())
    coord_peak = traced_peak(lambda: finalize(ctx, roster, masking, request, loaded, answers))
    print(f"crypto from {Path(crypto.__file__).parent}: n={n}, d={d:.0e}")
    print(f"  site: float32 update, encode, mask, serialize: peak {site_peak / MIB:.1f} MiB")
    print(f"  coordinator: finalize, inputs loaded one at a time: {coord_peak / MIB:.1f} MiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n <= 30, d <= 1e5")
    parser.add_argument("--chunk-sweep", action="store_true", help="chunk size vs throughput")
    parser.add_argument("--probe-memory", action="store_true",
                        help="peak memory of one site and of finalize, n=10, d=1e6")  # fmt: skip
    parser.add_argument(
        "--probe-cli-site",
        action="store_true",
        help="peak RSS of the real `fedrema submit` (benchmarks/scale_cli.py)",
    )
    parser.add_argument("--sites", type=int, default=50, help="with --probe-cli-site")
    parser.add_argument(
        "--hidden",
        default="3160,3160",
        help="with --probe-cli-site: MLP extractor sizes (3160,3160: d=1e7)",
    )
    parser.add_argument(
        "--coordinator",
        action="store_true",
        help="with --probe-cli-site: every site submits; measure `aggregate`",
    )
    parser.add_argument("--one", nargs=3, type=int, metavar=("N", "D", "DROPOUT"),
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--replot", action="store_true", help="plots from the saved results")
    args = parser.parse_args()
    if args.one:
        n, d, dropout = args.one
        print(json.dumps(one_config(n, d, bool(dropout), args.workdir)))
        return 0
    if args.chunk_sweep:
        chunk_sweep()
        return 0
    if args.probe_memory:
        probe_memory()
        return 0
    if args.probe_cli_site:
        import scale_cli  # the CLI and torch only for this mode

        return scale_cli.main(args.sites, args.hidden, args.coordinator)

    if args.replot:
        saved = json.loads((OUT / f"results{'_quick' if args.quick else ''}.json").read_text())
        print(plots(saved["rows"], "_quick" if args.quick else ""))
        return 0
    t0 = time.perf_counter()
    grid_n, grid_d = (QUICK_N, QUICK_D) if args.quick else (GRID_N, GRID_D)
    rate = throughput(args.quick)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedrema-scale-") as tmp:
        for d in grid_d:
            for n in grid_n:
                for dropout in (False, True):
                    start = time.perf_counter()
                    rows.append(run_child(n, d, dropout, Path(tmp)))
                    print(f"  n={n:>3} d={d:.0e} dropout={int(dropout)}: "
                          f"{time.perf_counter() - start:6.1f} s", file=sys.stderr)  # fmt: skip
    fitted = fits(rows)
    suffix = "_quick" if args.quick else ""
    images = plots(rows, suffix)
    checks = acceptance(rows)
    report = {"grid": {"n": grid_n, "d": grid_d}, "throughput": rate, "rows": rows,
              "fits": fitted, "acceptance": checks, "elapsed_s": time.perf_counter() - t0,
              "cpus": os.cpu_count()}  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"results{suffix}.json").write_text(json.dumps(report, indent=1))

    lines = ["Mask throughput (same run), GB/s of mask words:"]
    ssl = rate["openssl_bytes_per_s"]
    lines.append(f"  openssl speed -evp aes-256-ctr: {ssl / 1e9:.2f}" if ssl else "  openssl: n/a")
    labels = (("prg_mask_uint32", "prg.mask uint32 (2^20 words)"),
              ("prg_mask_uint64", "prg.mask uint64 (2^20 words)"),
              ("streamed_50_masks_1e6", "streamed apply_masks, 50 masks x 1e6"),
              ("whole_masks_50_masks_1e6", "whole masks one by one, 50 x 1e6"))  # fmt: skip
    for key, label in labels:
        frac = rate.get(f"{key}_fraction_of_openssl")
        frac_text = f"  = {frac:.0%} of openssl" if frac else ""
        lines.append(f"  {label}: {rate[f'{key}_bytes_per_s'] / 1e9:.2f}{frac_text}")
    lines += ["", "One round per configuration (site: mean over sites; site peak: party 1)",
              table(rows), "", "Growth exponents (log-log fit, 3 largest) vs theory:"]  # fmt: skip
    for f in fitted:
        at = f"d={f['d']:.0e}" if "d" in f and f["axis"] == "n" else f"n={f.get('n')}"
        lines.append(f"  {f['quantity']:<26} vs {f['axis']} at {at:<8} "
                     f"{'10% drop' if f['dropouts'] else 'no drop ':<8}: {f['exponent']:5.2f}"
                     f"  (theory {f['theory']}: {f['why']})")  # fmt: skip
    lines += ["", "Acceptance:", *[f"  {c}" for c in checks],
              "", f"plots: {', '.join(str(p.relative_to(ROOT)) for p in images)}",
              f"elapsed {report['elapsed_s']:.0f} s"]  # fmt: skip
    text = "\n".join(lines)
    (OUT / f"summary{suffix}.txt").write_text(text + "\n")
    print(text)
    return 0 if all(c.endswith("PASS") for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
