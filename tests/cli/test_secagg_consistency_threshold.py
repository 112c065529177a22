"""The optional consistency check only means something with t > n/2, and counts every signer."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrema_cli.roles import secure
from tests.cli.conftest import key_exchange, make_federation, run, train_and_submit


def test_the_consistency_check_refuses_a_threshold_of_half_the_sites_or_less(
    tmp_path: Path,
) -> None:
    # n = 4, t = 2: {cleveland, hungary} and {switzerland, va} could each be shown a set
    # naming the other pair dropped; each pair has t signatures on its own set.
    fed = make_federation(
        tmp_path, "--no-dp", "--consistency-check", "--threshold", "2", approve=False
    )
    out = run("approve", "-s", fed.coordinator, "--all")
    assert out.exit_code == 1 and "above half the sites" in out.stderr
    assert not (fed.workspace / "roster.json").exists()


def test_the_consistency_check_counts_signatures_of_sites_this_view_calls_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = make_federation(tmp_path, "--no-dp", "--consistency-check")
    key_exchange(fed)
    train_and_submit(fed)
    assert run("aggregate", "-s", fed.coordinator).exit_code == 0  # U3 published
    assert run("submit", "-s", fed.site("cleveland")).exit_code == 0  # signs the real U3
    real = secure.unmask_request

    def shown_to_va(f, r):  # type: ignore[no-untyped-def]
        request = real(f, r)
        if f.me != "va":
            return request
        # cleveland is claimed dropped to va only; cleveland already signed the real set.
        return type(request)(
            request.round, request.survivors[1:], (*request.dropped, request.survivors[0])
        )

    monkeypatch.setattr(secure, "unmask_request", shown_to_va)
    out = run("submit", "-s", fed.site("va"))
    assert out.exit_code == 3 and "different survivor set" in out.stderr
    reveals = fed.workspace / "rounds/0001/reveals"
    assert not reveals.exists() or not any(reveals.iterdir())
