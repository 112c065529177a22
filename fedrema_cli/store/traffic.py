"""Bytes on the wire: what each party writes to and reads from the workspace, per round.

The workspace is the only channel between parties, so counting at the storage boundary
measures all communication: an upload is a file a party creates, a download a file it reads
that another party wrote. A file is counted once per party (write-once files never change,
so a party that keeps what it read fetches each file once; re-reads for verification, and
re-writes of identical bytes by a re-run, cost nothing on the wire). Each file is filed under
its round and kind from its path alone (see `classify`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from fedrema_cli.store.federation import KINDS
from fedrema_cli.store.storage import Storage

#: Files that belong to no round: config, enrollments, roster, withdrawals.
SETUP = 0

#: Attachment suffixes that get a kind of their own (the rest count with their envelope).
_ATTACHMENT_KINDS = {
    "masked.bin": "masked-update",
    "update.safetensors": "plain-update",
}


def classify(path: str) -> tuple[int, str]:
    """(round, kind) of a workspace file, from its path; round 0 for setup files.

    >>> classify("rounds/0003/submissions/va.masked.bin")
    (3, 'masked-update')
    >>> classify("rounds/0003/model.params.safetensors")
    (3, 'model')
    >>> classify("ledger/va/0002.json")
    (2, 'ledger-entry')
    >>> classify("roster.json")
    (0, 'setup')
    """
    parts = path.split("/")
    if parts[0] == "ledger" and len(parts) == 3 and parts[2][:4].isdigit():
        return int(parts[2].split(".", 1)[0]), "ledger-entry"
    if parts[0] != "rounds" or len(parts) < 3 or not parts[1].isdigit():
        return SETUP, "setup"
    r = int(parts[1])
    if len(parts) == 4:
        folder, suffix = parts[2], parts[3].split(".", 1)[1] if "." in parts[3] else ""
        if suffix in _ATTACHMENT_KINDS:
            return r, _ATTACHMENT_KINDS[suffix]
        for kind, spec in KINDS.items():
            if spec.folder and spec.folder == folder:
                return r, kind
        return r, folder
    name = parts[2].split(".", 1)[0]
    for kind, spec in KINDS.items():
        if not spec.folder and spec.name == name:
            return r, kind
    return r, name


@dataclass
class Meter:
    """Bytes per (party, direction, round, kind); shared by every party's metered store."""

    #: (party, "up" | "down", round, kind) -> bytes
    counts: dict[tuple[str, str, int, str], int] = field(default_factory=lambda: defaultdict(int))
    #: party -> paths it has already been charged for (written or read)
    _seen: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    def charge(self, party: str, direction: str, path: str, size: int) -> None:
        if path in self._seen[party]:
            return
        self._seen[party].add(path)
        if size:
            r, kind = classify(path)
            self.counts[(party, direction, r, kind)] += size

    def summary(self, party: str, rounds: range) -> dict[str, object]:
        """Mean bytes per round over ``rounds``: totals up and down, and each by kind."""
        out: dict[str, object] = {}
        for direction in ("up", "down"):
            by_kind: dict[str, float] = defaultdict(float)
            for (p, d, r, kind), size in self.counts.items():
                if p == party and d == direction and r in rounds:
                    by_kind[kind] += size / len(rounds)
            out[f"bytes_{direction}"] = round(sum(by_kind.values()), 1)
            out[f"{direction}_by_kind"] = {k: round(v, 1) for k, v in sorted(by_kind.items())}
        return out

    def setup(self, party: str) -> dict[str, int]:
        """Bytes of the one-off files (config, enrollment, roster), up and down."""
        return {
            f"bytes_{d}": sum(
                s for (p, dd, r, _), s in self.counts.items() if p == party and dd == d and r == 0
            )
            for d in ("up", "down")
        }


class MeteredStorage:
    """A Storage that charges each created file to its writer and each first read to its
    reader (never a party's read of its own file), then behaves exactly as the one it wraps."""

    def __init__(self, inner: Storage, meter: Meter, party: str) -> None:
        self.inner, self.meter, self.party = inner, meter, party

    def read_bytes(self, path: str, *, max_bytes: int | None = None) -> bytes:
        data = self.inner.read_bytes(path, max_bytes=max_bytes)
        self.meter.charge(self.party, "down", path, len(data))
        return data

    def exists(self, path: str) -> bool:
        return self.inner.exists(path)

    def write_once(self, path: str, data: bytes) -> bool:
        created = self.inner.write_once(path, data)
        # identical bytes already there: this party wrote them before (a re-run), nothing moves
        self.meter.charge(self.party, "up", path, len(data) if created else 0)
        return created

    def replace(self, path: str, data: bytes) -> None:
        self.inner.replace(path, data)
        self.meter.charge(self.party, "up", path, len(data))

    def list(self, path: str) -> list[str]:
        return self.inner.list(path)

    def delete(self, path: str) -> None:
        self.inner.delete(path)

    def describe(self) -> str:
        return self.inner.describe()
