"""A site's SecAgg outbox: the masked update kept as its own file, not base64 inside JSON.

The site persists each protocol message before publishing it (crash safety). With a model of
10^7 parameters that message is 80 MB; kept as base64 in the state JSON it was copied about
five times over on every `submit` (benchmarks/scale.py --probe-cli-site). These tests pin
the file layout and bound the memory of the real driver at a small model.
"""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from pathlib import Path

from fedrema_cli.protocol import secagg as secure
from fedrema_cli.protocol.rounds import Actions
from fedrema_cli.roles.site import Site
from tests.cli.conftest import make_federation, run, submit_all

MiB = 1 << 20


def test_the_masked_update_is_kept_as_raw_bytes_beside_the_state_and_republished(
    tmp_path: Path,
) -> None:
    three = ("cleveland", "hungary", "switzerland")
    fed = make_federation(tmp_path, "--no-dp", sites=three)
    for _ in range(2):  # the key exchange
        submit_all(fed, three)
        assert run("aggregate", "-s", fed.coordinator).exit_code == 0
    for s in three:
        assert run("train-local", "-s", fed.site(s)).exit_code == 0
    submit_all(fed, three)
    site = fed.site("cleveland")
    kept = site / "secagg/0001.submission.masked.bin"
    published = fed.workspace / "rounds/0001/submissions/cleveland.masked.bin"
    assert kept.read_bytes() == published.read_bytes()  # the exact bytes, no encoding
    state = json.loads((site / "secagg/0001.json").read_text())
    item = state["outbox"]["submission"]
    assert "attachments" not in item
    assert item["files"] == {"masked.bin": hashlib.sha256(kept.read_bytes()).hexdigest()}
    assert (site / "secagg/0001.json").stat().st_size < kept.stat().st_size  # no copy inside

    # A submission lost from the workspace is republished from the outbox, byte for byte.
    original = published.read_bytes()
    published.unlink()
    (fed.workspace / "rounds/0001/submissions/cleveland.json").unlink()
    assert run("submit", "-s", site).exit_code in (0, 75)
    assert published.read_bytes() == original

    # A damaged outbox file is refused in one line, and nothing is published from it.
    published.unlink()
    (fed.workspace / "rounds/0001/submissions/cleveland.json").unlink()
    kept.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    out = run("submit", "-s", site)
    assert out.exit_code != 0 and "Traceback" not in out.stderr
    assert "0001.submission.masked.bin is damaged" in out.stderr
    assert not published.exists()
    kept.write_bytes(original)

    # The round finishes; once it is over, its secrets and outbox files are deleted.
    assert run("submit", "-s", site).exit_code in (0, 75)
    assert run("aggregate", "-s", fed.coordinator).exit_code == 0
    submit_all(fed, three)
    assert run("aggregate", "-s", fed.coordinator).exit_code == 0
    assert run("train-local", "-s", site).exit_code == 0
    assert run("submit", "-s", site).exit_code in (0, 75)  # round 2: round 1 is forgotten
    assert not any(p.name.startswith("0001.") for p in (site / "secagg").iterdir())


def test_the_real_driver_masks_and_publishes_with_three_vectors_of_memory(tmp_path: Path) -> None:
    """`site_steps` at the masking step, ~2^20 shared parameters (8 MiB per 64-bit vector):
    the encoded input, the masked vector and its wire bytes, plus little. Base64 in the
    state JSON (the old outbox) adds over three more vectors and fails this bound."""
    three = ("cleveland", "hungary", "switzerland")
    fed = make_federation(tmp_path, "--no-dp", "--hidden", "1024,1024", sites=three)
    for _ in range(2):  # the key exchange
        submit_all(fed, three)
        assert run("aggregate", "-s", fed.coordinator).exit_code == 0
    assert run("train-local", "-s", fed.site("cleveland")).exit_code == 0
    site = Site(fed.site("cleveland"))
    view = site.secagg_view(1)  # the trained update, as `submit` builds it
    d = view.updates[1].delta.shape[0]
    assert d > 1_000_000
    actions = Actions()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        with site.state.exclusive():
            secure.site_steps(view, 1, actions)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert "round 1: masked update submitted" in actions.done
    vector = 8 * (d + 1)  # 64-bit words
    bound = 3 * vector + vector // 2 + 4 * MiB
    assert peak < bound, f"site driver peak {peak / MiB:.1f} MiB >= {bound / MiB:.1f} MiB"
