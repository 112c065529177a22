"""fedrema's secure aggregation next to Flower's SecAgg+, same rounds, same run (not a test).

Run with ``make bench-peers``: it creates ``.venv-peers`` (flwr==1.40.0, the newest release
whose dependencies install here, plus numpy and cryptography) and runs::

    .venv-peers/bin/python benchmarks/vs_flower.py [--quick] [--json]

For each configuration (n sites, d parameters, no dropout or 10% of the sites dropping
after key sharing, the one dropout stage Flower's server recovers from) one round runs
through each implementation, ours then Flower's, in the same process:

* ours: the ``crypto.secagg`` client state machine and coordinator functions
  (X25519, HKDF-SHA256, AES-GCM, Shamir over P-521, AES-256-CTR masks, uint32 words);
* Flower's: the SecAgg+ client steps of ``flwr.client.mod.secure_aggregation.secaggplus_mod``
  (``_setup``, ``_share_keys``, ``_collect_masked_vectors``, ``_unmask``: ECDH P-384, Fernet,
  pycryptodome Shamir, masks from ``pseudo_rand_gen``, int64 words) called directly, and on
  the server side Flower's public primitives (``bytes_to_ndarray``, ``parameters_addition``,
  ``parameters_mod``, ``combine_shares``, ``pseudo_rand_gen``, ``dequantize``) in the order
  of ``SecAggPlusWorkflow`` (collect_masked_vectors_stage, then unmask_stage), without its
  gRPC/message plumbing. Full graph (every site is every site's neighbour), the same
  threshold t = floor(2n/3) + 1 for both.

Measured: a site's masking step (ours: encode + mask + serialize; Flower's: quantize +
masks + serialize), mean over sites; the server's unmasking from the masked bytes to the
decoded float sum (ours: parse, ``finalize``, decode; Flower's: deserialize, sum, unmask,
dequantize) and, for ours, the U3 barrier too; payload bytes moved per round (keys,
ciphertexts, vectors, shares, node ids at 8 bytes; Flower's message framing not counted);
and whether each recovers the exact integer sum of the survivors' quantized inputs.
Timings come from one shared 2-core machine; both sides run in the same run, interleaved
per configuration, so read the ratios.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "benchmarks"))

import scale  # noqa: E402  (benchmarks/scale.py: the dropout pattern)
import secagg as secagg_bench  # noqa: E402  (benchmarks/secagg.py: the threshold rule)

from crypto.secagg import (  # noqa: E402
    MaskedInput,
    RoundContext,
    SecAggParams,
    decode_aggregate,
    encode_update,
    finalize,
    fix_key_roster,
    fix_masking_roster,
    fix_survivors,
    route_ciphertexts,
    start_round,
)

GRID = [(n, d) for d in (10_000, 1_000_000) for n in (4, 10, 30, 50, 100)] + [
    (4, 10_000_000),
    (10, 10_000_000),
]
QUICK = [(n, d) for d in (10_000, 100_000) for n in (4, 10, 30)]
ID_BYTES = 8  # a node id in Flower's lists, a party index in ours is inside the messages


def _timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.process_time()
    result = fn(*args, **kwargs)
    return result, time.process_time() - start


def _values(u: int, d: int) -> np.ndarray:
    """Site u's update: the same float32 vector for both implementations."""
    values = np.random.default_rng(u).standard_normal(d, dtype=np.float32)
    values *= np.float32(0.05)
    return values


# --- ours -----------------------------------------------------------------------------------


def run_ours(n: int, d: int, drop: set[int]) -> dict[str, Any]:
    params = SecAggParams(threshold=secagg_bench.default_threshold(n), modulus_bits=32,
                          dim=d + 1, frac_bits=16, clip=1.0, max_weight=1.0)  # fmt: skip
    ctx = RoundContext("peers", 1, bytes(32), params, tuple(range(1, n + 1)))
    moved = 0
    started = {u: start_round(ctx, u) for u in ctx.parties}
    adverts = [a for _, a in started.values()]
    roster = fix_key_roster(ctx, adverts)
    moved += sum(len(a.to_bytes()) for a in adverts) + n * len(roster.to_bytes())
    shared = {u: s.handle(roster) for u, (s, _) in started.items()}
    share_msgs = [m for _, m in shared.values()]
    moved += sum(len(m.to_bytes()) for m in share_msgs)
    masking = fix_masking_roster(ctx, roster, share_msgs)
    moved += n * len(masking.to_bytes())
    expected = np.zeros(params.dim, dtype=params.dtype)
    blobs, after, mask_s = {}, {}, []
    for u, (state, _) in shared.items():
        inbox = route_ciphertexts(masking, share_msgs, u)
        moved += sum(len(c) for c in inbox.values())
        if u in drop:
            continue
        values = _values(u, d)

        def step(state: Any = state, values: np.ndarray = values, u: int = u,
                 inbox: dict[int, bytes] = inbox) -> Any:  # fmt: skip
            x = encode_update(params, values, weight=1.0, rng=np.random.default_rng(u))
            new_state, msg = state.handle(masking, inbox=inbox, x=x)
            return x, new_state, msg.to_bytes()

        (x, after[u], blobs[u]), seconds = _timed(step)
        mask_s.append(seconds)
        np.add(expected, x, out=expected)
        moved += len(blobs[u])
    request, barrier_s = _timed(
        fix_survivors, ctx, masking, (MaskedInput.from_bytes(b) for b in blobs.values())
    )
    answers = [after[u].handle(request)[1] for u in request.survivors]
    moved += len(request.survivors) * len(request.to_bytes())
    moved += sum(len(a.to_bytes()) for a in answers)

    def unmask() -> Any:
        inputs = (MaskedInput.from_bytes(blobs[u]) for u in request.survivors)
        total = finalize(ctx, roster, masking, request, inputs, answers)
        return total, decode_aggregate(params, total)

    (total, _), unmask_s = _timed(unmask)
    return {"mask_s": statistics.mean(mask_s), "unmask_s": unmask_s,
            "server_s": unmask_s + barrier_s, "bytes": moved,
            "exact": bool(np.array_equal(total, expected))}  # fmt: skip


# --- Flower's SecAgg+ -----------------------------------------------------------------------


def run_flower(n: int, d: int, drop: set[int]) -> dict[str, Any]:
    # The package re-exports a function of the module's name, so import the module itself.
    client = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    from flwr.common import bytes_to_ndarray, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_combine,
        factor_extract,
        get_parameters_shape,
        parameters_addition,
        parameters_mod,
        parameters_multiply,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import dequantize, quantize
    from flwr.common.secure_aggregation.secaggplus_constants import Key
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

    t = secagg_bench.default_threshold(n)
    clip, target, mod, max_weight = 8.0, 1 << 22, 1 << 32, 1.0  # Flower's defaults, W = 1
    nodes = list(range(1, n + 1))
    setup = {Key.SAMPLE_NUMBER: n, Key.SHARE_NUMBER: n, Key.THRESHOLD: t,
             Key.CLIPPING_RANGE: clip, Key.TARGET_RANGE: target, Key.MOD_RANGE: mod,
             Key.MAX_WEIGHT: max_weight}  # fmt: skip
    states = {u: client.SecAggPlusState(nid=u) for u in nodes}
    keys = {u: client._setup(states[u], setup) for u in nodes}
    public = {str(u): (k[Key.PUBLIC_KEY_1], k[Key.PUBLIC_KEY_2]) for u, k in keys.items()}
    moved = sum(len(a) + len(b) for a, b in public.values()) * (1 + n)
    inbox: dict[int, tuple[list[int], list[bytes]]] = {u: ([], []) for u in nodes}
    for u in nodes:
        out = client._share_keys(states[u], public)
        for dst, ct in zip(out[Key.DESTINATION_LIST], out[Key.CIPHERTEXT_LIST], strict=True):
            inbox[dst][0].append(u)
            inbox[dst][1].append(ct)
            moved += 2 * (len(ct) + ID_BYTES)  # up to the server, then forwarded
    masked, mask_s, expected = {}, [], None
    for u in nodes:
        if u in drop:
            continue
        values = _values(u, d)
        configs = {Key.SOURCE_LIST: inbox[u][0], Key.CIPHERTEXT_LIST: inbox[u][1]}
        np.random.seed(u)  # Flower's stochastic rounding draws from numpy's global RNG
        out, seconds = _timed(client._collect_masked_vectors, states[u], configs, 1,
                              ndarrays_to_parameters([values]))  # fmt: skip
        mask_s.append(seconds)
        masked[u] = out[Key.MASKED_PARAMETERS]
        moved += sum(len(b) for b in masked[u])
        # The site's quantized input, redrawn with the same rounding randomness.
        np.random.seed(u)
        q_ratio = round(1 / max_weight * target)
        ints = parameters_multiply(parameters_to_ndarrays(ndarrays_to_parameters([values])),
                                   q_ratio / target)  # fmt: skip
        q = [a.astype(np.int64) for a in factor_combine(q_ratio, quantize(ints, clip, target))]
        expected = q if expected is None else parameters_addition(expected, q)
    expected = parameters_mod(expected, mod)
    active = set(masked)
    dead = set(nodes) - active
    lists = {Key.ACTIVE_NODE_ID_LIST: sorted(active), Key.DEAD_NODE_ID_LIST: sorted(dead)}
    answers = {u: client._unmask(states[u], lists) for u in sorted(active)}  # site side
    moved += len(active) * ID_BYTES * n  # the active and dead lists sent to each site
    moved += sum(len(s) + ID_BYTES for a in answers.values() for s in a[Key.SHARE_LIST])

    def unmask() -> Any:
        # collect_masked_vectors_stage: deserialize, sum, reduce.
        vector = None
        for u in sorted(active):
            vec = [bytes_to_ndarray(b) for b in masked[u]]
            vector = vec if vector is None else parameters_addition(vector, vec)
        vector = parameters_mod(vector, mod)
        # unmask_stage: rebuild each secret from the answers and remove its masks.
        shares: dict[int, list[bytes]] = {u: [] for u in nodes}
        for ans in answers.values():
            for owner, share in zip(ans[Key.NODE_ID_LIST], ans[Key.SHARE_LIST], strict=True):
                shares[owner].append(share)
        for u, share_list in shares.items():
            secret = combine_shares(share_list)
            shape = get_parameters_shape(vector)
            if u in active:
                vector = parameters_subtraction(vector, pseudo_rand_gen(secret, mod, shape))
                continue
            for v in nodes:
                if v == u:
                    continue
                shared_key = generate_shared_key(
                    bytes_to_private_key(secret), bytes_to_public_key(public[str(v)][0])
                )
                pair = pseudo_rand_gen(shared_key, mod, shape)
                vector = (parameters_addition if u > v else parameters_subtraction)(vector, pair)
        vector = parameters_mod(vector, mod)
        _, ints = factor_extract(vector)
        return vector, dequantize(ints, clip, target)

    (total, _), server_s = _timed(unmask)
    exact = all(np.array_equal(a, b) for a, b in zip(total, expected, strict=True))
    return {"mask_s": statistics.mean(mask_s), "unmask_s": server_s, "server_s": server_s,
            "bytes": moved, "exact": bool(exact)}  # fmt: skip


def flower_seed_is_32_bits() -> dict[str, Any]:
    """Show, with Flower's own function, that only a 32-bit XOR fold of the seed matters."""
    from flwr.common.secure_aggregation import secaggplus_utils

    seed_a = os.urandom(32)
    flip = os.urandom(4)
    seed_b = bytes(a ^ b for a, b in zip(seed_a, flip * 2 + bytes(24), strict=True))
    mask_a = secaggplus_utils.pseudo_rand_gen(seed_a, 1 << 32, [(1000,)])[0]
    mask_b = secaggplus_utils.pseudo_rand_gen(seed_b, 1 << 32, [(1000,)])[0]
    return {
        "function": "flwr.common.secure_aggregation.secaggplus_utils.pseudo_rand_gen",
        "different_seeds_same_mask": seed_a != seed_b and bool(np.array_equal(mask_a, mask_b)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n <= 30, d <= 1e5")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    import flwr

    t0 = time.perf_counter()
    seed_check = flower_seed_is_32_bits()
    rows = []
    for n, d in QUICK if args.quick else GRID:
        for dropout in (False, True):
            drop = scale.dropped_parties(n, dropout)
            ours, flower = run_ours(n, d, drop), run_flower(n, d, drop)
            rows.append({"n": n, "d": d, "dropped": len(drop), "ours": ours, "flower": flower})
            print(f"  n={n:>3} d={d:.0e} dropped={len(drop)}: ours "
                  f"{ours['mask_s'] * 1e3:.0f} ms/site, Flower {flower['mask_s'] * 1e3:.0f} "
                  "ms/site", file=sys.stderr)  # fmt: skip
    report = {"flwr": flwr.__version__, "seed_check": seed_check, "rows": rows,
              "elapsed_s": time.perf_counter() - t0}  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"fedrema crypto.secagg vs Flower {flwr.__version__} SecAgg+ (full graph, same t, "
          "same inputs and dropouts, one run)")  # fmt: skip
    print(f"{'n':>4} {'d':>6} {'drop':>4} | {'site mask ms':>20} {'x':>5} | "
          f"{'server unmask ms':>22} {'x':>5} | {'MB moved':>13} | exact sum")  # fmt: skip
    print(f"{'':>16} | {'ours':>9} {'Flower':>10} {'':>5} | {'ours':>10} {'Flower':>11} "
          f"{'':>5} | {'ours':>6} {'Flower':>6} | ours Flower")  # fmt: skip
    for r in rows:
        o, f = r["ours"], r["flower"]
        print(f"{r['n']:>4} {r['d']:>6.0e} {r['dropped']:>4} | {o['mask_s'] * 1e3:>9.1f} "
              f"{f['mask_s'] * 1e3:>10.1f} {f['mask_s'] / o['mask_s']:>5.1f} | "
              f"{o['unmask_s'] * 1e3:>10.1f} {f['unmask_s'] * 1e3:>11.1f} "
              f"{f['unmask_s'] / o['unmask_s']:>5.1f} | {o['bytes'] / 1e6:>6.1f} "
              f"{f['bytes'] / 1e6:>6.1f} | {'yes' if o['exact'] else 'NO':>4} "
              f"{'yes' if f['exact'] else 'NO':>6}")  # fmt: skip
    print("  x = Flower's time / ours (above 1: ours is faster). CPU seconds of one process.")
    print("  ours' server time with the U3 barrier (fix_survivors, a SHA-256 per input):")
    for r in rows:
        if r["d"] == 1_000_000 and r["n"] in (10, 100):
            o, f = r["ours"], r["flower"]
            print(f"    n={r['n']:>3} dropped={r['dropped']}: {o['server_s'] * 1e3:.1f} ms, "
                  f"{f['server_s'] / o['server_s']:.1f}x faster than Flower's")  # fmt: skip
    verdict = "confirmed" if seed_check["different_seeds_same_mask"] else "NOT reproduced"
    print(f"\nFlower's mask generator ({seed_check['function']}) XOR-folds the 32-byte seed "
          "into 32 bits and seeds numpy's RandomState (MT19937, not a cryptographic "
          f"generator) with it: {verdict} in this run (two different seeds with the same "
          "fold gave the same mask). Ours: AES-256-CTR keyed by HKDF-SHA256.")  # fmt: skip
    print(f"elapsed {report['elapsed_s']:.0f} s")
    ok = all(r["ours"]["exact"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
