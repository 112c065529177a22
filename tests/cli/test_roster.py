"""The roster over a study's life: approve says what it fixes, sites join and leave from the
next round, a site rotates its key, and earlier rounds stay auditable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer.testing

from fedrema_cli.app import app
from fedrema_cli.identity import Identity
from fedrema_cli.store.workspace import Workspace
from tests.cli.conftest import (
    make_federation,
    run,
    snapshot,
    submit_all,
)
from tests.signed_files import read_signed


def _join(fed, name: str) -> None:
    out = run(
        "init", "-w", fed.workspace, "-s", fed.site(name), "--site", name, "--train", fed.data(name)
    )
    assert out.exit_code == 0, out.stderr


def _result(fed, r: int) -> dict:
    return read_signed(fed.workspace / f"rounds/{r:04d}/result.json")["body"]


def test_approve_states_t_of_n_and_asks_before_leaving_out_an_enrolled_site(
    tmp_path: Path,
) -> None:
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland", "hungary", "va"), approve=False)
    before = snapshot(fed.workspace), snapshot(fed.coordinator)
    out = run("approve", "-s", fed.coordinator, "cleveland", "hungary")  # not a terminal
    assert out.exit_code == 1, out.stdout
    assert "leaves out enrolled site(s) va" in out.stderr and "--yes" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert (snapshot(fed.workspace), snapshot(fed.coordinator)) == before
    # At a terminal it asks; "no" (the default) signs nothing.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(typer.testing._NamedTextIOWrapper, "isatty", lambda self: True)
        asked = typer.testing.CliRunner().invoke(
            app, ["approve", "-s", str(fed.coordinator), "cleveland", "hungary"], input="\n"
        )
    assert "leaves out enrolled site(s) va. Sign it anyway? [y/N]" in asked.stdout, asked.stderr
    assert asked.exit_code == 0 and "nothing was signed" in asked.stdout
    assert (snapshot(fed.workspace), snapshot(fed.coordinator)) == before
    out = run("approve", "-s", fed.coordinator, "cleveland", "hungary", "--yes")
    assert out.exit_code == 0, out.stderr
    assert "roster version 1 signed, in force from round 1" in out.stdout
    assert "t = 2 of n = 2" in out.stdout and "default" in out.stdout
    assert "left out (enrolled, not approved): va" in out.stdout
    listed = run("approve", "-s", fed.coordinator, "--json").json()
    assert (listed["threshold"], listed["n"], listed["version"]) == (2, 2, 1)


def test_a_site_added_and_one_removed_take_effect_from_the_next_round(tmp_path: Path) -> None:
    sites = ("cleveland", "hungary", "switzerland")
    fed = make_federation(tmp_path, "--no-dp", sites=sites)
    _key_exchange(fed, sites)  # round 1's keys are fixed for the three
    _join(fed, "va")
    out = run("approve", "-s", fed.coordinator, "va")
    assert out.exit_code == 0, out.stderr
    assert "roster version 2 signed, in force from round 2" in out.stdout
    assert "t = 3 of n = 4" in out.stdout and "added va" in out.stdout
    out = run("approve", "-s", fed.coordinator, "--remove", "switzerland", "--json")
    assert out.exit_code == 0, out.stderr
    assert out.json()["removed"] == ["switzerland"] and out.json()["n"] == 3
    assert out.json()["effective_from_round"] == 2
    # Round 1 runs on the roster it started with: va is not part of it yet.
    out = run("train-local", "-s", fed.site("va"))
    assert out.exit_code == 75 and "joins the federation at round 2" in out.stderr
    full_round_of(fed, sites, also=("va",))  # va advertises keys for round 2
    assert _result(fed, 1)["survivors"] == list(sites)
    # Round 2: va is in, switzerland is out.
    out = run("train-local", "-s", fed.site("switzerland"))
    assert out.exit_code == 1 and "removed switzerland" in out.stderr
    status = run("status", "-s", fed.site("switzerland"), "--json").json()
    assert status["next"].startswith("removed by the coordinator from round 2"), status
    full_round_of(fed, ("cleveland", "hungary", "va"))
    assert _result(fed, 2)["survivors"] == ["cleveland", "hungary", "va"]
    out = run("approve", "-s", fed.coordinator, "--all", "--yes")  # no round left to change
    assert out.exit_code == 0 and "nothing changed" in out.stdout
    out = run("rotate-key", "-s", fed.site("cleveland"))  # it could never take effect
    assert out.exit_code == 1 and "would never take effect" in out.stderr, out.stderr
    assert not (fed.workspace / "rotations").exists()


def _key_exchange(fed, sites: tuple[str, ...]) -> None:
    for _ in range(2):
        submit_all(fed, sites)
        assert run("aggregate", "-s", fed.coordinator).exit_code == 0


def full_round_of(fed, sites: tuple[str, ...], also: tuple[str, ...] = ()) -> None:
    """``sites`` train and submit; ``also`` only submit (e.g. keys for a later round)."""
    for s in sites:
        out = run("train-local", "-s", fed.site(s))
        assert out.exit_code == 0, (s, out.stderr)
    submit_all(fed, sites + also)
    assert run("aggregate", "-s", fed.coordinator).exit_code == 0
    submit_all(fed, sites + also)
    out = run("aggregate", "-s", fed.coordinator)
    assert out.exit_code == 0, out.stderr


def test_key_rotation_keeps_earlier_rounds_auditable_and_refuses_a_forged_rotation(
    tmp_path: Path,
) -> None:
    fed = make_federation(
        tmp_path, "--epsilon", "3", "--rounds", "3", sites=("cleveland", "hungary")
    )
    ws = Workspace.open(str(fed.workspace))
    fed_id = json.loads((fed.workspace / "federation.json").read_text())["body"]["federation_id"]
    old_key = json.loads((fed.workspace / "roster.json").read_text())["body"]["sites"][0]
    # Someone without cleveland's key asks to replace it: refused, never approved.
    mallory = Identity.generate()
    ws.put(
        "rotations/cleveland/0001",
        kind="key-rotation",
        federation=fed_id,
        round=0,
        author="site:cleveland",
        identity=mallory,
        body={"site": "cleveland", "keys": mallory.public.to_json()},
    )
    pair = ("cleveland", "hungary")
    _key_exchange(fed, pair)
    full_round_of(fed, pair)
    out = run("rotate-key", "-s", fed.site("cleveland"))
    assert out.exit_code == 0, out.stderr
    assert "rotations/cleveland/0002.json" in out.stdout
    new_fp = out.stdout.split("new key ")[1].split()[0]
    # the coordinator sees the fingerprint to compare, beside the key in force
    listing = run("approve", "-s", fed.coordinator)
    assert new_fp in listing.stdout and "asks to rotate its key" in listing.stdout
    rows = {
        e["site"]: e for e in run("approve", "-s", fed.coordinator, "--json").json()["enrollments"]
    }
    assert rows["cleveland"]["pending_new_key"] == new_fp
    assert rows["hungary"]["pending_new_key"] is None
    out = run("approve", "-s", fed.coordinator, "cleveland", "--json")
    assert out.exit_code == 0, out.stderr
    got = out.json()
    assert got["rotated"] == ["cleveland"] and got["effective_from_round"] == 3
    assert got["rotated_fingerprints"] == {"cleveland": new_fp}
    row = next(e for e in got["enrollments"] if e["site"] == "cleveland")
    assert row["fingerprint"] == new_fp and row["pending_new_key"] is None
    assert "0001 refused" in got["refused_enrollments"]["cleveland"]
    roster = json.loads((fed.workspace / "rosters/0002.json").read_text())["body"]
    new_key = roster["sites"][0]
    assert new_key["name"] == "cleveland" and new_key["sign_pk"] != old_key["sign_pk"]
    assert new_key["sign_pk"] != mallory.public.sign_pk
    assert (
        roster["sites"][1]
        == json.loads((fed.workspace / "roster.json").read_text())["body"]["sites"][1]
    )  # nobody else's key changes
    full_round_of(fed, pair)  # round 2: still the old key
    full_round_of(fed, pair)  # round 3: the new key
    for r, key in ((1, old_key), (3, new_key)):
        entry = read_signed(fed.workspace / f"ledger/cleveland/{r:04d}.json")
        assert entry["header"]["author"] == "site:cleveland"
        assert _signed_by(entry, key["sign_pk"]), r
    out = run("audit", "-w", fed.workspace)
    assert out.exit_code == 0, out.stdout + out.stderr
    out = run("privacy", "report", "-s", fed.site("cleveland"))
    assert out.exit_code == 0, out.stdout + out.stderr


def test_a_site_withdraws_after_its_key_rotation_is_approved(tmp_path: Path) -> None:
    """A withdrawal is a per-federation file: it is signed, and checked, with the site's
    latest approved key, even while the round in progress still uses the old one."""
    trio = ("cleveland", "hungary", "va")
    fed = make_federation(tmp_path, "--no-dp", "--rounds", "3", "--threshold", "2", sites=trio)
    _key_exchange(fed, trio)
    full_round_of(fed, trio)
    assert run("rotate-key", "-s", fed.site("va")).exit_code == 0
    out = run("approve", "-s", fed.coordinator, "va", "--json")
    assert out.exit_code == 0 and out.json()["rotated"] == ["va"], out.stderr
    out = run("withdraw", "-s", fed.site("va"), "--yes", "--json")
    assert out.exit_code == 0, out.stderr
    pair = ("cleveland", "hungary")
    full_round_of(fed, pair)  # aggregate waits for va no more: its notice verifies
    status = run("status", "-w", fed.workspace, "--json").json()
    assert "va" in status["withdrawn"], status
    assert not (fed.workspace / "quarantine").exists()


def _signed_by(envelope: dict, sign_pk: str) -> bool:
    from crypto.canonical import canonical_json
    from fedrema_cli.errors import IntegrityError
    from fedrema_cli.identity import PublicIdentity, unb64

    message = canonical_json({"header": envelope["header"], "body": envelope["body"]})
    try:
        PublicIdentity(sign_pk=sign_pk, seal_pk="").verify(
            unb64(envelope["signature"], what="signature"), message, who="cleveland"
        )
    except IntegrityError:
        return False
    return True


def test_a_forged_roster_version_is_refused(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland", "hungary"))
    signed = json.loads((fed.workspace / "roster.json").read_text())
    body = {**signed["body"], "version": 2, "effective_from_round": 1}
    body["previous_sha256"] = Workspace.open(str(fed.workspace)).raw_sha256("roster")
    body["sites"] = [body["sites"][0]]  # drop hungary, in the coordinator's name
    Workspace.open(str(fed.workspace)).put(
        "rosters/0002",
        kind="roster",
        federation=signed["header"]["federation"],
        round=0,
        author="coordinator",
        identity=Identity.generate(),
        body=body,
    )
    for party in (fed.site("hungary"), fed.coordinator):
        out = run("status", "-s", party)
        assert out.exit_code == 3, (out.stdout, out.stderr)
        assert "rosters/0002.json" in out.stderr
