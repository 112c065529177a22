"""Hostile files planted in a store: refused fast, unread, in bounded memory, in one line.

Someone who can write to the workspace (a storage administrator, a compromised site) plants
a link to /dev/zero, a FIFO, a 6 GB sparse file, a folder where a file should be... Each
must be refused in well under a second without reading it, for a local folder and for a
real SFTP server (the planted files are on the server's disk; the store sees them over SFTP).
"""

from __future__ import annotations

import base64
import os
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crypto.canonical import canonical_json
from fedrema_cli.config import FederationConfig, parse_config
from fedrema_cli.errors import IntegrityError, StoreError, UnsafeFileError
from fedrema_cli.store.federation import PER_SITE_BYTES, Roster, RosterSite, file_limit
from fedrema_cli.store.remote import Retry, SftpStorage
from fedrema_cli.store.state import PartyState
from fedrema_cli.store.storage import (
    LocalStorage,
    Storage,
    _Oversize,
    _read_limited,
    open_storage,
)

FAST = Retry(attempts=2, first_delay=0.01)
CAP = 1 << 20  # what a reader allows for these files in the tests below


@pytest.fixture(params=["local", "sftp"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Storage, Path]]:
    """A store, and the folder on this machine where its files really are."""
    if request.param == "local":
        root = tmp_path / "ws"
        root.mkdir()
        yield LocalStorage(root), root
        return
    server = request.getfixturevalue("sftp")
    root = server.root / "ws"
    root.mkdir()
    remote = SftpStorage(server.url("ws"), server.options(), retry=FAST)
    yield remote, root
    remote.close()


def plant_link(target: str) -> Callable[[Path], None]:
    return lambda p: p.symlink_to(target)


def plant_sparse(p: Path) -> None:
    with p.open("wb") as f:
        f.truncate(6 * 2**30)  # 6 GB that take no disk


def plant_oversize(p: Path) -> None:
    p.write_bytes(b"x" * (CAP + 1))


HOSTILE: dict[str, tuple[Callable[[Path], None], str]] = {
    "link to /dev/zero": (plant_link("/dev/zero"), "symbolic link"),
    "link to /dev/urandom": (plant_link("/dev/urandom"), "symbolic link"),
    "link to a real file": (plant_link("../../real.json"), "symbolic link"),
    "FIFO": (os.mkfifo, "a FIFO"),
    "6 GB sparse file": (plant_sparse, "6,442,450,944 bytes, more than the 1,048,576"),
    "folder in place of a file": (lambda p: p.mkdir(), "is a folder"),
    "one byte over the cap": (plant_oversize, "1,048,577 bytes"),
}


def refused_fast(read: Callable[[], bytes]) -> UnsafeFileError:
    """Run a read that must be refused; return the error after checking time and memory."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(UnsafeFileError) as caught:
            read()
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0, f"took {elapsed:.2f} s"
    assert peak < 4 * 2**20, f"peak memory {peak:,} bytes"
    err = caught.value
    assert isinstance(err, IntegrityError) and err.exit_code == 3
    assert "\n" not in str(err)
    return err


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_hostile_file_is_refused_unread(store: tuple[Storage, Path], kind: str) -> None:
    st, root = store
    plant, message = HOSTILE[kind]
    (root / "real.json").write_bytes(b"{}")
    (root / "rounds" / "0001").mkdir(parents=True)
    plant(root / "rounds" / "0001" / "result.json")
    err = refused_fast(lambda: st.read_bytes("rounds/0001/result.json", max_bytes=CAP))
    assert message in str(err) and "rounds/0001/result.json" in str(err)
    # it is there (a reader asked about it is told, not misled), and a write-once refuses it
    assert st.exists("rounds/0001/result.json")
    with pytest.raises((UnsafeFileError, StoreError)):
        st.write_once("rounds/0001/result.json", b"{}")
    assert st.list("rounds/0001") == ["result.json"]


def test_a_symlinked_folder_is_never_walked_through(store: tuple[Storage, Path]) -> None:
    st, root = store
    elsewhere = root.parent / "elsewhere"  # e.g. another federation, or a party's state
    elsewhere.mkdir()
    (elsewhere / "x.json").write_bytes(b"secret")
    (root / "rounds").mkdir()
    (root / "rounds" / "0002").symlink_to(elsewhere)
    err = refused_fast(lambda: st.read_bytes("rounds/0002/x.json", max_bytes=CAP))
    assert "rounds/0002 is a symbolic link" in str(err)
    assert not st.exists("rounds/0002/x.json")
    assert st.list("rounds/0002") == []
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        st.write_once("rounds/0002/y.json", b"planted")
    st.delete("rounds/0002/x.json")
    assert sorted(p.name for p in elsewhere.iterdir()) == ["x.json"]  # nothing written/deleted
    assert (elsewhere / "x.json").read_bytes() == b"secret"


def test_a_file_in_place_of_a_folder(store: tuple[Storage, Path]) -> None:
    st, root = store
    (root / "rounds").write_bytes(b"not a folder")
    assert st.list("rounds") == []
    assert not st.exists("rounds/0001/result.json")
    with pytest.raises(StoreError, match="rounds: it is a file, not a folder") as caught:
        st.write_once("rounds/0001/result.json", b"{}")
    assert not isinstance(caught.value, UnsafeFileError)
    err = refused_fast(lambda: st.read_bytes("rounds/0001/result.json"))
    assert "is a file where a folder should be" in str(err)


def test_within_the_cap_reads_normally(store: tuple[Storage, Path]) -> None:
    st, root = store
    data = os.urandom(CAP)
    (root / "model.bin").write_bytes(data)
    assert st.read_bytes("model.bin", max_bytes=CAP) == data
    assert st.read_bytes("model.bin") == data  # no cap asked, none set
    refused_fast(lambda: st.read_bytes("model.bin", max_bytes=CAP - 1))


def test_the_store_cap_applies_to_every_read(tmp_path: Path) -> None:
    (tmp_path / "big.bin").write_bytes(b"x" * 101)
    st = LocalStorage(tmp_path, max_bytes=100)
    with pytest.raises(UnsafeFileError, match="101 bytes, more than the 100"):
        st.read_bytes("big.bin")
    with pytest.raises(UnsafeFileError, match="more than the 50"):
        st.read_bytes("big.bin", max_bytes=50)  # a reader can ask for less, not more
    with pytest.raises(UnsafeFileError, match="more than the 100"):
        st.read_bytes("big.bin", max_bytes=1000)


def test_a_shared_workspace_has_a_backstop_cap(tmp_path: Path) -> None:
    """Until a reader asks for less, a 6 GB sparse file in the workspace is still refused."""
    plant_sparse(tmp_path / "federation.json")
    err = refused_fast(lambda: open_storage(str(tmp_path)).read_bytes("federation.json"))
    assert "6,442,450,944 bytes" in str(err)


def test_a_read_never_takes_more_than_cap_plus_one_bytes() -> None:
    """A file that grows while read, or whose size lies (procfs, a FUSE file): the reader
    asks for at most cap + 1 bytes in all, then refuses."""
    asked: list[int] = []

    def endless(n: int) -> bytes:
        asked.append(n)
        return b"\0" * n

    with pytest.raises(_Oversize, match="more than the 1,000 bytes"):
        _read_limited(endless, 10, 1000, "f")  # claims 10 bytes, never ends
    assert sum(asked) == 1001
    asked.clear()
    assert _read_limited(lambda n: b"", 0, 1000, "f") == b""
    assert _read_limited(_chunks([b"ab", b"c"]), 3, 3, "f") == b"abc"  # short reads add up


def _chunks(parts: list[bytes]) -> Callable[[int], bytes]:
    it = iter([*parts, b""])
    return lambda n: next(it)


def test_the_private_state_folder_still_works_uncapped(tmp_path: Path) -> None:
    state = PartyState(tmp_path / "state")
    state.create_identity()
    big = os.urandom(3 * 2**20)
    state.write_bytes("rounds/0001/trained.bin", big)
    assert state.read_bytes("rounds/0001/trained.bin") == big
    assert state.list("rounds") == ["0001"]
    (tmp_path / "state" / "planted.json").symlink_to("/dev/zero")
    refused_fast(lambda: state.read_bytes("planted.json"))


@pytest.mark.parametrize("plant", [plant_link("/dev/zero"), plant_sparse, os.mkfifo])
def test_a_command_reading_a_hostile_file_fails_in_one_line(
    tmp_path: Path, plant: Callable[[Path], None]
) -> None:
    from tests.cli.conftest import run

    ws, coord = tmp_path / "ws", tmp_path / "coord"
    out = run("init", "-w", ws, "-s", coord, "--preset", "heart-disease", "--no-dp")
    assert out.exit_code == 0, out.stderr
    (ws / "federation.json").unlink()
    plant(ws / "federation.json")
    start = time.perf_counter()
    out = run("status", "-s", coord)
    assert time.perf_counter() - start < 5
    assert out.exit_code == 3, out.stderr
    assert "federation.json" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 2  # the error, and at most a hint


def _small_config() -> FederationConfig:
    key = base64.b64encode(bytes(32)).decode()
    return parse_config(
        {
            "federation_id": "cap",
            "coordinator": {"sign_pk": key, "seal_pk": key},
            "data": {"classes": [0, 1], "features": ["a", "b"], "label": "y"},
            "model": {"kind": "mlp", "in_features": 2, "hidden": [4], "num_classes": 2},
        },
        where="test",
    )


def test_the_read_cap_grows_with_the_number_of_sites() -> None:
    """Files that grow with n (roster, key roster, shares, unmask request) must fit the cap
    at any n: a 40,000-site roster is over the n-free cap, and within the cap for n."""
    config = _small_config()
    key = base64.b64encode(bytes(32)).decode()
    n = 40_000
    roster = Roster(
        federation_id="cap",
        sites=tuple(
            RosterSite(name=f"hospital-{i:05d}", index=i, sign_pk=key, seal_pk=key)
            for i in range(1, n + 1)
        ),
        threshold=2 * n // 3 + 1,
        approved_at="2026-01-01T00:00:00Z",
    )
    size = len(canonical_json(roster.model_dump(mode="json")))
    assert size > file_limit(config)  # the old cap (no n term) would refuse a real roster
    assert size <= file_limit(config, n)
    assert file_limit(config, n) - file_limit(config) == n * PER_SITE_BYTES
