"""Secure-aggregation speed: mask PRG vs the machine's AES-CTR, and a round vs plaintext.

Run from the repository root::

    .venv/bin/python benchmarks/secagg.py            # full run, a minute or two
    .venv/bin/python benchmarks/secagg.py --quick    # under 30 s
    .venv/bin/python benchmarks/secagg.py --json     # machine-readable

What is measured, all in one run on this machine:

* mask PRG throughput (``crypto.hazmat.prg.mask``, GB/s of mask words) next to
  ``openssl speed -evp aes-256-ctr`` at its largest block size, and their ratio
  (target: at least 40%);
* for n sites and d coordinates, with no dropout and with one site dropping after
  ShareKeys: the protocol compute of one site per round (all four of its steps, mean over
  sites) and of the coordinator (all barriers, routing and unmasking), each divided by a
  plaintext round (the coordinator summing the same n vectors). Excluded on both sides:
  encoding, message serialization and file I/O.
* end to end, as deployed: ``fedrema simulate heart-disease`` (4 hospitals, every party's
  real code, signed files on disk, local training included, no DP), seconds per round with
  secure aggregation against the same federation with plaintext updates.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crypto.hazmat import prg
from crypto.secagg import (
    RoundContext,
    SecAggParams,
    finalize,
    fix_key_roster,
    fix_masking_roster,
    fix_survivors,
    route_ciphertexts,
    start_round,
)

GB = 1e9


def openssl_aes_ctr(seconds: int, quick: bool) -> dict[str, Any] | None:
    """Bytes/s of ``openssl speed -evp aes-256-ctr`` at the largest block size it ran."""
    cmd = ["openssl", "speed", "-mr", "-evp", "aes-256-ctr", "-seconds", str(seconds)]
    if quick:
        cmd += ["-bytes", "16384"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    sizes: list[int] = []
    rates: list[float] = []
    for line in (out.stdout + out.stderr).splitlines():
        if line.startswith("+H:"):
            sizes = [int(s) for s in line[3:].split(":") if s]
        elif line.startswith("+F:"):
            rates = [float(v) for v in line.split(":")[3:] if v]
    if not rates:
        return None
    block = sizes[len(rates) - 1] if len(sizes) >= len(rates) else None
    return {"bytes_per_s": rates[-1], "block_bytes": block, "command": " ".join(cmd)}


def best_rate(fn: Callable[[], object], nbytes: int, repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return nbytes / statistics.median(times)


def prg_throughput(quick: bool) -> dict[str, float]:
    """Mask words per second at 2^20 words into a reused buffer, as the protocol calls it."""
    key = os.urandom(32)
    words = 1 << 20
    out = {}
    for bits in (32, 64):
        buf = np.empty(words, dtype=prg.uint_dtype(bits))
        rate = best_rate(
            functools.partial(prg.mask, key, words, bits, out=buf),
            words * bits // 8,
            5 if quick else 15,
        )
        out[f"uint{bits}"] = rate
    return out


def default_threshold(n: int) -> int:
    """t = floor(2n/3) + 1, the research notes' default."""
    return max(2, 2 * n // 3 + 1)


def one_round(n: int, d: int, modulus_bits: int, dropout: bool) -> dict[str, float]:
    params = SecAggParams(
        threshold=default_threshold(n),
        modulus_bits=modulus_bits,
        dim=d,
        frac_bits=16,
        clip=1.0,
        max_weight=1.0,
    )
    ctx = RoundContext("bench", 1, bytes(32), params, tuple(range(1, n + 1)))
    gen = np.random.default_rng(0)
    inputs = {u: gen.integers(0, 2**modulus_bits, size=d, dtype=params.dtype) for u in ctx.parties}
    dropped = {n} if dropout else set()
    site_time = dict.fromkeys(ctx.parties, 0.0)
    coord_time = 0.0

    def site(u: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        site_time[u] += time.perf_counter() - start
        return result

    def coordinator(fn: Callable[..., Any], *args: Any) -> Any:
        nonlocal coord_time
        start = time.perf_counter()
        result = fn(*args)
        coord_time += time.perf_counter() - start
        return result

    def route_all(masking: Any, share_msgs: list[Any]) -> dict[int, dict[int, bytes]]:
        return {u: route_ciphertexts(masking, share_msgs, u) for u in ctx.parties}

    started = {u: site(u, start_round, ctx, u) for u in ctx.parties}
    adverts = [advert for _, advert in started.values()]
    roster = coordinator(fix_key_roster, ctx, adverts)
    shared = {u: site(u, state.handle, roster) for u, (state, _) in started.items()}
    share_msgs = [msg for _, msg in shared.values()]
    masking = coordinator(fix_masking_roster, ctx, roster, share_msgs)
    inboxes = coordinator(route_all, masking, share_msgs)
    masked = {
        u: site(u, state.handle, masking, inbox=inboxes[u], x=inputs[u])
        for u, (state, _) in shared.items()
        if u not in dropped
    }
    masked_msgs = [msg for _, msg in masked.values()]
    request = coordinator(fix_survivors, ctx, masking, masked_msgs)
    answers = [site(u, state.handle, request)[1] for u, (state, _) in masked.items()]
    total = coordinator(finalize, ctx, roster, masking, request, masked_msgs, answers)

    survivors = [u for u in ctx.parties if u not in dropped]
    start = time.perf_counter()
    plain = np.zeros(d, dtype=params.dtype)
    for u in survivors:
        np.add(plain, inputs[u], out=plain)
    plain_time = time.perf_counter() - start
    if not np.array_equal(total, plain):
        raise SystemExit(f"wrong sum for n={n} d={d} dropout={dropout}")
    site_mean = statistics.mean(site_time[u] for u in survivors)
    return {"site_s": site_mean, "coordinator_s": coord_time, "plaintext_s": plain_time}


def median_round(n: int, d: int, modulus_bits: int, dropout: bool, repeats: int) -> dict[str, Any]:
    one_round(n, d, modulus_bits, dropout)  # warm-up: allocator, caches, imports
    runs = [one_round(n, d, modulus_bits, dropout) for _ in range(repeats)]
    row: dict[str, Any] = {"n": n, "d": d, "t": default_threshold(n), "dropouts": int(dropout)}
    for key in ("site_s", "coordinator_s", "plaintext_s"):
        row[key] = statistics.median(r[key] for r in runs)
    row["site_ratio"] = row["site_s"] / row["plaintext_s"]
    row["coordinator_ratio"] = row["coordinator_s"] / row["plaintext_s"]
    return row


def end_to_end(rounds: int, repeats: int) -> list[dict[str, Any]]:
    """Seconds per round of a whole federation, secure aggregation on and off, interleaved."""
    from fedrema_cli import simulate as sim

    sim.run(sim.SimulationSpec(dataset="heart-disease", method="fedrema", rounds=1))  # warm-up
    out = []
    for method in ("fedavg", "fedrema"):
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(repeats):
            for secure in (True, False):
                spec = sim.SimulationSpec(
                    dataset="heart-disease",
                    method=method,
                    rounds=rounds,
                    seed=1,
                    secure_aggregation=secure,
                    epsilon=None,
                )
                times[secure].append(sim.run(spec)["seconds"] / rounds)
        secure_s, plain_s = statistics.median(times[True]), statistics.median(times[False])
        out.append(
            {
                "method": method,
                "rounds": rounds,
                "secure_s_per_round": secure_s,
                "plain_s_per_round": plain_s,
                "ratio": secure_s / plain_s,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under 30 s")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--modulus-bits", type=int, choices=(32, 64), default=32)
    args = parser.parse_args()

    t0 = time.perf_counter()
    ssl = openssl_aes_ctr(1 if args.quick else 2, args.quick)
    masks = prg_throughput(args.quick)
    sizes = (
        [(4, 10_000), (10, 10_000), (4, 100_000), (10, 100_000)]
        if args.quick
        else [(n, d) for d in (10_000, 1_000_000) for n in (4, 10, 30)]
    )
    repeats = 3 if args.quick else 5
    rows = [
        median_round(n, d, args.modulus_bits, dropout, repeats)
        for n, d in sizes
        for dropout in (False, True)
    ]
    e2e = end_to_end(rounds=5 if args.quick else 10, repeats=1 if args.quick else 3)
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
        },
        "modulus_bits": args.modulus_bits,
        "openssl_aes_256_ctr_bytes_per_s": ssl["bytes_per_s"] if ssl else None,
        "openssl_command": ssl["command"] if ssl else None,
        "openssl_block_bytes": ssl["block_bytes"] if ssl else None,
        "mask_prg_bytes_per_s": masks,
        "mask_prg_ratio_to_openssl": (
            {k: v / ssl["bytes_per_s"] for k, v in masks.items()} if ssl else None
        ),
        "rounds": rows,
        "end_to_end": e2e,
        "elapsed_s": time.perf_counter() - t0,
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print("Mask PRG (AES-256-CTR keystream as uniform words)")
    if ssl:
        print(
            f"  openssl speed -evp aes-256-ctr ({ssl['block_bytes']}-byte blocks): "
            f"{ssl['bytes_per_s'] / GB:6.2f} GB/s"
        )
    else:
        print("  openssl speed: not available")
    for k, v in masks.items():
        ratio = f"  ratio {v / ssl['bytes_per_s']:5.1%} (target >= 40%)" if ssl else ""
        print(f"  crypto.hazmat.prg.mask {k}: {v / GB:6.2f} GB/s{ratio}")
    print()
    print(
        f"One SecAgg round, mod 2^{args.modulus_bits}, t = floor(2n/3)+1; "
        "times are medians of protocol compute"
    )
    header = (
        f"{'n':>3} {'d':>9} {'drop':>4} {'plain ms':>9} {'site ms':>9} {'site x':>7} "
        f"{'coord ms':>9} {'coord x':>8}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['n']:>3} {r['d']:>9} {r['dropouts']:>4} {r['plaintext_s'] * 1e3:9.2f} "
            f"{r['site_s'] * 1e3:9.2f} {r['site_ratio']:7.1f} {r['coordinator_s'] * 1e3:9.2f} "
            f"{r['coordinator_ratio']:8.1f}"
        )
    print("  (x = ratio to the plaintext round: the coordinator summing the same vectors)")
    print()
    print(
        "End to end: fedrema simulate heart-disease (4 hospitals, real files, training "
        "included, no DP)"
    )
    for e in e2e:
        print(
            f"  {e['method']:8s} secure {e['secure_s_per_round'] * 1e3:7.1f} ms/round   "
            f"plaintext {e['plain_s_per_round'] * 1e3:7.1f} ms/round   ratio {e['ratio']:.2f}"
        )
    print(f"\nelapsed {report['elapsed_s']:.1f} s")


if __name__ == "__main__":
    main()
