"""Where bytes live: one small interface over a local folder, an SFTP server or an S3 bucket.

Everything above this module speaks in relative, '/'-separated paths. Writes are atomic
(temporary file + rename, or one object PUT) so a crash never leaves half a file, and shared
artifacts are write-once: writing the same bytes again is a no-op, different bytes are
refused, and the refusal is the store's own (a hard link, an SFTP rename that never
overwrites, an S3 conditional PUT), not a check followed by a write.

Reads assume someone hostile may write to the store: a symbolic link at any level below the
root, a special file (FIFO, device, a folder where a file should be), a file where a folder
should be, or a file larger than the reader's cap is refused unread with `UnsafeFileError`,
and no read ever holds more than cap + 1 bytes, whatever the file claims its size is.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import posixpath
import re
import secrets
import signal
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Protocol, TypeVar

from fedrema_cli.errors import FedremaError, StoreError, UnsafeFileError, WriteOnceError

T = TypeVar("T")


class Storage(Protocol):
    """The operations the workspace and the state folders need, nothing more."""

    def read_bytes(self, path: str, *, max_bytes: int | None = None) -> bytes:
        """The file's bytes. UnsafeFileError for a link, a special file, or more than
        ``max_bytes`` (None: the store's own cap, if any); StoreError if it is missing."""
        ...

    def exists(self, path: str) -> bool:
        """Something is at this name (reading it may still be refused). Cheap: no read, no
        link followed; False below a link or a file standing where a folder should be."""
        ...

    def write_once(self, path: str, data: bytes) -> bool:
        """Create ``path`` atomically; True if written, False if identical bytes were there."""
        ...

    def replace(self, path: str, data: bytes) -> None:
        """Atomically replace ``path`` (private state only; shared artifacts are write-once)."""
        ...

    def list(self, path: str) -> list[str]:
        """Names directly under a folder, sorted; empty if it is not a real folder."""
        ...

    def delete(self, path: str) -> None: ...

    def describe(self) -> str: ...


def _clean(path: str) -> str:
    norm = posixpath.normpath(path)
    if norm.startswith("/") or norm == ".." or norm.startswith("../"):
        raise StoreError(f"path escapes the store: {path!r}")
    return norm


def _split(rel: str) -> tuple[list[str], str]:
    """Folders below the root, and the last name."""
    *parents, name = rel.split("/")
    return parents, name


def _tighter(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


class _Oversize(UnsafeFileError):
    """A file above the reader's cap; write-once counts it as different bytes."""


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _check_regular(mode: int, size: int, where: str, cap: int | None) -> None:
    """Refuse, unread, anything but a regular file within the cap (lstat or fstat values)."""
    if not stat.S_ISREG(mode):
        raise UnsafeFileError(f"{where} is {_kind(mode)}, not a regular file; refusing to read it")
    if cap is not None and size > cap:
        raise _Oversize(
            f"{where} holds {size:,} bytes, more than the {cap:,} allowed; refusing to read it"
        )


def in_the_way(where: str, *, link: bool, writing: bool) -> FedremaError:
    """Why a path cannot be walked through: a link, or a file where a folder should be."""
    if link:
        return UnsafeFileError(f"{where} is a symbolic link; links in the store are not followed")
    if writing:
        return StoreError(f"cannot write below {where}: it is a file, not a folder")
    return UnsafeFileError(f"{where} is a file where a folder should be; refusing to read it")


_CHUNK = 1 << 20


def _read_limited(
    read: Callable[[int], bytes], size_hint: int, cap: int | None, where: str
) -> bytes:
    """Read to EOF but never more than cap + 1 bytes, so a file that grows or lies about its
    size cannot take more memory than the cap."""
    limit = None if cap is None else cap + 1
    chunks: list[bytes] = []
    total, want = 0, max(size_hint, 0) + 1
    while limit is None or total < limit:
        chunk = read(want if limit is None else min(want, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        want = _CHUNK
    if cap is not None and total > cap:
        raise _Oversize(f"{where} holds more than the {cap:,} bytes allowed; refusing to read it")
    return b"".join(chunks)


class BaseStorage:
    """What every backend shares: path checks, size caps, write-once, one error format.

    A backend supplies the primitives (``_read`` ... ``_delete``) over clean relative paths
    and may raise OSError from them; ``_call`` turns that into one clear line (and, for
    network stores, retries transient failures).
    """

    max_bytes: int | None = None

    # -- the Storage protocol, once for every backend ---------------------------------------

    def read_bytes(self, path: str, *, max_bytes: int | None = None) -> bytes:
        rel = _clean(path)
        cap = _tighter(max_bytes, self.max_bytes)
        return self._call("read", rel, lambda: self._read(rel, cap))

    def exists(self, path: str) -> bool:
        rel = _clean(path)
        return self._call("look up", rel, lambda: self._exists(rel))

    def write_once(self, path: str, data: bytes) -> bool:
        rel = _clean(path)

        def once() -> bool:
            if self._create(rel, data):
                return True
            try:
                same = self._read(rel, len(data)) == data
            except _Oversize:
                same = False
            if same:
                return False
            raise WriteOnceError(
                f"{self._where(rel)} already exists with different content; "
                "refusing to overwrite it"
            )

        return self._call("write", rel, once)

    def replace(self, path: str, data: bytes) -> None:
        rel = _clean(path)
        self._call("write", rel, lambda: self._replace(rel, data))

    def list(self, path: str) -> list[str]:
        rel = _clean(path)
        names = self._call("list", rel, lambda: self._list(rel))
        return sorted(n for n in names if n and not n.startswith("."))

    def delete(self, path: str) -> None:
        rel = _clean(path)
        self._call("delete", rel, lambda: self._delete(rel))

    def describe(self) -> str:
        raise NotImplementedError

    # -- what a backend provides ----------------------------------------------------------

    def _where(self, rel: str) -> str:
        raise NotImplementedError

    def _read(self, rel: str, cap: int | None) -> bytes:
        raise NotImplementedError

    def _exists(self, rel: str) -> bool:
        raise NotImplementedError

    def _create(self, rel: str, data: bytes) -> bool:
        """Create atomically; False (nothing written) when something is already there."""
        raise NotImplementedError

    def _replace(self, rel: str, data: bytes) -> None:
        raise NotImplementedError

    def _list(self, rel: str) -> list[str]:
        raise NotImplementedError

    def _delete(self, rel: str) -> None:
        raise NotImplementedError

    def _call(self, what: str, rel: str, op: Callable[[], T]) -> T:
        try:
            return op()
        except FedremaError:
            raise
        except OSError as exc:
            raise self._explain(exc, what, rel) from None

    def _explain(self, exc: BaseException, what: str, rel: str) -> FedremaError:
        where = self._where(rel)
        if isinstance(exc, FileNotFoundError):
            if what == "read":
                return StoreError(f"missing file: {where}")
            return StoreError(f"cannot {what} {where}: no such file or folder")
        if isinstance(exc, PermissionError):
            return StoreError(
                f"access denied: cannot {what} {where}",
                hint="check this account's permissions on the folder, server or bucket",
            )
        return StoreError(f"cannot {what} {where}: {one_line(exc)}")


def one_line(exc: BaseException) -> str:
    """An exception as one short line (servers' messages can span lines)."""
    text = " ".join(
        (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)).split()
    )
    if not text:
        return type(exc).__name__
    return text if len(text) <= 240 else text[:237] + "..."


# -- a test-only crash switch (not a feature) -----------------------------------------------
#: tests/cli/test_kill_sweep.py sets FEDREMA_TEST_KILL_AT=N in a child process: the process
#: then SIGKILLs itself at the N-th step of a local write (before the temporary file, before
#: its fsync, before the rename, after it; after a delete), to prove a real crash at any of
#: them loses nothing. Unset, as everywhere else, a step is a call that returns at once.
_TEST_KILL_AT = int(os.environ.get("FEDREMA_TEST_KILL_AT") or 0)
_test_kill_steps = 0


def _test_kill_step() -> None:
    global _test_kill_steps
    if not _TEST_KILL_AT:
        return
    _test_kill_steps += 1
    if _test_kill_steps == _TEST_KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)


#: What `_write_temp` names its files; `remove_stale_temporaries` deletes nothing else.
_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")
#: A temporary file untouched this long was left by a killed write.
STALE_TEMP_SECONDS = 60.0
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class LocalStorage(BaseStorage):
    """A folder on this machine. ``private=True`` makes new files readable by the owner only.

    Every path is walked from the root one folder at a time with O_NOFOLLOW (``dir_fd``), so
    no symbolic link below the root is ever followed, for reads or writes. The root itself
    may be a link: that is the user's choice, not something planted in the store.
    ``max_bytes`` caps every read (None: no cap, as for private state).
    """

    def __init__(
        self, root: str | os.PathLike[str], *, private: bool = False, max_bytes: int | None = None
    ) -> None:
        self.root = Path(root)
        self.private = private
        self.max_bytes = max_bytes

    def describe(self) -> str:
        return str(self.root)

    def _where(self, rel: str) -> str:
        return str(self.root) if rel == "." else str(self.root / rel)

    @contextlib.contextmanager
    def _folder(self, parts: list[str], *, create: bool) -> Iterator[int]:
        """An open fd of root/parts, reached without following a link below the root."""
        if create:
            os.makedirs(self.root, mode=0o700 if self.private else 0o777, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i, name in enumerate(parts):
                try:
                    sub = self._subfolder(fd, name, create=create)
                except NotADirectoryError:
                    raise self._in_the_way(fd, name, "/".join(parts[: i + 1]), create) from None
                os.close(fd)
                fd = sub
            yield fd
        finally:
            os.close(fd)

    def _subfolder(self, fd: int, name: str, *, create: bool) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700 if self.private else 0o777, dir_fd=fd)
        return os.open(name, _DIR_FLAGS, dir_fd=fd)

    def _in_the_way(self, fd: int, name: str, rel: str, writing: bool) -> FedremaError:
        """Why ``name`` (not a folder, or a link to one) cannot be walked through."""
        where = self._where(rel)
        try:
            link = stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
        except OSError:
            link = False
        return in_the_way(where, link=link, writing=writing)

    def _read(self, rel: str, cap: int | None) -> bytes:
        parents, name = _split(rel)
        where = self._where(rel)
        with self._folder(parents, create=False) as d:
            st = os.stat(name, dir_fd=d, follow_symlinks=False)
            _check_regular(st.st_mode, st.st_size, where, cap)  # nothing odd is even opened
            fd = os.open(name, _FILE_FLAGS, dir_fd=d)  # O_NONBLOCK: a swapped-in FIFO can't block
        try:
            st = os.fstat(fd)  # what was opened, in case the name changed meanwhile
            _check_regular(st.st_mode, st.st_size, where, cap)
            return _read_limited(functools.partial(os.read, fd), st.st_size, cap, where)
        finally:
            os.close(fd)

    def _exists(self, rel: str) -> bool:
        parents, name = _split(rel)
        try:
            with self._folder(parents, create=False) as d:
                os.stat(name, dir_fd=d, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError, UnsafeFileError):
            return False
        return True

    def remove_stale_temporaries(self, *, older_than: float = STALE_TEMP_SECONDS) -> int:
        """Delete the temporary files a killed write left behind, anywhere below the root;
        return how many. Only names this store's writes make (``.NAME.<12 hex>.tmp``), only
        regular files, only ones untouched for ``older_than`` seconds (a live write takes
        milliseconds), and links are never followed. Call it while holding the folder."""
        removed = 0
        now = time.time()
        for folder, subfolders, files in os.walk(self.root, followlinks=False):
            subfolders[:] = [f for f in subfolders if not os.path.islink(os.path.join(folder, f))]
            for name in files:
                if not _TEMPORARY.fullmatch(name):
                    continue
                path = os.path.join(folder, name)
                with contextlib.suppress(OSError):
                    st = os.lstat(path)
                    if stat.S_ISREG(st.st_mode) and now - st.st_mtime >= older_than:
                        os.unlink(path)
                        removed += 1
        return removed

    def _write_temp(self, d: int, name: str, data: bytes) -> str:
        if self.private:
            os.fchmod(d, 0o700)
        tmp = f".{name}.{secrets.token_hex(6)}.tmp"
        _test_kill_step()  # before the temporary file
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600 if self.private else 0o644, dir_fd=d)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                _test_kill_step()  # written, not yet synced
                os.fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=d)
            raise
        return tmp

    @staticmethod
    def _sync(d: int) -> None:
        with contextlib.suppress(OSError):
            os.fsync(d)

    def _create(self, rel: str, data: bytes) -> bool:
        parents, name = _split(rel)
        with self._folder(parents, create=True) as d:
            with contextlib.suppress(FileNotFoundError):
                os.stat(name, dir_fd=d, follow_symlinks=False)
                return False  # a re-run: no temporary file needed to find out
            tmp = self._write_temp(d, name, data)
            _test_kill_step()  # synced, not yet in place
            try:
                # link() never replaces: if the name appeared meanwhile, nothing is overwritten
                os.link(tmp, name, src_dir_fd=d, dst_dir_fd=d, follow_symlinks=False)
                _test_kill_step()  # in place, temporary file not yet removed
            except FileExistsError:
                return False
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=d)
            self._sync(d)
            return True

    def _replace(self, rel: str, data: bytes) -> None:
        parents, name = _split(rel)
        with self._folder(parents, create=True) as d:
            tmp = self._write_temp(d, name, data)
            _test_kill_step()  # synced, not yet in place
            try:
                os.replace(tmp, name, src_dir_fd=d, dst_dir_fd=d)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=d)
                raise
            _test_kill_step()  # in place, folder not yet synced
            self._sync(d)

    def _list(self, rel: str) -> list[str]:
        try:
            with self._folder([] if rel == "." else rel.split("/"), create=False) as d:
                return os.listdir(d)
        except (FileNotFoundError, UnsafeFileError):
            return []

    def _delete(self, rel: str) -> None:
        parents, name = _split(rel)
        with (
            contextlib.suppress(FileNotFoundError, UnsafeFileError),
            self._folder(parents, create=False) as d,
        ):
            os.unlink(name, dir_fd=d)
            _test_kill_step()  # deleted


def write_files(folder: str | os.PathLike[str], files: Mapping[str, bytes]) -> dict[str, Path]:
    """Write each file whole (temporary file + rename) into a local folder, made if missing.

    For files a command hands to a person (prepared site data, a validation split): a crash or
    a full disk leaves each one complete or absent, never a partial CSV that loads as fewer
    patients. Returns each name's path.
    """
    store = LocalStorage(folder)
    for name, data in files.items():
        store.replace(name, data)
    return {name: Path(folder) / name for name in files}


def check_output(path: Path, *, option: str, overwrite: bool) -> None:
    """Refuse, before any slow work, a path `write_output` would refuse to write.

    Only a regular file is ever replaced, and only with ``overwrite``: a rename onto a device,
    a FIFO or a link would replace it (as root, ``/dev/full`` with an HTML file), and a filed
    report must not be overwritten by a later one unnoticed.
    """
    from fedrema_cli.errors import UsageError

    if not path.name or path.name in (".", ".."):
        raise UsageError(f"{option} {str(path)!r} is not a file name", hint="e.g. report.html")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    except NotADirectoryError:
        raise UsageError(
            f"{option} {path}: a part of the folder path is a file, not a folder"
        ) from None
    if mode is not None and not stat.S_ISREG(mode):
        raise UsageError(
            f"{option} {path} is {_kind(mode)}; refusing to replace it",
            hint="give a new file name",
        )
    if mode is not None and not overwrite:
        raise UsageError(
            f"{option} {path} exists; refusing to overwrite it",
            hint="give a new file name, or --force to replace it",
        )


def check_output_folder(path: Path, *, option: str, holds: str, hint: str) -> None:
    """Refuse a folder option (``--out``, ``--export``) that names a file: one line saying so,
    not the "File exists" the folder's creation would raise."""
    from fedrema_cli.errors import UsageError

    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file; {holds} go into a folder", hint=hint)


def write_output(path: Path, data: bytes, *, option: str, overwrite: bool) -> None:
    """Write a file a person asked for by name (a report), whole (temp + rename), after
    `check_output`'s refusals; missing folders are made."""
    check_output(path, option=option, overwrite=overwrite)
    LocalStorage(path.parent).replace(path.name, data)


STORAGE_OPTIONS_ENV = "FEDREMA_STORAGE_OPTIONS"


def storage_options() -> dict[str, object]:
    """Connection options for a workspace URL, from ``FEDREMA_STORAGE_OPTIONS`` (JSON).

    For ``sftp://``: paramiko's connect options (``key_filename``, ``port``, ...), plus
    ``host_key`` (the server's public key, ``ssh-ed25519 AAAA...``, pinned: any other key is
    refused) or ``known_hosts`` (a file, or a list; default ``~/.ssh/known_hosts``). For
    ``s3://``: s3fs's options (``endpoint_url``, ``key``, ``secret``, ``client_kwargs``, ...).
    For both: ``retries``, how many attempts a transient network error gets (default 4).
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
    return options


def _scheme(location: str) -> str:
    return location.split("://", 1)[0].lower() if "://" in location else "file"


def lasting_location(location: str) -> str:
    """The workspace location to record at init: a local folder as an absolute path, so later
    commands find it from any working directory (cron, systemd, another shell); URLs as given."""
    if _scheme(location) != "file":
        return location
    return str(Path(location.removeprefix("file://")).resolve())


#: The most any read from a shared workspace takes, unless the store is opened with less: a
#: backstop under the per-kind caps readers pass, far above any real artifact.
SHARED_MAX_BYTES = 1 << 30


def open_storage(location: str, *, private: bool = False, max_bytes: int | None = None) -> Storage:
    """A local folder for plain paths, an SFTP server for ``sftp://``, a bucket for ``s3://``.

    ``max_bytes`` caps every read from the store (a read can ask for less); a shared store
    is capped at SHARED_MAX_BYTES without it, private state is not.
    """
    if max_bytes is None and not private:
        max_bytes = SHARED_MAX_BYTES
    scheme = _scheme(location)
    if scheme == "file":
        return LocalStorage(location.removeprefix("file://"), private=private, max_bytes=max_bytes)
    if private:
        raise StoreError("private state must live in a local folder, not at a URL")
    from fedrema_cli.store import remote  # paramiko / s3fs only when a URL needs them

    options = storage_options()
    retry = remote.Retry.from_option(options.pop("retries", None))
    if scheme in ("sftp", "ssh"):
        return remote.SftpStorage(location, options, retry=retry, max_bytes=max_bytes)
    if scheme == "s3":
        return remote.S3Storage(location, options, retry=retry, max_bytes=max_bytes)
    raise StoreError(
        f"{location}: no workspace backend for {scheme}://",
        hint="use a folder, sftp://HOST/PATH or s3://BUCKET/PATH",
    )
