"""A workspace on a real SFTP server (asyncssh, started here on loopback), through fsspec.

The sites and the coordinator keep their private state locally; only the shared workspace is
remote, as at hospitals that already run an SFTP server.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from fedrema_cli.errors import StoreError, WriteOnceError
from fedrema_cli.store.storage import STORAGE_OPTIONS_ENV, FsspecStorage, open_storage
from tests.cli.conftest import full_round, key_exchange, make_federation, run


@dataclass
class SftpServer:
    root: Path
    port: int
    host_key: str
    client_key: Path

    def url(self, path: str) -> str:
        return f"sftp://hospital-it@127.0.0.1:{self.port}/{path}"

    def options(self, *, host_key: str | None = None) -> str:
        return json.dumps(
            {
                "key_filename": str(self.client_key),
                "look_for_keys": False,
                "allow_agent": False,
                "host_key": host_key or self.host_key,
            }
        )


@pytest.fixture
def sftp_server(tmp_path: Path) -> Iterator[SftpServer]:
    root = tmp_path / "server-root"
    root.mkdir()
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp_path / "client_key"
    key_file.write_bytes(client_key.export_private_key())
    key_file.chmod(0o600)
    authorized = asyncssh.import_authorized_keys(client_key.export_public_key().decode())
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, object] = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)

        async def start() -> None:
            server = await asyncssh.listen(
                "127.0.0.1",
                0,
                server_host_keys=[host_key],
                authorized_client_keys=authorized,
                sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=str(root).encode()),
            )
            box["server"] = server
            box["port"] = server.sockets[0].getsockname()[1]
            started.set()

        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10), "SFTP server did not start"
    yield SftpServer(
        root, int(box["port"]), host_key.export_public_key().decode().strip(), key_file
    )
    # Close the clients fsspec keeps cached, then the server, then any task left behind.
    from fsspec.implementations.sftp import SFTPFileSystem

    for fs in list(SFTPFileSystem._cache.values()):
        fs.client.close()
    SFTPFileSystem.clear_instance_cache()

    async def stop() -> None:
        server = box["server"]
        server.close()  # type: ignore[attr-defined]
        await server.wait_closed()  # type: ignore[attr-defined]
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_write_once_read_list_and_refusals(sftp_server: SftpServer, monkeypatch) -> None:
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, sftp_server.options())
    store = open_storage(sftp_server.url("ws"))
    assert isinstance(store, FsspecStorage)
    assert store.write_once("rounds/0001/a.json", b"one")
    assert not store.write_once("rounds/0001/a.json", b"one")  # identical: a no-op
    with pytest.raises(WriteOnceError):
        store.write_once("rounds/0001/a.json", b"two")
    assert store.read_bytes("rounds/0001/a.json") == b"one"
    assert store.list("rounds/0001") == ["a.json"]
    assert store.list("nowhere") == []
    assert (sftp_server.root / "ws" / "rounds" / "0001" / "a.json").read_bytes() == b"one"
    with pytest.raises(StoreError, match="missing file"):
        store.read_bytes("rounds/0001/b.json")


def test_a_server_with_another_host_key_is_refused(sftp_server: SftpServer, monkeypatch) -> None:
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, sftp_server.options(host_key=impostor))
    with pytest.raises(StoreError, match="not the pinned one"):
        open_storage(sftp_server.url("ws-other"))


def test_a_whole_federation_with_the_workspace_on_sftp(
    sftp_server: SftpServer, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv(STORAGE_OPTIONS_ENV, sftp_server.options())
    fed = make_federation(
        tmp_path, "--rounds", "1", "--no-dp", workspace=sftp_server.url("heart"), approve=False
    )
    assert run("approve", "-s", fed.coordinator, "--all").exit_code == 0
    key_exchange(fed)
    full_round(fed)
    status = run("status", "-s", fed.coordinator, "--json").json()
    assert status["complete"]
    out = run("personalize", "-s", fed.site("va"), "--json").json()
    assert out["complete"] and out["metrics"]["n"] == 45
    # The shared folder really is on the server: masked updates and the result are there.
    assert (sftp_server.root / "heart" / "rounds" / "0001" / "result.json").exists()
    assert (
        sftp_server.root / "heart" / "rounds" / "0001" / "submissions" / "va.masked.bin"
    ).exists()
    # A model tampered with on the server is refused when read.
    model = sftp_server.root / "heart" / "rounds" / "0002" / "model.params.safetensors"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0x01
    model.write_bytes(bytes(data))
    out = run("personalize", "-s", fed.site("va"))
    assert out.exit_code == 3 and "does not match its signed hash" in out.stderr
