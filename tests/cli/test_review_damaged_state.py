"""A hand-edited record in a party's own state folder: one line, exit 1, no traceback."""

from __future__ import annotations

import json

import pytest

from tests.cli.conftest import Fed, run


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: {k: v for k, v in m.items() if k != "workspace"},
        lambda m: {k: v for k, v in m.items() if k != "data"},
        lambda m: {**m, "data": {"test": None}},
        lambda m: [m],
    ],
)
def test_a_damaged_site_record(federation: Fed, edit) -> None:
    path = federation.site("va") / "site.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    for command in ("status", "train-local", "submit"):
        out = run(command, "-s", federation.site("va"))
        assert out.exit_code == 1, (command, out.stdout, out.stderr)
        assert out.stderr.startswith("fedrema: error:") and "site.json" in out.stderr


def test_a_damaged_coordinator_record(federation: Fed) -> None:
    path = federation.coordinator / "coordinator.json"
    meta = json.loads(path.read_text())
    del meta["federation_sha256"]
    path.write_text(json.dumps(meta))
    out = run("aggregate", "-s", federation.coordinator)
    assert out.exit_code == 1, (out.stdout, out.stderr)
    assert out.stderr.startswith("fedrema: error:") and "coordinator.json" in out.stderr
