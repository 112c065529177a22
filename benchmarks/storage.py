"""What a shared workspace on S3 or SFTP costs against a local folder, for one real round.

Run from the repository root::

    .venv/bin/python benchmarks/storage.py          # under a minute
    .venv/bin/python benchmarks/storage.py --json   # machine-readable

It needs the dev extra (moto and asyncssh start the servers).

What is measured, all in one run on this machine, once per backend (a local folder; moto's
S3 server; an asyncssh SFTP server; both servers in processes of their own on loopback):

* after one unmeasured warm-up federation (imports, first training), the real
  heart-disease federation through the real CLI (4 hospitals, the preset's DP and
  secure aggregation): init, enrollment, approval and round 1's key exchange, then round 1
  itself (train-local, submit, aggregate, submit, aggregate), which is what is timed;
* every workspace operation the commands make in that round (reads, look-ups, writes,
  listings; the parties' private state folders are local in all three runs and not
  counted), and the time spent inside them;
* ratios against the local folder: the round's wall time, and its time in workspace calls.
* a fresh process opening the workspace and making one look-up (what each command pays
  first: imports, client setup, the SSH handshake), for each backend.

Loopback has no network latency: on a real link, each operation adds about one round trip
(the counts below tell how many). The commands run in this process (typer's CliRunner), so
S3's client is built once, not once per command as when each command is its own process;
the fresh-process line shows that cost.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from typer.testing import CliRunner  # noqa: E402

from fedrema_cli.app import app  # noqa: E402
from fedrema_cli.store import remote, storage  # noqa: E402
from tests.store.servers import s3_server, sftp_server_process  # noqa: E402

SITES = ("cleveland", "hungary", "switzerland", "va")


class Meter:
    """Counts and times every call into a shared workspace (not private state folders)."""

    def __init__(self) -> None:
        self.on = False
        self.ops: collections.Counter[str] = collections.Counter()
        self.seconds = 0.0

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        originals = {cls: cls._call for cls in (storage.BaseStorage, remote.RemoteStorage)}

        def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
            def call(store: Any, what: str, rel: str, op: Callable[[], Any]) -> Any:
                if not self.on or getattr(store, "private", False):
                    return original(store, what, rel, op)
                start = time.perf_counter()
                try:
                    return original(store, what, rel, op)
                finally:
                    self.seconds += time.perf_counter() - start
                    self.ops[what] += 1

            return call

        for cls, original in originals.items():
            cls._call = wrap(original)  # type: ignore[method-assign]
        try:
            yield
        finally:
            for cls, original in originals.items():
                cls._call = original  # type: ignore[method-assign]


def cli(*args: str | Path) -> None:
    out = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    if out.exit_code not in (0, 75):
        raise SystemExit(f"fedrema {' '.join(map(str, args))} exited {out.exit_code}: {out.stderr}")


def one_round(workdir: Path, workspace: str, hospitals: Path, meter: Meter) -> dict[str, Any]:
    coord = workdir / "coord"
    cli("init", "-w", workspace, "-s", coord, "--preset", "heart-disease", "--rounds", "2")
    for s in SITES:
        cli(
            "init", "-w", workspace, "-s", workdir / s, "--site", s,
            "--train", hospitals / f"{s}_train.csv", "--test", hospitals / f"{s}_test.csv",
        )  # fmt: skip
    cli("approve", "-s", coord, "--all")

    def submit_all() -> None:
        for s in SITES:
            cli("submit", "-s", workdir / s)

    for _ in range(2):  # round 1's key exchange
        submit_all()
        cli("aggregate", "-s", coord)
    meter.on = True
    start = time.perf_counter()
    for s in SITES:
        cli("train-local", "-s", workdir / s)
    submit_all()
    cli("aggregate", "-s", coord)
    submit_all()
    cli("aggregate", "-s", coord)
    elapsed = time.perf_counter() - start
    meter.on = False
    return {"round_s": elapsed, "storage_s": meter.seconds, "ops": dict(meter.ops)}


def cold_open(workspace: str) -> float:
    """Seconds for a fresh process to open the workspace and look one file up."""
    code = (
        "import time; t = time.perf_counter();"
        "from fedrema_cli.store.storage import open_storage;"
        f"open_storage({workspace!r}).exists('federation.json');"
        "print(time.perf_counter() - t)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"  # no instance-metadata lookup off-host
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        hospitals = tmp / "hospitals"
        cli("prepare-data", "heart-disease", "--out", hospitals)
        with s3_server() as s3, sftp_server_process(tmp / "sftp") as sftp:
            s3.client().create_bucket(Bucket="fedrema-bench")
            runs = {
                "warm-up": (str(tmp / "warm-up-ws"), None),  # first imports, first training
                "local": (str(tmp / "local-ws"), None),
                "s3": ("s3://fedrema-bench/heart", s3.options()),
                "sftp": (sftp.url("heart"), sftp.options()),
            }
            for name, (workspace, options) in runs.items():
                if options is None:
                    os.environ.pop(storage.STORAGE_OPTIONS_ENV, None)
                else:
                    os.environ[storage.STORAGE_OPTIONS_ENV] = json.dumps(options)
                meter = Meter()
                with meter.installed():
                    results[name] = one_round(tmp / name, workspace, hospitals, meter)
                results[name]["cold_open_s"] = cold_open(workspace)
    del results["warm-up"]
    local = results["local"]
    for r in results.values():
        r["round_ratio"] = r["round_s"] / local["round_s"]
        r["storage_ratio"] = r["storage_s"] / local["storage_s"]
        r["ops_total"] = sum(r["ops"].values())
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print("one heart-disease round (4 hospitals, DP + secure aggregation), one run, loopback")
    print(f"{'workspace':<10}{'round s':>9}{'x local':>9}{'in store s':>12}{'x local':>9}"
          f"{'ops':>6}{'ms/op':>8}{'cold open s':>13}")  # fmt: skip
    for name, r in results.items():
        print(
            f"{name:<10}{r['round_s']:>9.2f}{r['round_ratio']:>9.2f}{r['storage_s']:>12.2f}"
            f"{r['storage_ratio']:>9.1f}{r['ops_total']:>6}"
            f"{1000 * r['storage_s'] / r['ops_total']:>8.2f}{r['cold_open_s']:>13.2f}"
        )
    for name, r in results.items():
        print(f"{name} ops: " + ", ".join(f"{k} {v}" for k, v in sorted(r["ops"].items())))


if __name__ == "__main__":
    main()
