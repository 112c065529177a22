"""After the last round nothing will ever come: `submit` and `aggregate` are done (exit 0),
not "nothing to do yet, run again later" (75), so cron jobs and `--wait` loops can stop."""

from __future__ import annotations

from tests.cli.conftest import Fed, full_round, key_exchange, run


def test_submit_and_aggregate_once_the_federation_is_complete(federation: Fed) -> None:
    fed = federation
    key_exchange(fed)
    full_round(fed)
    full_round(fed)
    assert run("status", "-s", fed.coordinator, "--json").json()["complete"]
    out = run("aggregate", "-s", fed.coordinator)
    assert out.exit_code == 0, out.stderr
    assert "federation complete" in out.stdout
    out = run("aggregate", "-s", fed.coordinator, "--wait", "--timeout", "1", "--json")
    assert out.exit_code == 0 and out.json()["complete"]
    out = run("submit", "-s", fed.site("va"))
    assert out.exit_code == 0, out.stderr
    assert "personalize" in out.stdout
    out = run("submit", "-s", fed.site("va"), "--wait", "--timeout", "1")
    assert out.exit_code == 0, out.stderr
