"""A federation.json swapped for one signed by another key is a forged file: exit 3 (README),
for every party, and nothing is written."""

from __future__ import annotations

from pathlib import Path

from tests.cli.conftest import make_federation, run, snapshot


def test_a_replaced_federation_config_is_an_integrity_failure(tmp_path: Path) -> None:
    fed = make_federation(tmp_path / "a", "--no-dp", sites=("cleveland", "hungary"))
    forger = tmp_path / "forger"
    assert (
        run(
            "init",
            "-w",
            forger / "ws",
            "-s",
            forger / "coord",
            "--preset",
            "heart-disease",
            "--no-dp",
        ).exit_code
        == 0
    )
    (fed.workspace / "federation.json").write_bytes(
        (forger / "ws" / "federation.json").read_bytes()
    )
    before = snapshot(fed.workspace)
    for command, party in (("submit", fed.site("cleveland")), ("aggregate", fed.coordinator)):
        out = run(command, "-s", party)
        assert out.exit_code == 3, (command, out.stdout, out.stderr)
        assert "federation.json" in out.stderr
    assert snapshot(fed.workspace) == before
