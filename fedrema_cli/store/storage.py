"""Where bytes live: one small interface, a local-folder backend and an fsspec backend.

Everything above this module speaks in relative, '/'-separated paths. Writes are atomic
(temporary file + rename) so a crash never leaves half a file, and shared artifacts are
write-once: writing the same bytes again is a no-op, different bytes are refused.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import posixpath
import secrets
import stat
from pathlib import Path
from typing import Protocol

from fedrema_cli.errors import StoreError, UnsafeFileError, WriteOnceError


class Storage(Protocol):
    """The operations the workspace and the state folders need, nothing more."""

    def read_bytes(self, path: str, *, max_bytes: int | None = None) -> bytes:
        """The file's bytes; UnsafeFileError for a symlink, a special file or > max_bytes."""
        ...

    def exists(self, path: str) -> bool: ...

    def write_once(self, path: str, data: bytes) -> bool:
        """Create ``path`` atomically; True if written, False if identical bytes were there."""
        ...

    def replace(self, path: str, data: bytes) -> None:
        """Atomically replace ``path`` (private state only; shared artifacts are write-once)."""
        ...

    def list(self, path: str) -> list[str]:
        """Names directly under a folder, sorted; empty if the folder does not exist."""
        ...

    def delete(self, path: str) -> None: ...

    def describe(self) -> str: ...


def _clean(path: str) -> str:
    norm = posixpath.normpath(path)
    if norm.startswith("/") or norm == ".." or norm.startswith("../"):
        raise StoreError(f"path escapes the store: {path!r}")
    return norm


class LocalStorage:
    """A folder on this machine. ``private=True`` makes new files readable by the owner only."""

    def __init__(self, root: str | os.PathLike[str], *, private: bool = False) -> None:
        self.root = Path(root)
        self.private = private

    def _path(self, path: str) -> Path:
        return self.root / _clean(path)

    def describe(self) -> str:
        return str(self.root)

    def read_bytes(self, path: str, *, max_bytes: int | None = None) -> bytes:
        p = self._path(path)
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise StoreError(f"missing file: {p}") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UnsafeFileError(f"{p} is a symbolic link; refusing to read it") from None
            raise StoreError(f"cannot read {p}: {e.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise UnsafeFileError(f"{p} is not a regular file; refusing to read it")
            if max_bytes is not None and info.st_size > max_bytes:
                raise UnsafeFileError(
                    f"{p} is {info.st_size} bytes, more than the {max_bytes} this federation's "
                    "files can hold; refusing to read it"
                )
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read() if max_bytes is None else f.read(max_bytes + 1)
            if max_bytes is not None and len(data) > max_bytes:  # it grew while we read
                raise UnsafeFileError(f"{p} grew past {max_bytes} bytes; refusing to read it")
            return data
        except FileNotFoundError:
            raise StoreError(f"missing file: {p}") from None
        except OSError as e:
            raise StoreError(f"cannot read {p}: {e.strerror}") from None
        finally:
            os.close(fd)

    def exists(self, path: str) -> bool:
        return self._path(path).exists()

    def _write_temp(self, p: Path, data: bytes) -> Path:
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            if self.private:
                p.parent.chmod(0o700)
            tmp = p.parent / f".{p.name}.{secrets.token_hex(6)}.tmp"
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if self.private else 0o644
            )
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return tmp
        except OSError as e:
            raise StoreError(f"cannot write {p}: {e.strerror}") from None

    @staticmethod
    def _sync_dir(d: Path) -> None:
        with contextlib.suppress(OSError):
            fd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def write_once(self, path: str, data: bytes) -> bool:
        p = self._path(path)
        if p.exists():
            return self._same_or_refuse(p, data)
        tmp = self._write_temp(p, data)
        try:
            os.link(tmp, p)  # fails if p appeared meanwhile: no silent overwrite
        except FileExistsError:
            return self._same_or_refuse(p, data)
        except OSError as e:
            raise StoreError(f"cannot write {p}: {e.strerror}") from None
        finally:
            tmp.unlink(missing_ok=True)
        self._sync_dir(p.parent)
        return True

    def _same_or_refuse(self, p: Path, data: bytes) -> bool:
        if p.read_bytes() == data:
            return False
        raise WriteOnceError(f"{p} already exists with different content; refusing to overwrite it")

    def replace(self, path: str, data: bytes) -> None:
        p = self._path(path)
        tmp = self._write_temp(p, data)
        try:
            os.replace(tmp, p)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write {p}: {e.strerror}") from None
        self._sync_dir(p.parent)

    def list(self, path: str) -> list[str]:
        p = self._path(path)
        if not p.is_dir():
            return []
        return sorted(c.name for c in p.iterdir() if not c.name.startswith("."))

    def delete(self, path: str) -> None:
        p = self._path(path)
        try:
            p.unlink(missing_ok=True)
        except OSError as e:
            raise StoreError(f"cannot remove {p}: {e.strerror}") from None


class FsspecStorage:
    """Any fsspec filesystem (SFTP, S3-compatible object stores, ...) holding the workspace.

    Object stores have no atomic rename; a write goes to a temporary name and is then moved,
    and readers only ever look for final names, so a torn upload is never read.
    """

    def __init__(self, url: str, **options: object) -> None:
        import fsspec

        self.url = url
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **options)
        except StoreError:
            raise
        except ImportError as e:
            raise StoreError(f"no storage backend for {url}: {e}") from None
        except Exception as e:  # noqa: BLE001 - network/auth errors of any backend
            raise StoreError(f"cannot open the workspace at {url}: {e}") from None
        self.root = root.rstrip("/")

    def describe(self) -> str:
        return self.url

    def _path(self, path: str) -> str:
        return f"{self.root}/{_clean(path)}"

    def read_bytes(self, path: str, *, max_bytes: int | None = None) -> bytes:
        p = self._path(path)
        try:
            with self.fs.open(p, "rb") as f:
                data = f.read() if max_bytes is None else f.read(max_bytes + 1)
            if max_bytes is not None and len(data) > max_bytes:
                raise UnsafeFileError(
                    f"{self.url}/{path} is larger than the {max_bytes} bytes this federation's "
                    "files can hold; refusing to read it"
                )
            return data
        except FileNotFoundError:
            raise StoreError(f"missing file: {self.url}/{path}") from None
        except OSError as e:
            raise StoreError(f"cannot read {self.url}/{path}: {e}") from None

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(self._path(path)))

    def write_once(self, path: str, data: bytes) -> bool:
        p = self._path(path)
        if self.fs.exists(p):
            if self.read_bytes(path) == data:
                return False
            raise WriteOnceError(
                f"{self.url}/{path} already exists with different content; refusing to overwrite it"
            )
        self._put(p, data)
        return True

    def replace(self, path: str, data: bytes) -> None:
        self._put(self._path(path), data)

    def _put(self, p: str, data: bytes) -> None:
        parent = posixpath.dirname(p)
        tmp = f"{parent}/.{posixpath.basename(p)}.{secrets.token_hex(6)}.tmp"
        try:
            self.fs.makedirs(parent, exist_ok=True)
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self.fs.mv(tmp, p)
        except OSError as e:
            with contextlib.suppress(Exception):
                self.fs.rm(tmp)
            raise StoreError(f"cannot write {p}: {e}") from None

    def list(self, path: str) -> list[str]:
        p = self._path(path)
        try:
            entries = self.fs.ls(p, detail=False)
        except FileNotFoundError:
            return []
        names = [posixpath.basename(str(e).rstrip("/")) for e in entries]
        return sorted(n for n in names if n and not n.startswith("."))

    def delete(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._path(path))


STORAGE_OPTIONS_ENV = "FEDREMA_STORAGE_OPTIONS"


def storage_options(location: str) -> dict[str, object]:
    """Connection options for a workspace URL, from ``FEDREMA_STORAGE_OPTIONS`` (JSON).

    For ``sftp://`` these are paramiko's connect options (``key_filename``, ``port``, ...)
    plus ``host_key``: the server's public key (``ssh-ed25519 AAAA...``), which is then
    pinned: a server presenting any other key is refused. Without it fsspec's default trusts
    the key seen first; fedrema's files are signed end to end either way, so a stranger
    answering at that address can withhold files but not forge or alter them.
    """
    raw = os.environ.get(STORAGE_OPTIONS_ENV)
    if not raw:
        return {}
    try:
        options = json.loads(raw)
        if not isinstance(options, dict):
            raise ValueError
    except ValueError:
        raise StoreError(f"{STORAGE_OPTIONS_ENV} must be a JSON object") from None
    if location.startswith("sftp://") and "host_key" in options:
        options["host_key_policy"] = _pinned_host_key(str(options.pop("host_key")))
    return options


def _pinned_host_key(openssh_public_key: str) -> object:
    """A paramiko host-key policy that accepts exactly one key and refuses every other one."""
    import base64

    import paramiko

    parts = openssh_public_key.split()
    if len(parts) < 2:
        raise StoreError("host_key must look like 'ssh-ed25519 AAAA...'")
    kind, blob = parts[0], parts[1]

    class PinnedHostKey(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: object, hostname: str, key: paramiko.PKey) -> None:
            seen = base64.b64encode(key.asbytes()).decode()
            if key.get_name() != kind or seen != blob:
                raise StoreError(
                    f"the SFTP server at {hostname} presented a host key that is "
                    "not the pinned one; refusing to connect"
                )

    return PinnedHostKey()


def lasting_location(location: str) -> str:
    """The workspace location to record at init: a local folder as an absolute path, so later
    commands find it from any working directory (cron, systemd, another shell); URLs as given."""
    if "://" in location and not location.startswith("file://"):
        return location
    return str(Path(location.removeprefix("file://")).resolve())


def open_storage(location: str, *, private: bool = False) -> Storage:
    """A local folder for plain paths, fsspec for URLs such as ``sftp://`` or ``s3://``."""
    if "://" in location and not location.startswith("file://"):
        if private:
            raise StoreError("private state must live in a local folder, not at a URL")
        return FsspecStorage(location, **storage_options(location))
    return LocalStorage(location.removeprefix("file://"), private=private)
