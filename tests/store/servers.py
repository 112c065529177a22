"""Real servers on loopback for the store tests: SFTP (asyncssh), S3 (moto), and a TCP proxy
that drops connections on purpose, to show what the store retries and what it does not."""

from __future__ import annotations

import asyncio
import contextlib
import json
import selectors
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

# -- SFTP --------------------------------------------------------------------------------


@dataclass
class SftpServer:
    root: Path
    port: int
    host_key: str  # "ssh-ed25519 AAAA..."
    client_key: Path
    #: set to make the server fail file writes with "no space left", like a full disk
    disk_full: threading.Event = field(default_factory=threading.Event)
    host: str = "127.0.0.1"

    def url(self, path: str, *, port: int | None = None) -> str:
        return f"sftp://hospital-it@{self.host}:{port or self.port}/{path}"

    def options(self, *, host_key: str | None = None, **extra: object) -> dict[str, object]:
        """paramiko options pinning this server's key (or another one)."""
        return {
            "key_filename": str(self.client_key),
            "look_for_keys": False,
            "allow_agent": False,
            "host_key": host_key or self.host_key,
            **extra,
        }

    def options_json(self, **kw: object) -> str:
        return json.dumps(self.options(**kw))

    def known_hosts_line(self, port: int | None = None) -> str:
        return f"[{self.host}]:{port or self.port} {self.host_key}\n"


class _Sftp(asyncssh.SFTPServer):
    """asyncssh's SFTP server, chrooted to the test's folder, that can fail writes."""

    def __init__(self, chan: asyncssh.SSHServerChannel, root: Path, disk_full: threading.Event):
        super().__init__(chan, chroot=str(root).encode())
        self._disk_full = disk_full

    def write(self, file_obj: object, offset: int, data: bytes) -> int:  # type: ignore[override]
        if self._disk_full.is_set():
            raise asyncssh.SFTPFailure("No space left on device")
        return super().write(file_obj, offset, data)  # type: ignore[return-value]


@contextlib.contextmanager
def sftp_server(tmp_path: Path, host: str = "127.0.0.1"):  # type: ignore[no-untyped-def]
    root = tmp_path / "server-root"
    root.mkdir()
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp_path / "client_key"
    key_file.write_bytes(client_key.export_private_key())
    key_file.chmod(0o600)
    authorized = asyncssh.import_authorized_keys(client_key.export_public_key().decode())
    disk_full = threading.Event()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, object] = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)

        async def start() -> None:
            server = await asyncssh.listen(
                host,
                0,
                server_host_keys=[host_key],
                authorized_client_keys=authorized,
                sftp_factory=lambda chan: _Sftp(chan, root, disk_full),
            )
            box["server"] = server
            box["port"] = server.sockets[0].getsockname()[1]
            started.set()

        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10), "SFTP server did not start"
    try:
        yield SftpServer(
            root,
            int(box["port"]),  # type: ignore[call-overload]
            host_key.export_public_key().decode().strip(),
            key_file,
            disk_full,
            host,
        )
    finally:

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


# -- S3 ----------------------------------------------------------------------------------


@dataclass
class S3Server:
    endpoint: str
    key: str = "fedrema-test-key"
    secret: str = "fedrema-test-secret"

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            region_name="us-east-1",
        )

    def options(self, *, endpoint: str | None = None, **extra: object) -> dict[str, object]:
        return {
            "endpoint_url": endpoint or self.endpoint,
            "key": self.key,
            "secret": self.secret,
            **extra,
        }

    def require_auth(self, on: bool) -> None:
        """Make moto check every request against its IAM users and policies (or stop)."""
        import urllib.request

        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=b"0" if on else b"inf",
            headers={"Content-Type": "text/plain"},  # a form body would hide the number
        )
        urllib.request.urlopen(request, timeout=10).close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start listening on {port}")


@contextlib.contextmanager
def s3_server():  # type: ignore[no-untyped-def]
    """moto's S3 server (the real HTTP protocol) in a process of its own, on loopback."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc, "moto's S3 server")
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# -- a proxy that drops connections ------------------------------------------------------


class FlakyProxy:
    """Forwards 127.0.0.1:port to a server, but can drop connections on purpose.

    ``drop_next`` connections are accepted and closed at once (a server restarting, a load
    balancer resetting); ``cut()`` closes every open connection (a link that goes down
    mid-session). ``connections`` and ``requests`` (HTTP request lines seen) count attempts,
    ``downloaded`` the bytes the server sent.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.drop_next = 0
        self.connections = 0
        self.requests = 0
        self.downloaded = 0  # bytes from the server to the client
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                drop = self.drop_next > 0
                self.drop_next -= 1 if drop else 0
            if drop:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                client.close()  # SO_LINGER 0: a reset, as from a server that went away
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._open += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(0.1):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = src.recv(65536)
                    if not data:
                        return
                    with self._lock:
                        if src is a:
                            self.requests += data.count(b" HTTP/1.1\r\n")
                        else:
                            self.downloaded += len(data)
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        with self._lock:
            conns, self._open = self._open, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self._listener.close()
        self._thread.join(5)


# -- servers in a process of their own (benchmarks: no GIL shared with the client) ----------


@contextlib.contextmanager
def sftp_server_process(  # type: ignore[no-untyped-def]
    tmp_path: Path, host: str = "127.0.0.1", *, prefix: tuple[str, ...] = ()
):
    """The SFTP server above, in a child process; yields its SftpServer description.

    ``prefix`` runs it through another command, e.g. ``ip netns exec NS`` (another host)."""
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", "tests.store.servers", "sftp", str(tmp_path), host],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the SFTP server process exited with code {proc.wait(10)}")
        info = json.loads(line)
        root, port, key = Path(info["root"]), info["port"], info["host_key"]
        yield SftpServer(root, port, key, Path(info["key"]), host=host)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # the child stops when its stdin closes
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _serve_sftp_until_stdin_closes(tmp_path: Path, host: str) -> None:
    tmp_path.mkdir(parents=True, exist_ok=True)
    with sftp_server(tmp_path, host) as s:
        info = {"root": str(s.root), "port": s.port, "host_key": s.host_key}
        print(json.dumps({**info, "key": str(s.client_key)}), flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    if sys.argv[1:2] != ["sftp"] or len(sys.argv) not in (3, 4):
        raise SystemExit("usage: python -m tests.store.servers sftp FOLDER [ADDRESS]")
    _serve_sftp_until_stdin_closes(Path(sys.argv[2]), (sys.argv[3:] or ["127.0.0.1"])[0])
