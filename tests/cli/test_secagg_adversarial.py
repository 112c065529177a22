"""Secure aggregation against a coordinator that lies, and secrets that must not outlive a round."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from crypto.hazmat import x25519
from crypto.secagg import KeyRoster
from fedrema_cli.protocol import secagg as secure
from tests.cli.conftest import (
    SITES,
    Fed,
    key_exchange,
    make_federation,
    run,
    run_rounds,
    snapshot,
    submit_all,
    train_and_submit,
)


def equivocate_to_va(monkeypatch: pytest.MonkeyPatch) -> Callable[..., object]:
    """Show va alone an unmask request that claims cleveland dropped (as an equivocating
    coordinator or storage would: va would reveal cleveland's key); returns the real reader."""
    real = secure.unmask_request

    def shown_to_va(f, r):  # type: ignore[no-untyped-def]
        request = real(f, r)
        if f.me != "va":
            return request
        return type(request)(
            request.round, request.survivors[1:], (*request.dropped, request.survivors[0])
        )

    monkeypatch.setattr(secure, "unmask_request", shown_to_va)
    return real


def test_a_site_refuses_keys_in_the_key_roster_that_their_site_did_not_sign(
    federation: Fed, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = federation
    submit_all(fed)  # round-1 key adverts
    assert run("aggregate", "-s", fed.coordinator).exit_code == 0  # U1 published
    real = secure.key_roster

    def shown_to_va(f, r):  # type: ignore[no-untyped-def]
        roster = real(f, r)
        if f.me != "va":
            return roster
        # A coordinator in the middle: hungary's keys replaced by its own, shown to va only.
        fake = {"c_pk": x25519.public_key(b"\x07" * 32), "s_pk": x25519.public_key(b"\x08" * 32)}
        adverts = [dataclasses.replace(a, **fake) if a.party == 2 else a for a in roster.adverts]
        return KeyRoster(roster.round, tuple(adverts))

    monkeypatch.setattr(secure, "key_roster", shown_to_va)
    out = run("submit", "-s", fed.site("va"))
    assert out.exit_code == 3 and "did not sign" in out.stderr
    assert not (fed.workspace / "rounds/0001/shares/va.json").exists()  # no share left va


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


def _unmask_request_published(tmp_path: Path) -> Fed:
    """A consistency-checked federation whose round 1 has every update in and U3 out."""
    fed = make_federation(tmp_path, "--no-dp", "--consistency-check")
    key_exchange(fed)
    train_and_submit(fed)
    assert run("aggregate", "-s", fed.coordinator).exit_code == 0  # U3 published
    return fed


def test_the_consistency_check_counts_signatures_of_sites_this_view_calls_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = _unmask_request_published(tmp_path)
    assert run("submit", "-s", fed.site("cleveland")).exit_code == 0  # signs the real U3
    equivocate_to_va(monkeypatch)  # cleveland already signed the real set
    out = run("submit", "-s", fed.site("va"))
    assert out.exit_code == 3 and "different survivor set" in out.stderr
    reveals = fed.workspace / "rounds/0001/reveals"
    assert not reveals.exists() or not any(reveals.iterdir())


def test_no_round_secrets_are_left_once_the_federation_is_complete(federation: Fed) -> None:
    fed = federation  # 2 rounds
    run_rounds(fed, 1)
    train_and_submit(fed)  # the last round ...
    assert run("aggregate", "-s", fed.coordinator).exit_code == 0
    submit_all(fed, SITES[:-1])  # ... closes before va reveals: va still holds its peers' shares
    assert run("aggregate", "-s", fed.coordinator, "--close").exit_code == 0
    assert run("submit", "-s", fed.site("va")).exit_code == 0  # "the federation is complete"
    assert run("personalize", "-s", fed.site("cleveland")).exit_code == 0
    for s in ("va", "cleveland"):
        assert sorted((fed.site(s) / "secagg").glob("*.json")) == [], s


def test_the_consistency_check_catches_a_coordinator_that_equivocates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = _unmask_request_published(tmp_path)
    real = equivocate_to_va(monkeypatch)  # va is shown a different survivor set
    assert run("submit", "-s", fed.site("va")).exit_code == 0  # signs what it saw, then waits
    assert (fed.workspace / "rounds/0001/consistency/va.json").exists()
    monkeypatch.setattr(secure, "unmask_request", real)
    before = snapshot(fed.workspace)
    out = run("submit", "-s", fed.site("cleveland"))
    assert out.exit_code == 3 and "different survivor set" in out.stderr
    reveals = fed.workspace / "rounds/0001/reveals"
    assert not reveals.exists() or not any(reveals.iterdir())  # nobody revealed anything
    assert sorted(set(snapshot(fed.workspace)) - set(before)) == [
        "rounds/0001/consistency/cleveland.json"
    ]


def test_a_site_refuses_a_key_share_ciphertext_its_peer_did_not_encrypt(federation: Fed) -> None:
    """A site reads the ciphertexts addressed to it without their senders' envelopes (their
    AEAD authenticates them): one put in place by the coordinator or the storage, even a
    real ciphertext of another pair, fails decryption, and the site sends no masked update."""
    fed = federation
    key_exchange(fed)
    shares = fed.workspace / "rounds/0001/shares"
    mine = shares / "hungary.to-4.bin"  # hungary -> va (party 4)
    mine.chmod(0o644)
    mine.write_bytes((shares / "hungary.to-3.bin").read_bytes())  # hungary -> switzerland
    out = run("train-local", "-s", fed.site("va"))
    assert out.exit_code == 0, out.stderr
    out = run("submit", "-s", fed.site("va"))
    assert out.exit_code != 0 and "aborted" in out.stderr and "Traceback" not in out.stderr
    assert "shares from party 2 are invalid" in out.stderr
    assert not (fed.workspace / "rounds/0001/submissions/va.json").exists()
