"""Reading the workspace's signed files in tests, as `fedrema` stores them.

Round artifacts are stored gzip'd (`fedrema_cli.store.envelope.pack`); the bootstrap files
(federation.json, enrollments, rosters) are plain JSON. A test that inspects or forges an
envelope reads it through here, so it does not depend on which of the two a kind uses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedrema_cli.store import envelope as env

#: A test reads files its own federation wrote: no cap needed beyond "not absurd".
_LIMIT = 1 << 30


def plain(data: bytes) -> bytes:
    """A signed file's JSON bytes, packed or plain."""
    return env.unpack(data, where="test file", limit=_LIMIT)


def read_signed(path: Path) -> dict[str, Any]:
    """The envelope in ``path`` (header, body, signature), packed or plain."""
    return json.loads(plain(path.read_bytes()))


def write_signed(path: Path, envelope: dict[str, Any] | bytes) -> None:
    """Put (forged) envelope JSON back in the form the file had, packed or plain: a tampered
    file that differs from the real one only in its content, not in how it is stored."""
    data = envelope if isinstance(envelope, bytes) else json.dumps(envelope).encode()
    packed = path.exists() and path.read_bytes().startswith(env.GZIP_MAGIC)
    path.write_bytes(env.pack(data) if packed else data)
