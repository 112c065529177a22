"""A federation across hosts: the SFTP store, the coordinator and each site on a host of its own.

The hosts are Linux network namespaces on this machine, each with its own network stack and
one veth link to a bridge in a namespace of its own (a switch), addresses in 10.231.0.0/24
that exist only inside them: nothing reaches or leaves this machine's own network. Every
command runs as its own process inside its host (``ip netns exec``) and reaches the
workspace only over SSH to the store's address, with the server's key pinned.

Mid-round one site's cable is pulled (its switch port goes down) after it sent its masked
update and before it revealed: the round must finish on the quorum (2 of 3), the next one
must run without it, and the site, its link back, advertises keys to rejoin at the first
round still open to it.

Needs root (CAP_NET_ADMIN) and ``ip``; without them the test skips and says why.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedrema_cli.store.storage import STORAGE_OPTIONS_ENV
from tests.signed_files import read_signed
from tests.store.servers import SftpServer, sftp_server_process

ROOT = Path(__file__).resolve().parents[2]
SITES = ("cleveland", "hungary", "switzerland")
SUBNET = "10.231.0"  # a private range used only inside the namespaces made here
IP = shutil.which("ip") or "/usr/sbin/ip"


def ip(*args: str) -> None:
    out = subprocess.run([IP, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")


@dataclass
class Network:
    """Hosts (namespaces) on one switch; ``cut``/``mend`` pull and replug a host's cable."""

    tag: str
    hosts: dict[str, str]  # role -> address
    ports: dict[str, str]  # role -> the switch side of its veth

    def ns(self, role: str) -> str:
        return f"fr{self.tag}-{role}"

    def exec(self, role: str) -> tuple[str, ...]:
        return (IP, "netns", "exec", self.ns(role))

    def cut(self, role: str) -> None:
        ip("-n", self.ns("switch"), "link", "set", self.ports[role], "down")

    def mend(self, role: str) -> None:
        ip("-n", self.ns("switch"), "link", "set", self.ports[role], "up")


def namespaces_unavailable() -> str | None:
    """Why this machine cannot make network namespaces, or None if it can."""
    if not os.path.exists(IP):
        return "no `ip` command (install iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN); run as root to include it"
    probe = f"fr{secrets.token_hex(3)}-probe"
    try:
        ip("netns", "add", probe)
    except RuntimeError as exc:
        return f"cannot create a network namespace here: {exc}"
    ip("netns", "del", probe)
    return None


@pytest.fixture
def network() -> Iterator[Network]:
    why = namespaces_unavailable()
    if why:
        pytest.skip(f"multi-host test needs network namespaces: {why}")
    tag = secrets.token_hex(2)  # names stay unique across runs and under 15 characters
    roles = ("store", "coord", *SITES)
    net = Network(tag, {}, {})
    made: list[str] = []
    try:
        switch = net.ns("switch")
        ip("netns", "add", switch)
        made.append(switch)
        ip("-n", switch, "link", "add", "br0", "type", "bridge")
        ip("-n", switch, "link", "set", "br0", "up")
        for i, role in enumerate(roles, start=1):
            ns = net.ns(role)
            ip("netns", "add", ns)
            made.append(ns)
            port, nic = f"fr{tag}p{i}", f"fr{tag}n{i}"
            ip("-n", switch, "link", "add", port, "type", "veth", "peer", "name", nic, "netns", ns)
            ip("-n", switch, "link", "set", port, "master", "br0", "up")
            address = f"{SUBNET}.{i + 1}"
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", nic)
            ip("-n", ns, "link", "set", nic, "up")
            ip("-n", ns, "link", "set", "lo", "up")
            net.hosts[role], net.ports[role] = address, port
        yield net
    finally:
        for ns in reversed(made):  # deleting a namespace deletes its end of every veth
            subprocess.run([IP, "netns", "del", ns], capture_output=True, check=False)


@dataclass
class Hosts:
    net: Network
    sftp: SftpServer
    tmp: Path

    def fedrema(
        self, role: str, *args: str | Path, options: dict[str, object] | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env[STORAGE_OPTIONS_ENV] = json.dumps(options or self.sftp.options())
        return subprocess.run(
            [*self.net.exec(role), sys.executable, "-m", "fedrema_cli", *map(str, args)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    def each(self, sites: tuple[str, ...], *args: str, ok: tuple[int, ...] = (0,)) -> None:
        """Every site runs a command at once, each on its own host."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env[STORAGE_OPTIONS_ENV] = self.sftp.options_json()
        procs = {
            s: subprocess.Popen(
                [
                    *self.net.exec(s),
                    sys.executable,
                    "-m",
                    "fedrema_cli",
                    *args,
                    "-s",
                    self.state(s),
                ],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for s in sites
        }
        for s, proc in procs.items():
            _, err = proc.communicate(timeout=600)
            assert proc.returncode in ok, (s, args, proc.returncode, err[-1500:])

    def state(self, role: str) -> Path:
        return self.tmp / "state" / role

    def aggregate(self, *flags: str) -> subprocess.CompletedProcess[str]:
        out = self.fedrema("coord", "aggregate", "-s", self.state("coord"), "--json", *flags)
        assert out.returncode == 0, out.stdout[-1500:] + out.stderr[-1500:]
        return out


def result(sftp: SftpServer, r: int) -> dict:
    return read_signed(sftp.root / "ws" / f"rounds/{r:04d}/result.json")["body"]


@pytest.mark.slow
def test_a_federation_across_hosts_survives_a_cable_pulled_mid_round(
    network: Network, tmp_path: Path
) -> None:
    hospitals = tmp_path / "hospitals"
    with sftp_server_process(
        tmp_path / "store", network.hosts["store"], prefix=network.exec("store")
    ) as sftp:
        hosts = Hosts(network, sftp, tmp_path)
        ws = sftp.url("ws")
        assert ws.startswith(f"sftp://hospital-it@{SUBNET}.")
        out = hosts.fedrema("coord", "prepare-data", "heart-disease", "--out", hospitals)
        assert out.returncode == 0, out.stderr
        init = ("init", "-w", ws, "--preset", "heart-disease", "--rounds", "4", "--no-dp")
        out = hosts.fedrema("coord", *init, "-s", hosts.state("coord"), "--threshold", "2")
        assert out.returncode == 0, out.stderr
        for s in SITES:
            data = ("--train", hospitals / f"{s}_train.csv", "--test", hospitals / f"{s}_test.csv")
            out = hosts.fedrema(s, "init", "-w", ws, "-s", hosts.state(s), "--site", s, *data)
            assert out.returncode == 0, out.stderr
        out = hosts.fedrema("coord", "approve", "-s", hosts.state("coord"), "--all")
        assert out.returncode == 0, out.stderr
        # nothing but the store's own host holds the workspace: the parties wrote over SSH
        assert (sftp.root / "ws" / "roster.json").is_file()

        for _ in range(2):  # round 1's key exchange
            hosts.each(SITES, "submit")
            hosts.aggregate()

        # round 1: everyone trains and sends a masked update; the coordinator closes it
        hosts.each(SITES, "train-local")
        hosts.each(SITES, "submit")
        hosts.aggregate()
        gone, rest = SITES[-1], SITES[:-1]
        network.cut(gone)  # after its masked update, before its unmasking shares
        # cut off, the site gets one clear line, not a hang or a traceback
        offline = hosts.fedrema(
            gone,
            "status",
            "-s",
            hosts.state(gone),
            options=sftp.options(timeout=2, banner_timeout=2, retries=1),
        )
        assert offline.returncode != 0 and "Traceback" not in offline.stderr, offline.stderr
        assert len(offline.stderr.strip().splitlines()) <= 2, offline.stderr
        hosts.each(rest, "submit")
        hosts.aggregate("--close")  # the quorum (2 of 3) revealed: finish without it
        first = result(sftp, 1)
        assert first["survivors"] == list(SITES)  # its masked update was in the sum ...
        assert first["dropped"] == []  # ... and the others' shares unmasked it

        # round 2 runs without it; its cable back, it rejoins
        hosts.each(rest, "train-local")
        hosts.each(rest, "submit")
        hosts.aggregate("--close")
        hosts.each(rest, "submit")
        hosts.aggregate()
        second = result(sftp, 2)
        assert second["survivors"] == list(rest), second
        network.mend(gone)
        # its cable back, it advertises keys for the first round whose key roster is open
        back = hosts.fedrema(gone, "submit", "-s", hosts.state(gone))
        assert back.returncode == 0, back.stderr
        assert (sftp.root / "ws" / "rounds/0004/keys" / f"{gone}.json").is_file()
        assert not (sftp.root / "ws" / "rounds/0003/keys" / f"{gone}.json").exists()
