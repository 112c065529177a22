"""A workspace on a real SFTP server (asyncssh, started here on loopback).

The sites and the coordinator keep their private state locally; only the shared workspace is
remote, as at hospitals that already run an SFTP server.
"""

from __future__ import annotations

import time
from pathlib import Path

import asyncssh
import pytest

from fedrema_cli.errors import StoreError, WriteOnceError
from fedrema_cli.store.remote import Retry, SftpStorage
from fedrema_cli.store.storage import STORAGE_OPTIONS_ENV, open_storage
from tests.cli.conftest import full_round, key_exchange, make_federation, run
from tests.store.servers import SftpServer

FAST = Retry(attempts=3, first_delay=0.01)


def everything_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_write_once_read_list_and_refusals(sftp: SftpServer, monkeypatch) -> None:
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, sftp.options_json())
    store = open_storage(sftp.url("ws"))
    assert isinstance(store, SftpStorage)
    assert store.write_once("rounds/0001/a.json", b"one")
    assert not store.write_once("rounds/0001/a.json", b"one")  # identical: a no-op
    with pytest.raises(WriteOnceError):
        store.write_once("rounds/0001/a.json", b"two")
    assert store.read_bytes("rounds/0001/a.json") == b"one"
    store.replace("state.json", b"v1")
    store.replace("state.json", b"v2")
    assert store.read_bytes("state.json") == b"v2"
    assert store.list("rounds/0001") == ["a.json"]
    assert store.list("nowhere") == []
    assert store.list(".") == ["rounds", "state.json"]
    # the URL's path is absolute on the server: sftp://host/ws is /ws (here, in the chroot)
    assert (sftp.root / "ws" / "rounds" / "0001" / "a.json").read_bytes() == b"one"
    assert everything_under(sftp.root / "ws") == [
        "rounds",
        "rounds/0001",
        "rounds/0001/a.json",
        "state.json",
    ]  # no temporary file left behind
    with pytest.raises(StoreError, match="missing file"):
        store.read_bytes("rounds/0001/b.json")
    store.delete("rounds/0001/a.json")
    store.delete("rounds/0001/a.json")  # deleting what is gone is fine
    assert not store.exists("rounds/0001/a.json")


def test_write_once_is_the_servers_refusal_not_a_check(sftp: SftpServer) -> None:
    """A writer that saw nothing there (the check-then-write race) is still refused."""
    store = SftpStorage(sftp.url("ws"), sftp.options(), retry=FAST)
    store.write_once("a.json", b"first")
    store._exists = lambda rel: False  # type: ignore[method-assign]  # a stale view
    with pytest.raises(WriteOnceError):
        store.write_once("a.json", b"second")
    assert (sftp.root / "ws" / "a.json").read_bytes() == b"first"


def test_a_server_with_another_host_key_is_refused(sftp: SftpServer) -> None:
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    with pytest.raises(StoreError, match="not the pinned one"):
        SftpStorage(sftp.url("ws"), sftp.options(host_key=impostor), retry=FAST)


def test_an_unknown_server_is_refused_not_trusted_on_first_sight(sftp: SftpServer) -> None:
    options = sftp.options()
    del options["host_key"]
    with pytest.raises(StoreError, match="is not in known_hosts") as caught:
        SftpStorage(sftp.url("ws"), options, retry=FAST)
    assert "SHA256:" in (caught.value.hint or "")  # the fingerprint to compare
    assert sftp.host_key in (caught.value.hint or "")  # the line to pin, once compared
    assert not (sftp.root / "ws").exists()


def test_known_hosts_is_used_and_a_changed_key_is_refused(
    sftp: SftpServer, clean_environment: Path
) -> None:
    options = sftp.options()
    del options["host_key"]
    known = clean_environment / ".ssh" / "known_hosts"
    known.write_text(sftp.known_hosts_line())
    store = SftpStorage(sftp.url("ws"), options, retry=FAST)
    assert store.write_once("a.json", b"x")
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    known.write_text(f"[127.0.0.1]:{sftp.port} {other}\n")
    with pytest.raises(StoreError, match="differs from the one in known_hosts") as caught:
        SftpStorage(sftp.url("ws"), options, retry=FAST)
    assert "ssh-keygen -R" in (caught.value.hint or "")
    # a known_hosts file named in the options instead of ~/.ssh/known_hosts
    mine = clean_environment / "fedrema_known_hosts"
    mine.write_text(sftp.known_hosts_line())
    assert SftpStorage(sftp.url("ws"), {**options, "known_hosts": str(mine)}, retry=FAST).exists(
        "a.json"
    )


def test_an_ssh_config_alias_is_honoured(
    sftp: SftpServer, clean_environment: Path, monkeypatch
) -> None:
    ssh = clean_environment / ".ssh"
    (ssh / "config").write_text(
        "Host fedrema-store\n"
        "    HostName 127.0.0.1\n"
        f"    Port {sftp.port}\n"
        "    User hospital-it\n"
        f"    IdentityFile {sftp.client_key}\n"
    )
    (ssh / "known_hosts").write_text(sftp.known_hosts_line())
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, '{"look_for_keys": false, "allow_agent": false}')
    store = open_storage("sftp://fedrema-store/heart")
    assert store.write_once("federation.json", b"{}")
    assert (sftp.root / "heart" / "federation.json").read_bytes() == b"{}"
    assert store.describe() == "sftp://fedrema-store/heart"


def test_dropped_connections_are_retried(sftp: SftpServer, proxy_to) -> None:
    proxy = proxy_to(sftp.port)
    proxy.drop_next = 2  # the server is restarting: two connections reset
    url = sftp.url("ws", port=proxy.port)
    store = SftpStorage(url, sftp.options(), retry=FAST)
    assert proxy.connections == 3
    assert store.write_once("a.json", b"x")
    proxy.cut()  # the link goes down mid-session
    assert store.read_bytes("a.json") == b"x"  # reconnected
    assert proxy.connections == 4


def test_a_write_cut_short_leaves_no_temporary_file(sftp: SftpServer, proxy_to) -> None:
    proxy = proxy_to(sftp.port)
    store = SftpStorage(sftp.url("ws", port=proxy.port), sftp.options(), retry=FAST)
    ftp = store._sftp()
    real_rename = ftp.rename

    def cut_then_rename(old: str, new: str) -> None:
        proxy.cut()  # uploaded, then the link drops before the rename
        real_rename(old, new)

    ftp.rename = cut_then_rename  # type: ignore[method-assign]
    assert store.write_once("rounds/0001/model.json", b"model")
    assert proxy.connections == 2
    assert (sftp.root / "ws" / "rounds" / "0001" / "model.json").read_bytes() == b"model"
    assert everything_under(sftp.root / "ws") == [
        "rounds",
        "rounds/0001",
        "rounds/0001/model.json",
    ]


def test_a_permanent_error_is_not_retried(sftp: SftpServer, proxy_to, tmp_path: Path) -> None:
    proxy = proxy_to(sftp.port)
    stranger = tmp_path / "stranger_key"
    stranger.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    stranger.chmod(0o600)
    options = {**sftp.options(), "key_filename": str(stranger)}
    with pytest.raises(StoreError, match="did not accept the login of hospital-it"):
        SftpStorage(sftp.url("ws", port=proxy.port), options, retry=FAST)
    assert proxy.connections == 1


def test_a_server_that_stays_down_fails_after_a_few_attempts(sftp: SftpServer, proxy_to) -> None:
    proxy = proxy_to(sftp.port)
    proxy.drop_next = 1000
    start = time.perf_counter()
    with pytest.raises(StoreError, match="gave up after 3 attempts") as caught:
        SftpStorage(sftp.url("ws", port=proxy.port), sftp.options(), retry=FAST)
    assert time.perf_counter() - start < 10
    assert proxy.connections == 3
    assert "\n" not in str(caught.value)


def test_a_failed_init_leaves_nothing_on_the_server(
    sftp: SftpServer, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, sftp.options_json())
    sftp.disk_full.set()  # connecting works; writing files does not
    args = ("init", "-w", sftp.url("heart"), "-s", tmp_path / "coord", "--preset", "heart-disease")
    out = run(*args)
    assert out.exit_code == 1
    assert "No space left on device" in out.stderr and "Traceback" not in out.stderr
    assert everything_under(sftp.root) == []  # no temporary file, no empty folder
    sftp.disk_full.clear()
    out = run(*args)  # once the disk has room, the same command just works
    assert out.exit_code == 0, out.stderr
    assert (sftp.root / "heart" / "federation.json").is_file()


@pytest.mark.parametrize("size", [100, 300_000])  # one write request; a pipelined upload
def test_a_full_disk_is_never_a_short_file(sftp: SftpServer, size: int) -> None:
    store = SftpStorage(sftp.url("ws"), sftp.options(), retry=FAST)
    store.write_once("keep.json", b"{}")
    sftp.disk_full.set()
    with pytest.raises(StoreError, match=r"No space left on device|kept 0 of 300000 bytes"):
        store.write_once("rounds/0001/model.bin", b"m" * size)
    assert everything_under(sftp.root / "ws") == ["keep.json"]


def test_a_whole_federation_with_the_workspace_on_sftp(
    sftp: SftpServer, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, sftp.options_json())
    fed = make_federation(
        tmp_path, "--rounds", "1", "--no-dp", workspace=sftp.url("heart"), approve=False
    )
    assert run("approve", "-s", fed.coordinator, "--all").exit_code == 0
    key_exchange(fed)
    full_round(fed)
    status = run("status", "-s", fed.coordinator, "--json").json()
    assert status["complete"]
    out = run("personalize", "-s", fed.site("va"), "--json").json()
    assert out["complete"] and out["metrics"]["n"] == 45
    # The shared folder really is on the server: masked updates and the result are there.
    assert (sftp.root / "heart" / "rounds" / "0001" / "result.json").exists()
    assert (sftp.root / "heart" / "rounds" / "0001" / "submissions" / "va.masked.bin").exists()
    assert not [p for p in (sftp.root / "heart").rglob(".*")]  # no temporary file left
    # A model tampered with on the server is refused when read.
    model = sftp.root / "heart" / "rounds" / "0002" / "model.params.safetensors"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0x01
    model.write_bytes(bytes(data))
    out = run("personalize", "-s", fed.site("va"))
    assert out.exit_code == 3 and "does not match its signed hash" in out.stderr


def test_bad_connection_options_are_one_line(sftp: SftpServer, monkeypatch) -> None:
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, sftp.options_json(no_such_option=1))
    with pytest.raises(StoreError, match="no_such_option"):
        open_storage(sftp.url("ws"))
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, "[1, 2]")
    with pytest.raises(StoreError, match="must be a JSON object"):
        open_storage(sftp.url("ws"))
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, sftp.options_json(host_key="not a key"))
    with pytest.raises(StoreError, match="host_key must look like"):
        open_storage(sftp.url("ws"))
    with pytest.raises(StoreError, match="no workspace backend for gs://"):
        open_storage("gs://bucket/heart")
