"""Before the roster is signed a site has nothing to do yet: exit 75 (README: "other parties
must act first"), so a cron job retries instead of reporting an error."""

from __future__ import annotations

from pathlib import Path

from tests.cli.conftest import make_federation, run, snapshot


def test_site_commands_before_approval_mean_not_yet(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland", "hungary"), approve=False)
    before = snapshot(fed.workspace), snapshot(fed.site("cleveland"))
    for command in ("train-local", "submit"):
        out = run(command, "-s", fed.site("cleveland"))
        assert out.exit_code == 75, (command, out.stdout, out.stderr)
        assert "fedrema approve" in out.stderr
    assert (snapshot(fed.workspace), snapshot(fed.site("cleveland"))) == before
    out = run("aggregate", "-s", fed.coordinator)  # the coordinator's own step: not "later"
    assert out.exit_code == 1 and "fedrema approve" in out.stderr
