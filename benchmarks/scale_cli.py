"""Peak memory of the real commands: `fedrema submit` at a site, `fedrema aggregate` at the
coordinator, on a real federation whose shared part has about 10^7 parameters (not a test).

``benchmarks/scale.py`` measures the ``crypto.secagg`` functions; this measures what a
hospital actually runs, with the workspace and state-folder write path in it (signed
envelopes, the protocol state with its outbox, atomic writes)::

    .venv/bin/python benchmarks/scale.py --probe-cli-site              # n = 50 sites
    .venv/bin/python benchmarks/scale.py --probe-cli-site --sites 10 --hidden 1000,1000

The federation is built through the CLI (heart-disease preset, an MLP extractor of
``--hidden`` sizes: 3160,3160 gives 10,033,000 shared parameters; no DP, one round; every
site holds one of the four bundled hospitals' tables). Set-up commands run in this process
(typer's test runner, to save interpreter start-ups); the measured ones run as separate
``fedrema`` processes, and their peak resident set (``VmHWM``, read by the process itself at
exit: the interpreter, imports and everything the command holds) is the figure reported (the
documented run, n = 50 and d = 1e7, is saved to ``benchmarks/results/scale/cli_probe*``):

* site: ``fedrema submit`` that encodes, masks and publishes the update (the first one after
  ``train-local``), then the same command run again (it republishes from the outbox);
* coordinator (``--coordinator``, minutes): every other site submits a masked update too,
  through the same driver code ``submit`` runs (``site_steps``) with a random update of the
  right size instead of a trained one (training 10^7-parameter models at every site would
  take most of an hour here), then ``fedrema aggregate`` closing the round (U3, reads
  every masked input) and, after the reveals, ``fedrema aggregate`` finishing it (unmasks
  and publishes the model).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from fedrema_cli.app import app

MIB = 1 << 20
OUT = Path(__file__).resolve().parent / "results" / "scale"
GIB = 1 << 30
HOSPITALS = ("cleveland", "hungary", "switzerland", "va")


def _cli(*args: str | Path) -> Any:
    """One set-up command in this process; exit 0 or 75 (nothing to do yet) expected."""
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    if result.exit_code not in (0, 75):
        raise SystemExit(f"fedrema {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result


#: Runs the ``fedrema`` entry point, then writes the process's own peak resident set
#: (``VmHWM``, reset at exec) to stderr. ``ru_maxrss`` from ``wait4`` is no good here: Linux
#: carries the parent's high-water mark (this process, with torch loaded) into the child.
_CHILD = """
import re, sys
from pathlib import Path
sys.argv = ["fedrema", *sys.argv[1:]]
try:
    from fedrema_cli.app import main
    main()
finally:
    kib = re.search(r"^VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text(), re.M)
    sys.stderr.write(f"\\nVMHWM_KIB={kib.group(1)}\\n")
"""


def measured(*args: str | Path) -> dict[str, Any]:
    """Run ``fedrema ARGS`` as its own process: its peak RSS, wall time and exit code."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-c", _CHILD, *map(str, args)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, check=False)  # fmt: skip
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 75) or "VMHWM_KIB=" not in proc.stderr:
        raise SystemExit(f"fedrema {' '.join(map(str, args))} exited {proc.returncode}:\n"
                         f"{proc.stderr[-2000:]}")  # fmt: skip
    kib = int(proc.stderr.rsplit("VMHWM_KIB=", 1)[1].split()[0])
    return {"peak_rss_bytes": kib * 1024, "wall_s": wall, "exit": proc.returncode}


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def probe(sites: int, hidden: str, coordinator: bool, root: Path) -> dict[str, Any]:
    hosp, ws, coord = root / "hospitals", root / "ws", root / "coord"
    names = [f"site{i:03d}" for i in range(1, sites + 1)]
    _cli("prepare-data", "heart-disease", "--out", hosp)
    _cli("init", "-w", ws, "-s", coord, "--preset", "heart-disease", "--rounds", "1",
         "--no-dp", "--hidden", hidden, "--federation-id", "scale-cli")  # fmt: skip
    for i, name in enumerate(names):
        h = HOSPITALS[i % len(HOSPITALS)]
        _cli("init", "-w", ws, "-s", root / name, "--site", name,
             "--train", hosp / f"{h}_train.csv", "--test", hosp / f"{h}_test.csv")  # fmt: skip
    _cli("approve", "-s", coord, "--all")
    for _ in range(2):  # adverts, U1, key shares, U2
        for name in names:
            _cli("submit", "-s", root / name)
        _cli("aggregate", "-s", coord)
    config = json.loads((ws / "federation.json").read_text())["body"]
    from fedrema_cli.config import parse_config
    from fedrema_cli.learning.modelspec import part_size

    spec = parse_config(config, where="federation.json").model
    me = root / names[0]
    start = time.perf_counter()
    _cli("train-local", "-s", me)
    train_s = time.perf_counter() - start
    out: dict[str, Any] = {
        "sites": sites,
        "shared_parameters": part_size(spec, "extractor"),
        "modulus_bits": config["secagg"]["modulus_bits"],
        "train_local_s": train_s,
        "site_submit": measured("submit", "-s", me),
        "site_state_bytes_after_submit": _folder_bytes(me / "secagg"),
        "site_submit_again": measured("submit", "-s", me),
    }
    if coordinator:
        for i, name in enumerate(names[1:], start=2):
            _peer_submits(root / name, seed=i)
        out["coordinator_close"] = measured("aggregate", "-s", coord)
        for name in names:
            _cli("submit", "-s", root / name)
        out["coordinator_finish"] = measured("aggregate", "-s", coord)
        result = json.loads((ws / "rounds" / "0001" / "result.json").read_text())["body"]
        out["round_result"] = {k: result.get(k) for k in ("survivors", "dropped") if k in result}
        if "survivors" in result:
            out["round_result"]["survivors"] = len(result["survivors"])
    return out


def _peer_submits(state: Path, *, seed: int) -> None:
    """Another site's masked update through the real SecAgg driver (``site_steps``: encode,
    mask, outbox, publish), with a random update of the shared part's size instead of a
    trained one: training 49 models of 10^7 parameters would take most of an hour here."""
    import numpy as np

    from fedrema_cli.protocol import secagg as secure
    from fedrema_cli.protocol.rounds import Actions, read_model
    from fedrema_cli.roles.site import Site

    site = Site(state)
    view = site.secagg_view(1)
    start = read_model(site.fed, 1)
    d = secure.round_context(site.config, site.fed.require_roster(), 1).params.dim - 1
    delta = np.random.default_rng(seed).normal(0, 0.01, size=d).astype(np.float32)
    update = secure.SiteUpdate(delta, 100.0, site.submission_body(1, start))
    view = secure.SiteRound(view.fed, view.state, view.last, {1: update})
    actions = Actions()
    with site.state.exclusive():
        secure.site_steps(view, 1, actions)
    if "round 1: masked update submitted" not in actions.done:
        raise SystemExit(f"{state.name} did not submit: {actions}")


def report(out: dict[str, Any]) -> list[str]:
    d, n = out["shared_parameters"], out["sites"]
    lines = [f"real CLI, n={n} sites, d={d:,} shared parameters, "
             f"{out['modulus_bits']}-bit masked words (train-local took "
             f"{out['train_local_s']:.1f} s)"]  # fmt: skip
    rows = [
        ("site: fedrema submit (encode, mask, publish)", "site_submit", GIB),
        ("site: fedrema submit again (republish)", "site_submit_again", GIB),
        ("coordinator: fedrema aggregate (close: U3)", "coordinator_close", 4 * GIB),
        ("coordinator: fedrema aggregate (finish: unmask)", "coordinator_finish", 4 * GIB),
    ]
    for label, key, bound in rows:
        if key in out:
            m = out[key]
            verdict = "PASS" if m["peak_rss_bytes"] < bound else "FAIL"
            peak = m["peak_rss_bytes"] / MIB
            lines.append(f"  {label}: peak RSS {peak:.0f} MiB, {m['wall_s']:.1f} s "
                         f"(bound {bound / GIB:.0f} GiB): {verdict}")  # fmt: skip
    lines.append(f"  site's secagg/ state folder after submit: "
                 f"{out['site_state_bytes_after_submit'] / MIB:.0f} MiB")  # fmt: skip
    if "round_result" in out:
        lines.append(f"  round 1 result: {out['round_result']}")
    return lines


def main(sites: int, hidden: str, coordinator: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="fedrema-scale-cli-", dir="/var/tmp") as tmp:
        out = probe(sites, hidden, coordinator, Path(tmp))
    lines = report(out)
    print("\n".join(lines))
    if (sites, hidden) == (50, "3160,3160"):  # the documented run; others only print
        OUT.mkdir(parents=True, exist_ok=True)
        name = "cli_probe" + ("_coordinator" if coordinator else "")
        (OUT / f"{name}.txt").write_text("\n".join(lines) + "\n")
        (OUT / f"{name}.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0 if all(not line.endswith("FAIL") for line in lines) else 1
