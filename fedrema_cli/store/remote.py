"""Workspaces on a server the consortium already runs: SFTP (paramiko) and S3 (s3fs).

Both speak the same `Storage` protocol as a local folder, with the same guarantees:
atomic, write-once files and bounded, link-refusing reads. What is particular to a network:

- Transient failures (a dropped connection, a refused connect while a server restarts, a
  timeout, an S3 503) are retried a few times with jittered exponential backoff (`Retry`),
  reconnecting first; anything else (access denied, a missing bucket, an unknown host key)
  fails at once. The libraries' own retry loops are turned off so attempts do not multiply.
- Every failure is one line naming the location and what to do, never a library traceback.
- SFTP trusts a server only through a pinned key or ``known_hosts`` (never the key seen first)
  and honours ``~/.ssh/config`` aliases; an S3 write-once file is one conditional PUT
  (``If-None-Match: *``), which the server refuses when the key exists.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import os
import posixpath
import random
import secrets
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

from fedrema_cli.errors import FedremaError, StoreError, UnsafeFileError
from fedrema_cli.store.storage import (
    STORAGE_OPTIONS_ENV,
    BaseStorage,
    _check_regular,
    _Oversize,
    _read_limited,
    _split,
    in_the_way,
    one_line,
)

if TYPE_CHECKING:
    import paramiko

T = TypeVar("T")

_jitter = random.SystemRandom()  # backoff timing only; nothing secret comes from it


@dataclass(frozen=True)
class Retry:
    """Bounded, jittered exponential backoff: attempt k waits between d/2 and d, where
    d = first_delay * 2**(k-1), at most max_delay. Four attempts wait about 1.3 s in all."""

    attempts: int = 4
    first_delay: float = 0.25
    max_delay: float = 4.0

    @classmethod
    def from_option(cls, value: object) -> Retry:
        if value is None:
            return cls()
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 20:
            raise StoreError(f"{STORAGE_OPTIONS_ENV}: retries must be a whole number 1-20")
        return cls(attempts=value)

    def delay(self, attempt: int) -> float:
        d = min(self.max_delay, self.first_delay * 2 ** (attempt - 1))
        return d / 2 + _jitter.uniform(0, d / 2)


_TRANSIENT_ERRNOS = {
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.EPIPE,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.EAGAIN,
    errno.EBUSY,  # s3fs: 503 SlowDown / ServiceUnavailable, 409 conflicting conditional write
    errno.EREMOTEIO,  # s3fs: 500 InternalError
}


class RemoteStorage(BaseStorage):
    """A store across a network: retries transient failures, explains the others."""

    url: str
    retry: Retry
    #: exception families a backend call can raise (programming errors are not caught)
    _errors: tuple[type[BaseException], ...] = (OSError, EOFError)

    def __init__(
        self,
        url: str,
        options: dict[str, Any] | None = None,
        *,
        retry: Retry | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.url = url
        self.retry = retry or Retry()
        self.max_bytes = max_bytes
        self._open(dict(options or {}))

    def _open(self, options: dict[str, Any]) -> None:
        """Set up the backend from the connection options (and connect, if it does)."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.url

    def _where(self, rel: str) -> str:
        return self.url if rel == "." else f"{self.url.rstrip('/')}/{rel}"

    def _call(self, what: str, rel: str, op: Callable[[], T]) -> T:
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return op()
            except FedremaError:
                raise
            except self._errors as exc:
                if attempt == self.retry.attempts or not self._transient(exc):
                    raise self._explain_remote(exc, what, rel, attempt) from None
                self._recover()
                time.sleep(self.retry.delay(attempt))
        raise AssertionError("unreachable")  # the loop returns or raises

    def _transient(self, exc: BaseException) -> bool:
        if isinstance(exc, (FileNotFoundError, PermissionError, FileExistsError)):
            return False
        if isinstance(exc, (ConnectionError, TimeoutError, EOFError)):
            return True
        if isinstance(exc, OSError):
            if exc.errno is None:
                return "socket is closed" in str(exc).lower()
            return exc.errno in _TRANSIENT_ERRNOS
        return False

    def _recover(self) -> None:
        """Make the next attempt start afresh (reconnect, where the backend needs it)."""

    def _explain_remote(
        self, exc: BaseException, what: str, rel: str, attempts: int
    ) -> FedremaError:
        if self._transient(exc):
            return StoreError(
                f"cannot {what} {self._where(rel)}: {one_line(exc)} "
                f"(gave up after {attempts} attempt{'s' if attempts > 1 else ''})",
                hint="check the network and that the server is up, then run this again",
            )
        return self._explain(exc, what, rel)


# -- SFTP -----------------------------------------------------------------------------------


def _fingerprint(key: paramiko.PKey) -> str:
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def _refuse_unknown_hosts(source: str) -> paramiko.MissingHostKeyPolicy:
    """paramiko's RejectPolicy, with a message that says what to do."""
    import paramiko

    class RefuseUnknownHost(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: object, hostname: str, key: paramiko.PKey) -> None:
            raise StoreError(
                f"the SFTP server {hostname} is not in {source}; refusing to trust a host key "
                "seen for the first time",
                hint=(
                    f"ask the server's administrator whether its key is {_fingerprint(key)}; "
                    f"if so, add it to known_hosts (connect once with ssh) or pin it in "
                    f'{STORAGE_OPTIONS_ENV}: "host_key": "{key.get_name()} {key.get_base64()}"'
                ),
            )

    return RefuseUnknownHost()


@dataclass(frozen=True)
class SshTarget:
    """Where and how to connect: the URL, then FEDREMA_STORAGE_OPTIONS, then ~/.ssh/config."""

    host: str
    port: int
    username: str | None
    connect: dict[str, Any]  # the rest of paramiko's connect options
    pin: str | None  # "ssh-ed25519 AAAA..." when the host key is pinned
    known_hosts: tuple[str, ...]

    @property
    def key_name(self) -> str:
        """The name known_hosts files use for this server."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    @classmethod
    def resolve(cls, url: str, options: dict[str, Any]) -> SshTarget:
        import paramiko

        u = urlsplit(url)
        if not u.hostname:
            raise StoreError(f"{url}: an sftp:// location names a server: sftp://HOST/PATH")
        opts = dict(options)
        config = paramiko.SSHConfig()
        config_file = Path("~/.ssh/config").expanduser()
        if config_file.is_file():
            try:
                config = paramiko.SSHConfig.from_path(str(config_file))
            except Exception as exc:  # noqa: BLE001 - any parse error: one line, not a traceback
                raise StoreError(f"cannot read {config_file}: {one_line(exc)}") from None
        alias = config.lookup(u.hostname)
        pin = opts.pop("host_key", None)
        known = opts.pop("known_hosts", None) or alias.get("userknownhostsfile", "").split()
        if isinstance(known, str):
            known = [known]
        if not known:
            known = ["~/.ssh/known_hosts", "/etc/ssh/ssh_known_hosts"]
        port = u.port or opts.pop("port", None) or int(alias.get("port", 22))
        opts.pop("port", None)
        username = unquote(u.username) if u.username else opts.pop("username", None)
        opts.pop("username", None)
        if "key_filename" not in opts and "identityfile" in alias:
            found = [str(Path(p).expanduser()) for p in alias["identityfile"]]
            found = [p for p in found if Path(p).is_file()]
            if found:
                opts["key_filename"] = found
        for name, seconds in (("timeout", 15), ("banner_timeout", 15), ("auth_timeout", 15)):
            opts.setdefault(name, seconds)
        return cls(
            host=alias.get("hostname", u.hostname),
            port=int(port),
            username=username or alias.get("user"),
            connect=opts,
            pin=str(pin) if pin else None,
            known_hosts=tuple(str(Path(k).expanduser()) for k in known),
        )


class SftpStorage(RemoteStorage):
    """A folder on an SFTP server. The URL's path is absolute on the server.

    Write-once is a plain SFTP rename, which by the protocol never replaces a file (OpenSSH
    implements it with link(2)); ``replace`` uses posix-rename. Each path is checked with
    lstat below the root, so a link or special file planted on the server is refused unread;
    folders found real are remembered for the rest of the command (SFTP has no openat, so
    this is a check, not a lock). A write that fails removes its temporary file and the
    folders it created, now or once the connection is back.
    """

    io_timeout: float = 60.0

    def _open(self, options: dict[str, Any]) -> None:
        import paramiko

        self._errors = (OSError, EOFError, paramiko.SSHException)
        self.target = SshTarget.resolve(self.url, options)
        self.root = posixpath.normpath(urlsplit(self.url).path or "/")
        self._client: paramiko.SSHClient | None = None
        self._ftp: paramiko.SFTPClient | None = None
        self._dirs: set[str] = set()  # folders seen to be real folders, not links
        self._litter: list[tuple[str, str]] = []  # ("file" | "dir", path) a failed write left
        self._call("connect to", ".", self._sftp)

    # -- the connection -------------------------------------------------------------------

    def _host_keys(self, client: paramiko.SSHClient) -> str:
        """Load what this server may present; return where that came from, for messages."""
        import paramiko

        t = self.target
        if t.pin:
            try:
                entry = paramiko.hostkeys.HostKeyEntry.from_line(f"{t.key_name} {t.pin}")
            except Exception:  # noqa: BLE001 - any malformed key: one line
                entry = None
            if entry is None or entry.key is None:
                raise StoreError(
                    f"{STORAGE_OPTIONS_ENV}: host_key must look like 'ssh-ed25519 AAAA...'"
                )
            client.get_host_keys().add(t.key_name, entry.key.get_name(), entry.key)
            return "the pinned host_key"
        present = [k for k in t.known_hosts if Path(k).is_file()]
        for k in present:
            client.load_system_host_keys(k)
        return ", ".join(present) or f"known_hosts ({', '.join(t.known_hosts)} do not exist)"

    def _sftp(self) -> paramiko.SFTPClient:
        if self._ftp is not None:
            return self._ftp
        import paramiko

        t = self.target
        client = paramiko.SSHClient()
        try:
            source = self._host_keys(client)
            client.set_missing_host_key_policy(_refuse_unknown_hosts(source))
            try:
                client.connect(t.host, port=t.port, username=t.username, **t.connect)
            except TypeError as exc:  # an option paramiko does not take
                raise StoreError(f"{STORAGE_OPTIONS_ENV}: {one_line(exc)}") from None
            ftp = client.open_sftp()
            ftp.get_channel().settimeout(self.io_timeout)
        except BaseException:
            client.close()
            raise
        self._client, self._ftp = client, ftp
        self._sweep()
        return ftp

    def _recover(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
        self._client = self._ftp = None

    def close(self) -> None:
        """Close the connection (a command's process exit does the same)."""
        self._recover()

    def _transient(self, exc: BaseException) -> bool:
        import paramiko

        if isinstance(exc, (paramiko.AuthenticationException, paramiko.BadHostKeyException)):
            return False
        if isinstance(exc, (paramiko.ssh_exception.NoValidConnectionsError, socket.timeout)):
            return True
        if isinstance(exc, paramiko.SSHException):
            return True  # a dropped session, a banner or handshake cut short
        return super()._transient(exc)

    def _explain(self, exc: BaseException, what: str, rel: str) -> FedremaError:
        import paramiko

        t = self.target
        server = f"{t.host}:{t.port}"
        if isinstance(exc, paramiko.BadHostKeyException):
            if t.pin:
                return StoreError(
                    f"the SFTP server at {server} presented a host key that is not the pinned "
                    f"one ({_fingerprint(exc.key)}); refusing to connect"
                )
            return StoreError(
                f"the SFTP server at {server} presented a host key ({_fingerprint(exc.key)}) "
                "that differs from the one in known_hosts; refusing to connect",
                hint="someone may be in between; if the server's administrator confirms a new "
                f"key, replace the old one: ssh-keygen -R '{t.key_name}'",
            )
        if isinstance(exc, paramiko.AuthenticationException):
            who = t.username or "this user"
            return StoreError(
                f"the SFTP server at {server} did not accept the login of {who}: {one_line(exc)}",
                hint="check key_filename (or IdentityFile in ~/.ssh/config) and that its public "
                "key is in the server's authorized_keys",
            )
        return super()._explain(exc, what, rel)

    # -- paths ----------------------------------------------------------------------------

    def _join(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _folder(self, parts: list[str], *, create: bool, made: list[str] | None = None) -> str:
        """The server path of root/parts, each folder below the root checked with lstat."""
        ftp = self._sftp()
        if create and self.root not in self._dirs:
            self._make_root(ftp, made)
        path = self.root
        for i, name in enumerate(parts):
            path = posixpath.join(path, name)
            if path in self._dirs:
                continue
            try:
                mode = ftp.lstat(path).st_mode or 0
            except FileNotFoundError:
                if not create:
                    raise
                self._mkdir(ftp, path, made)
                continue
            if not stat.S_ISDIR(mode):
                where = self._where("/".join(parts[: i + 1]))
                raise in_the_way(where, link=stat.S_ISLNK(mode), writing=create)
            self._dirs.add(path)
        return path

    def _make_root(self, ftp: paramiko.SFTPClient, made: list[str] | None) -> None:
        """Create the workspace folder (and its parents) if needed. The root and what is
        above it are the operator's choice, so links there are followed."""
        path = "/"
        for name in self.root.strip("/").split("/"):
            if not name:
                continue
            path = posixpath.join(path, name)
            try:
                if not stat.S_ISDIR(ftp.stat(path).st_mode or 0):
                    raise StoreError(f"cannot use sftp://{self.target.host}{path}: not a folder")
            except FileNotFoundError:
                self._mkdir(ftp, path, made)
        self._dirs.add(self.root)

    def _mkdir(self, ftp: paramiko.SFTPClient, path: str, made: list[str] | None) -> None:
        try:
            ftp.mkdir(path)
        except OSError:
            # another party may have made it meanwhile; anything else fails the lstat
            if not stat.S_ISDIR(ftp.lstat(path).st_mode or 0):
                raise
            return
        self._dirs.add(path)
        if made is not None:
            made.append(path)

    def _sweep(self) -> None:
        """Remove what failed writes left (temporary files, then the folders they made)."""
        ftp = self._ftp
        while ftp is not None and self._litter:
            kind, path = self._litter[0]
            try:
                ftp.remove(path) if kind == "file" else ftp.rmdir(path)
            except Exception as exc:  # noqa: BLE001 - best effort; keep it if the link is down
                if self._transient(exc):
                    return
            self._litter.pop(0)
            self._dirs.discard(path)

    # -- the primitives -------------------------------------------------------------------

    def _read(self, rel: str, cap: int | None) -> bytes:
        parents, name = _split(rel)
        path = posixpath.join(self._folder(parents, create=False), name)
        ftp = self._sftp()
        st = ftp.lstat(path)
        size = st.st_size or 0
        _check_regular(st.st_mode or 0, size, self._where(rel), cap)
        with ftp.open(path, "rb") as f:
            if size > 32768:  # pipeline the reads instead of one round trip per 32 KiB
                f.prefetch(size if cap is None else min(size, cap + 1))
            return _read_limited(f.read, size, cap, self._where(rel))

    def _exists(self, rel: str) -> bool:
        parents, name = _split(rel)
        try:
            path = posixpath.join(self._folder(parents, create=False), name)
            self._sftp().lstat(path)
        except (FileNotFoundError, UnsafeFileError):
            return False
        return True

    def _put(self, rel: str, data: bytes, commit: Callable[[str, str], bool]) -> bool:
        parents, name = _split(rel)
        made: list[str] = []
        tmp: str | None = None
        try:
            folder = self._folder(parents, create=True, made=made)
            tmp = posixpath.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
            ftp = self._sftp()
            with ftp.open(tmp, "wx") as f:  # exclusive: never someone else's file
                # paramiko drops the status of pipelined writes (a full disk goes unseen), so
                # only a multi-request upload is pipelined, and its size is checked after
                f.set_pipelined(len(data) > f.MAX_REQUEST_SIZE)
                f.write(data)
            if len(data) > f.MAX_REQUEST_SIZE and (kept := ftp.stat(tmp).st_size) != len(data):
                raise OSError(
                    errno.EIO, f"the server kept {kept} of {len(data)} bytes (is its disk full?)"
                )
            done = commit(tmp, posixpath.join(folder, name))
            tmp = None
            return done
        except BaseException as exc:
            self._litter += [("file", tmp)] if tmp else []
            self._litter += [("dir", d) for d in reversed(made)]
            if not self._transient(exc):  # else the link is likely down: sweep on reconnect
                self._sweep()
            raise

    def _create(self, rel: str, data: bytes) -> bool:
        def rename(tmp: str, target: str) -> bool:
            ftp = self._sftp()
            try:
                ftp.rename(tmp, target)  # SFTP rename never replaces an existing file
            except OSError:
                with contextlib.suppress(FileNotFoundError):
                    ftp.lstat(target)
                    ftp.remove(tmp)
                    return False  # someone was first; the caller compares the bytes
                raise
            return True

        return self._put(rel, data, rename)

    def _replace(self, rel: str, data: bytes) -> None:
        def posix_rename(tmp: str, target: str) -> bool:
            self._sftp().posix_rename(tmp, target)
            return True

        self._put(rel, data, posix_rename)

    def _list(self, rel: str) -> list[str]:
        try:
            folder = self._folder([] if rel == "." else rel.split("/"), create=False)
            return self._sftp().listdir(folder)
        except (FileNotFoundError, UnsafeFileError):
            return []

    def _delete(self, rel: str) -> None:
        parents, name = _split(rel)
        with contextlib.suppress(FileNotFoundError, UnsafeFileError):
            self._sftp().remove(posixpath.join(self._folder(parents, create=False), name))


# -- S3 -------------------------------------------------------------------------------------


def _s3_code(exc: BaseException) -> str | None:
    """The S3 error code behind an exception s3fs translated (NoSuchBucket, AccessDenied...)."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            return response.get("Error", {}).get("Code")
        seen = seen.__cause__
    return None


_S3_TRANSIENT_CODES = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "ConditionalRequestConflict",
    "500",
    "502",
    "503",
    "504",
}
_S3_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}


class S3Storage(RemoteStorage):
    """A prefix in an S3-compatible bucket (AWS, MinIO, Ceph, ...), through s3fs.

    PUTs are atomic, so files are written in place: ``write_once`` is one conditional PUT
    (``If-None-Match: *``): the server, not a prior check, refuses a key that exists. Reads
    are ranged GETs of at most cap + 1 bytes; ``exists`` is one HEAD. Listings are never
    cached (other parties add files all the time).
    """

    def _open(self, options: dict[str, Any]) -> None:
        url = self.url
        try:
            import botocore.exceptions
            import s3fs
        except ImportError:
            raise StoreError(
                f"{url}: s3:// workspaces need fedrema's s3 extra",
                hint="pip install 'fedrema[s3]'",
            ) from None
        self._errors = (
            OSError,
            EOFError,
            botocore.exceptions.BotoCoreError,
            botocore.exceptions.ClientError,
        )
        u = urlsplit(url)
        if not u.netloc:
            raise StoreError(f"{url}: an s3:// location names a bucket: s3://BUCKET/FOLDER")
        self.bucket = u.netloc
        prefix = u.path.strip("/")
        self._base = f"{self.bucket}/{prefix}" if prefix else self.bucket
        opts = options
        config = {
            "retries": {"total_max_attempts": 1},  # one retry policy: ours
            "connect_timeout": 10,
            "read_timeout": 60,
            **dict(opts.pop("config_kwargs", None) or {}),
        }
        try:
            # s3fs reuses one client per set of options within a process (building one takes
            # a few hundred ms); listings are never cached, so reuse is never stale
            self.fs = s3fs.S3FileSystem(use_listings_cache=False, config_kwargs=config, **opts)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"{STORAGE_OPTIONS_ENV} for {url}: {one_line(exc)}") from None
        self.fs.retries = 1  # s3fs's own loop would retry 5 more times inside each attempt
        self.endpoint = opts.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"

    def _key(self, rel: str) -> str:
        return self._base if rel == "." else f"{self._base}/{rel}"

    def _transient(self, exc: BaseException) -> bool:
        import botocore.exceptions as bx

        if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
            return False
        if isinstance(exc, bx.ConnectionError | bx.HTTPClientError):
            return True  # endpoint unreachable, connection closed, connect or read timeout
        code = _s3_code(exc)
        if code is not None:
            return code in _S3_TRANSIENT_CODES
        return super()._transient(exc)

    def _explain(self, exc: BaseException, what: str, rel: str) -> FedremaError:
        import botocore.exceptions as bx

        code = _s3_code(exc)
        if code == "NoSuchBucket":
            return StoreError(
                f"the bucket {self.bucket!r} does not exist at {self.endpoint}",
                hint="create it first (the consortium's storage administrator), or fix the "
                "s3:// location",
            )
        if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
            return StoreError(
                f"no S3 credentials to {what} {self._where(rel)}",
                hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or "
                f'"key" and "secret" in {STORAGE_OPTIONS_ENV}',
            )
        if code in _S3_BAD_CREDENTIALS:
            return StoreError(
                f"{self.endpoint} refused the S3 credentials ({code})",
                hint="check the access key and secret (and the clock, for signatures)",
            )
        return super()._explain(exc, what, rel)

    def _read(self, rel: str, cap: int | None) -> bytes:
        key = self._key(rel)
        try:
            if cap is None:
                data = self.fs.cat_file(key)
            else:
                data = self.fs.cat_file(key, start=0, end=cap + 1)
        except OSError as exc:
            if _s3_code(exc) == "InvalidRange":
                return b""  # an empty object has no byte 0 to range over
            raise
        if cap is not None and len(data) > cap:
            raise _Oversize(
                f"{self._where(rel)} holds more than the {cap:,} bytes allowed; refusing to read it"
            )
        return data

    def _exists(self, rel: str) -> bool:
        bucket, _, key = self._key(rel).partition("/")
        try:
            self.fs.call_s3("head_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            return False
        return True

    def _pipe(self, rel: str, data: bytes, **mode: str) -> None:
        # one PUT whatever the size (up to S3's 5 GB): a multipart upload carries no condition
        self.fs.pipe_file(self._key(rel), data, chunksize=max(len(data), 5 * 2**20), **mode)

    def _create(self, rel: str, data: bytes) -> bool:
        try:
            self._pipe(rel, data, mode="create")  # If-None-Match: *
        except FileExistsError:
            return False
        return True

    def _replace(self, rel: str, data: bytes) -> None:
        self._pipe(rel, data)

    def _list(self, rel: str) -> list[str]:
        bucket, _, key = self._key(rel).partition("/")
        prefix = f"{key}/" if key else ""
        names: list[str] = []
        page: dict[str, str] = {}
        while True:  # objects and sub-folders directly under the prefix, page by page
            out = self.fs.call_s3(
                "list_objects_v2", Bucket=bucket, Prefix=prefix, Delimiter="/", **page
            )
            names += [c["Prefix"][len(prefix) :].rstrip("/") for c in out.get("CommonPrefixes", [])]
            names += [o["Key"][len(prefix) :] for o in out.get("Contents", [])]
            if not out.get("IsTruncated"):
                return names
            page = {"ContinuationToken": out["NextContinuationToken"]}

    def _delete(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._key(rel))
