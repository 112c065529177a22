"""Bytes on the wire (#11): the metered store, and a simulated round's counts against the
sizes of the files that round left in the workspace."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from fedrema_cli import simulate as sim
from fedrema_cli.learning.params import load_params
from fedrema_cli.store.storage import LocalStorage
from fedrema_cli.store.traffic import Meter, MeteredStorage, classify
from fedrema_cli.store.workspace import COORDINATOR


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("rounds/0002/submissions/va.masked.bin", (2, "masked-update")),
        ("rounds/0002/submissions/va.json", (2, "submission")),
        ("rounds/0002/submissions/va.update.safetensors", (2, "plain-update")),
        ("rounds/0002/shares/va.msg.bin", (2, "shares")),
        ("rounds/0002/keys/va.json", (2, "key-advert")),
        ("rounds/0002/heads/va.json", (2, "head")),
        ("rounds/0002/model.params.safetensors", (2, "model")),
        ("rounds/0002/masking-roster.json", (2, "masking-roster")),
        ("ledger/va/0007.json", (7, "ledger-entry")),
        ("enrollments/va.json", (0, "setup")),
        ("withdrawals/va.json", (0, "setup")),
    ],
)
def test_every_workspace_file_is_filed_by_round_and_kind(path: str, expected: tuple) -> None:
    assert classify(path) == expected


def test_a_party_pays_once_per_file_and_never_to_read_its_own(tmp_path: Path) -> None:
    meter = Meter()
    store = LocalStorage(tmp_path)
    a, b = MeteredStorage(store, meter, "a"), MeteredStorage(store, meter, "b")
    assert a.write_once("rounds/0001/keys/a.json", b"x" * 100)
    assert not a.write_once("rounds/0001/keys/a.json", b"x" * 100)  # a re-run moves nothing
    a.read_bytes("rounds/0001/keys/a.json")  # its own file
    for _ in range(3):  # verification re-reads: fetched once
        b.read_bytes("rounds/0001/keys/a.json")
    a.write_once("rounds/0002/submissions/a.masked.bin", b"y" * 40)
    assert meter.summary("a", range(1, 3)) == {
        "bytes_up": 70.0,
        "up_by_kind": {"key-advert": 50.0, "masked-update": 20.0},
        "bytes_down": 0.0,
        "down_by_kind": {},
    }
    assert meter.summary("b", range(1, 2))["down_by_kind"] == {"key-advert": 100.0}


def test_simulated_counts_are_the_sizes_of_the_rounds_files(tmp_path: Path) -> None:
    spec = sim.SimulationSpec(
        dataset="heart-disease", method="fedrema", rounds=1, epsilon=None, workdir=tmp_path / "s"
    )
    comm = sim.run(spec)["communication"]
    ws = tmp_path / "s" / "workspace"
    sizes = {str(p.relative_to(ws)): p.stat().st_size for p in ws.rglob("*") if p.is_file()}
    # who wrote what, from the path: rounds/0001/<folder>/<site>.* and ledger/<site>/ are the
    # site's, the round's single files the coordinator's
    up: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for path, size in sizes.items():
        r, kind = classify(path)
        if r != 1:
            continue
        parts = path.split("/")
        author = (
            parts[1]
            if parts[0] == "ledger"
            else (parts[3].split(".")[0] if len(parts) == 4 else COORDINATOR)
        )
        up[author][kind] += size
    sites = list(comm["sites"])
    assert len(sites) == 4
    for site in sites:
        assert comm["sites"][site]["up_by_kind"] == pytest.approx(dict(up[site]))
        down = comm["sites"][site]["down_by_kind"]
        # it downloads the round's model, rosters and request (each file whole), nothing of
        # its own, and no peer's advert: the key roster carries their signatures
        assert down["model"] == up[COORDINATOR]["model"]
        for kind in ("key-roster", "masking-roster", "unmask-request", "result"):
            assert down[kind] == up[COORDINATOR][kind]
        assert "key-advert" not in down
        # of each peer's key shares only the one ciphertext addressed to it (AEAD
        # authenticates it; the sender's envelope is for the coordinator)
        mine = f"to-{sites.index(site) + 1}.bin"
        assert down["shares"] == sum(
            sizes[f"rounds/0001/shares/{s}.{mine}"] for s in sites if s != site
        )
        assert comm["sites"][site]["bytes_up"] == sum(up[site].values())
    assert comm["coordinator"]["up_by_kind"] == pytest.approx(dict(up[COORDINATOR]))
    # the model travels in float16 (half the bytes), read back as float32
    model = load_params((ws / "rounds/0001/model.params.safetensors").read_bytes())
    assert {v.dtype for v in model.values()} == {np.dtype(np.float16)}
    # 2^24 masked sums ("auto" for 4 sites under simulate's tight public bounds): 3 bytes
    # per coordinate, plus a small header
    masked = comm["mean"]["up_by_kind"]["masked-update"]
    assert 3 * 1000 < masked < 3 * 1200
