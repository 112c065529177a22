"""A site checks every key in the coordinator's key roster against the advert its site signed."""

from __future__ import annotations

import dataclasses

import pytest

from crypto.hazmat import x25519
from crypto.secagg import KeyRoster
from fedrema_cli.roles import secure
from tests.cli.conftest import Fed, run, submit_all


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
