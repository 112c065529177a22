"""A site whose round was closed without it must not train (and spend budget) for it."""

from __future__ import annotations

from tests.cli.conftest import Fed, key_exchange, run, snapshot, train_and_submit


def test_train_local_after_the_round_closed_without_this_site(federation: Fed) -> None:
    fed = federation
    key_exchange(fed)
    train_and_submit(fed, ("cleveland", "hungary", "switzerland"))
    out = run("aggregate", "-s", fed.coordinator, "--close")
    assert out.exit_code == 0, out.stderr
    assert "dropped: va" in out.stdout
    before = snapshot(fed.site("va")), snapshot(fed.workspace)
    out = run("train-local", "-s", fed.site("va"))
    assert out.exit_code == 1, (out.stdout, out.stderr)
    assert "closed without va" in out.stderr and "fedrema submit" in out.stderr
    assert (snapshot(fed.site("va")), snapshot(fed.workspace)) == before
    # which is what status already tells this site
    status = run("status", "-s", fed.site("va"), "--json").json()
    assert "not part of this round" in status["next"]
