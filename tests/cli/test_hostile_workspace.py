"""Nothing unsigned ever acts: hostile files written into the workspace by whoever can write
there (a storage administrator, a compromised peer), through the real commands (issue 14).

Each test plants what an attack run planted and checks the command refuses or ignores it
in one clean line, deletes no secret, and that the federation still finishes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.cli.conftest import (
    SITES,
    Fed,
    full_round,
    key_exchange,
    make_federation,
    run,
    submit_all,
    train_and_submit,
)
from tests.signed_files import plain, read_signed, write_signed


def secrets_of(fed: Fed, r: int) -> dict[str, bool]:
    return {s: (fed.site(s) / "secagg" / f"{r:04d}.json").exists() for s in SITES}


def unmasking(fed: Fed) -> None:
    """Round 1 closed: the coordinator asked for unmasking shares; nobody revealed yet."""
    key_exchange(fed)
    train_and_submit(fed)
    assert run("aggregate", "-s", fed.coordinator).exit_code == 0
    assert (fed.workspace / "rounds/0001/unmask-request.json").exists()


def test_an_unsigned_result_neither_moves_a_site_on_nor_deletes_its_secrets(
    federation: Fed,
) -> None:
    fed = federation
    unmasking(fed)
    planted = fed.workspace / "rounds/0001/result.json"
    planted.write_text("{}")
    (fed.workspace / "rounds/0003").mkdir(parents=True)
    (fed.workspace / "rounds/0003/result.json").write_text("")
    assert all(secrets_of(fed, 1).values())

    for s in SITES:
        out = run("submit", "-s", fed.site(s))
        assert out.exit_code == 0, out.stderr
        assert "round 1: unmasking shares revealed" in out.stdout
        assert "ignored" in out.stderr and "result.json" in out.stderr
    status = run("status", "-s", fed.site("va"), "--json")
    assert status.exit_code == 3  # a file that does not verify: said, and the view leaves it out
    assert status.json()["round"] == 1 and status.json()["phase"] == "unmask"
    assert "rounds/0001/result.json" in "".join(status.json()["ignored"])

    # The coordinator moves the planted file aside and publishes the real result.
    out = run("aggregate", "-s", fed.coordinator)
    assert out.exit_code == 0, out.stderr
    assert "round 1: finished" in out.stdout
    assert read_signed(planted)["header"]["author"] == "coordinator"
    assert list((fed.workspace / "quarantine").iterdir())
    shutil.rmtree(fed.workspace / "rounds/0003")
    assert run("status", "-s", fed.site("va"), "--json").json()["round"] == 2
    full_round(fed)
    assert run("status", "-w", fed.workspace, "--json").json()["complete"]


def test_a_damaged_result_makes_status_fail_loudly_and_the_coordinator_republishes_it(
    federation: Fed,
) -> None:
    fed = federation
    key_exchange(fed)
    full_round(fed)
    result = fed.workspace / "rounds/0001/result.json"
    good = result.read_bytes()
    result.write_bytes(good[: len(good) // 2])  # truncated
    out = run("status", "-w", fed.workspace)
    assert out.exit_code == 3
    assert "rounds/0001/result.json" in out.stderr and "Traceback" not in out.stderr
    flipped = bytearray(plain(good))  # a bit flipped in the signed JSON, stored as before
    flipped[flipped.index(b'"survivors"') + 20] ^= 0x01
    result.write_bytes(good)
    write_signed(result, bytes(flipped))
    assert run("status", "-s", fed.site("cleveland")).exit_code == 3
    # The coordinator keeps every round's outcome: it restores the exact bytes.
    out = run("aggregate", "-s", fed.coordinator)
    assert out.exit_code in (0, 75), out.stderr
    assert result.read_bytes() == good
    assert run("status", "-w", fed.workspace).exit_code == 0


@pytest.mark.parametrize("how", ["replaced by round 1's", "deleted"])
def test_a_lost_round_model_is_published_again_by_the_coordinator(
    federation: Fed, how: str
) -> None:
    """Every site waits for round 2's model; if a restore or a hand copy loses it, the next
    `aggregate` (a cron job) publishes the same bytes again instead of waiting for ever."""
    fed = federation
    key_exchange(fed)
    full_round(fed)
    r1, r2 = fed.workspace / "rounds/0001", fed.workspace / "rounds/0002"
    originals = {p.name: p.read_bytes() for p in r2.glob("model*")}
    assert len(originals) == 2
    for name in originals:
        (r2 / name).unlink()
        if how != "deleted":
            shutil.copy(r1 / name, r2 / name)
    out = run("train-local", "-s", fed.site("va"))
    if how == "deleted":  # nothing it can do: the model is not there
        assert out.exit_code == 75, out.stderr
    else:  # a file in its place that does not verify: an alarm, naming it
        assert out.exit_code == 3 and "rounds/0002/model.json" in out.stderr, out.stderr
    out = run("aggregate", "-s", fed.coordinator)
    assert out.exit_code == 0, out.stderr
    assert "round 2: its model was missing or damaged; published again" in out.stdout
    assert {p.name: p.read_bytes() for p in r2.glob("model*")} == originals
    full_round(fed)
    assert read_signed(r2 / "result.json")["body"]["survivors"]  # round 2 finished


NESTED = b"[" * 200_000 + b"]" * 200_000


@pytest.mark.parametrize(
    "path",
    [
        "federation.json",
        "roster.json",
        "rounds/0001/key-roster.json",
        "rounds/0001/masking-roster.json",
        "rounds/0001/model.json",
    ],
)
def test_deeply_nested_json_in_a_coordinator_file_is_one_clean_error(
    federation: Fed, path: str
) -> None:
    fed = federation
    key_exchange(fed)
    target = fed.workspace / path
    target.unlink()
    target.write_bytes(NESTED)
    for args in (
        ("status", "-w", fed.workspace),
        ("submit", "-s", fed.site("va")),
        ("train-local", "-s", fed.site("va")),
    ):
        out = run(*args)
        assert out.exit_code in (0, 1, 3, 75), (args, out.stderr)
        assert clean(out.stderr), (args, out.stderr)


def clean(stderr: str) -> bool:
    """Only one-line errors and warnings: no traceback, nothing from inside the parser."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    ours = ("fedrema: error:", "fedrema: waiting:")
    return all(line.startswith((*ours, "! ")) for line in lines) and (
        sum(line.startswith(ours) for line in lines) <= 1
    )


def test_one_hostile_site_file_counts_as_never_sent_at_the_coordinator(federation: Fed) -> None:
    fed = federation
    key_exchange(fed)
    train_and_submit(fed, SITES[:3])
    bad = fed.workspace / "rounds/0001/submissions/va.json"
    bad.write_bytes(NESTED)
    out = run("aggregate", "-s", fed.coordinator, "--close")
    assert out.exit_code == 0, out.stderr
    assert "va" in out.stderr and "Traceback" not in out.stderr
    assert "dropped: va" in out.stdout
    submit_all(fed, SITES[:3])
    out = run("aggregate", "-s", fed.coordinator)
    assert out.exit_code == 0 and "round 1: finished with 3 sites" in out.stdout


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/urandom", "sparse", "fifo", "folder"])
def test_unbounded_or_special_files_are_refused_at_once(federation: Fed, special: str) -> None:
    fed = federation
    key_exchange(fed)
    train_and_submit(fed)
    target = fed.workspace / "rounds/0001/submissions/va.json"
    target.unlink()
    if special.startswith("/dev/"):
        target.symlink_to(special)
    elif special == "sparse":
        with open(target, "wb") as f:
            f.truncate(6 * 1024**3)
    elif special == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
    out = run("aggregate", "-s", fed.coordinator, "--close")
    assert out.exit_code == 0, out.stderr  # va's file refused; the round goes on without it
    assert "va" in out.stderr and "Traceback" not in out.stderr
    fed_json = fed.workspace / "federation.json"
    fed_json.rename(fed.root / "federation.json.bak")
    fed_json.symlink_to("/dev/zero")
    out = run("status", "-w", fed.workspace)
    assert out.exit_code == 3 and "federation.json" in out.stderr
    assert "symbolic link" in out.stderr


def test_odd_names_in_ledger_and_state_folders_are_passed_over(private_fed: Fed) -> None:
    fed = private_fed
    key_exchange(fed)
    (fed.workspace / "ledger/va").mkdir(parents=True, exist_ok=True)
    (fed.workspace / "ledger/va/².json").write_text("{}")
    (fed.site("va") / "rounds/backup-old").mkdir(parents=True)
    (fed.site("va") / "rounds/٣").mkdir(parents=True)  # an Arabic-Indic digit three
    out = run("train-local", "-s", fed.site("va"))
    assert out.exit_code == 0, out.stderr
    out = run("audit", "-w", fed.workspace)
    assert "Traceback" not in out.stderr and out.exit_code in (0, 3), out.stderr


def test_a_site_cannot_erase_its_own_spend(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, "--epsilon", "3", "--rounds", "4")
    key_exchange(fed)
    full_round(fed)
    full_round(fed)
    va = fed.site("va")
    for name in ("ledger.jsonl", "accountant.json"):
        (va / name).unlink()
    shutil.rmtree(va / "rounds")
    shutil.rmtree(fed.workspace / "ledger/va")
    out = run("train-local", "-s", va)
    assert out.exit_code == 3, out.stdout + out.stderr
    assert "rounds [1, 2]" in out.stderr and "under-report" in out.stderr
    assert not (va / "ledger.jsonl").exists() or (va / "ledger.jsonl").read_text() == ""


def test_an_enrollment_copied_from_another_federation_with_the_same_id_is_refused(
    tmp_path: Path,
) -> None:
    ours = make_federation(tmp_path / "ours", "--no-dp", sites=SITES[:3], approve=False)
    theirs = make_federation(tmp_path / "theirs", "--no-dp", sites=("va",), approve=False)
    shutil.copy(theirs.workspace / "enrollments/va.json", ours.workspace / "enrollments/va.json")
    out = run("approve", "-s", ours.coordinator, "--all")
    assert out.exit_code == 0, out.stderr
    assert "va" in out.stderr and "another federation" in out.stderr
    roster = json.loads((ours.workspace / "roster.json").read_text())["body"]
    assert [s["name"] for s in roster["sites"]] == list(SITES[:3])


@pytest.mark.parametrize("folder", ["rounds/0001/submissions", "withdrawals"])
def test_a_file_in_place_of_a_folder_stops_nobody(federation: Fed, folder: str) -> None:
    """A plain file where the coordinator lists a folder: one clean line at most, the round
    goes on, and it finishes once the file is gone."""
    fed = federation
    key_exchange(fed)
    planted = fed.workspace / folder
    if planted.is_dir():
        shutil.rmtree(planted)
    planted.write_bytes(b"not a folder")
    out = run("aggregate", "-s", fed.coordinator)
    assert out.exit_code in (0, 1, 3, 75), out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 1
    if out.exit_code in (1, 3):
        assert folder in out.stderr  # a refusal names what is in the way
    planted.unlink()
    full_round(fed)
    assert (fed.workspace / "rounds/0001/result.json").exists()


@pytest.mark.parametrize("kind", ["shares", "reveal"])
def test_deeply_nested_json_in_a_site_protocol_file_counts_as_never_sent(
    federation: Fed, kind: str
) -> None:
    """Item 2 of issue 14 at the command level for key shares and reveals (key adverts,
    heads and submissions go through the same reader; the fuzz matrix covers each)."""
    fed = federation
    if kind == "shares":
        for s in SITES:  # round 1's keys advertised; va's shares are the hostile file
            run("submit", "-s", fed.site(s))
        run("aggregate", "-s", fed.coordinator)
        submit_all(fed, SITES[:3])
        bad = fed.workspace / "rounds/0001/shares/va.json"
    else:
        unmasking(fed)
        submit_all(fed, SITES[:3])
        bad = fed.workspace / "rounds/0001/reveals/va.json"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(NESTED)
    out = run("aggregate", "-s", fed.coordinator, "--close")
    assert "Traceback" not in out.stderr and "RecursionError" not in out.stderr
    assert out.exit_code == 0, out.stderr  # va's file is refused; 3 of 4 are enough
    assert "va" in out.stderr
