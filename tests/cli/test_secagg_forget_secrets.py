"""Round secrets do not outlive the federation (forward secrecy)."""

from __future__ import annotations

from tests.cli.conftest import (
    SITES,
    Fed,
    full_round,
    key_exchange,
    run,
    submit_all,
    train_and_submit,
)


def test_no_round_secrets_are_left_once_the_federation_is_complete(federation: Fed) -> None:
    fed = federation  # 2 rounds
    key_exchange(fed)
    full_round(fed)
    train_and_submit(fed)  # the last round ...
    assert run("aggregate", "-s", fed.coordinator).exit_code == 0
    submit_all(fed, SITES[:-1])  # ... closes before va reveals: va still holds its peers' shares
    assert run("aggregate", "-s", fed.coordinator, "--close").exit_code == 0
    assert run("submit", "-s", fed.site("va")).exit_code == 0  # "the federation is complete"
    assert run("personalize", "-s", fed.site("cleveland")).exit_code == 0
    for s in ("va", "cleveland"):
        assert sorted((fed.site(s) / "secagg").glob("*.json")) == [], s
