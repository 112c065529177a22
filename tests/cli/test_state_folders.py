"""State folders and their workspace: wrong, damaged, half-written, relative or replaced.

Each case is a mistake an operator makes (or a crash leaves behind); each must end in one line,
a meaningful exit code, and no key, enrollment or signature lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedrema_cli.errors import StoreError
from fedrema_cli.identity import Identity
from fedrema_cli.protocol import exchange
from tests.cli.conftest import Fed, make_federation, run, snapshot


def _one_line_error(out, code: int, *needles: str) -> None:
    assert out.exit_code == code, (out.exit_code, out.stdout, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fedrema: error:"), out.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_joining_as_a_site_in_the_coordinators_folder_keeps_its_keys(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland", "hungary"), approve=False)
    before = snapshot(fed.coordinator), snapshot(fed.workspace)
    out = run(
        "init",
        "-w",
        fed.workspace,
        "-s",
        fed.coordinator,
        "--site",
        "va",
        "--train",
        fed.data("va"),
    )
    _one_line_error(out, 1, "coordinator's state folder")
    assert (snapshot(fed.coordinator), snapshot(fed.workspace)) == before
    # and the coordinator can still sign a roster every site accepts
    assert run("approve", "-s", fed.coordinator, "--all").exit_code == 0
    assert run("status", "-s", fed.site("cleveland")).exit_code == 0


def test_creating_a_federation_in_a_sites_folder_keeps_its_keys(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland", "hungary"), approve=False)
    site = fed.site("cleveland")
    before = snapshot(site)
    other = tmp_path / "other-ws"
    out = run("init", "-w", other, "-s", site, "--preset", "heart-disease", "--no-dp")
    _one_line_error(out, 1, "site's state folder")
    assert snapshot(site) == before
    assert not (other / "federation.json").exists()


def test_a_coordinator_whose_key_was_replaced_signs_nothing(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland", "hungary"), approve=False)
    (fed.coordinator / "identity.json").write_text(json.dumps(Identity.generate().to_json()))
    before = snapshot(fed.workspace)
    out = run("approve", "-s", fed.coordinator, "--all")
    _one_line_error(out, 1, "not the one that signed this federation")
    assert snapshot(fed.workspace) == before


def _join(fed, name: str) -> object:
    return run(
        "init",
        "-w",
        fed.workspace,
        "-s",
        fed.site(name),
        "--site",
        name,
        "--train",
        fed.data(name),
    )


def test_a_join_whose_enrollment_failed_can_be_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland", "hungary"), approve=False)
    real = exchange.write_enrollment

    def unwritable(*args: object, **kwargs: object) -> bool:
        raise StoreError("cannot write ws/enrollments/va.json: Permission denied")

    monkeypatch.setattr(exchange, "write_enrollment", unwritable)
    out = _join(fed, "va")
    assert out.exit_code == 1 and "Permission denied" in out.stderr
    monkeypatch.setattr(exchange, "write_enrollment", real)
    out = _join(fed, "va")  # the folder is writable again: the same command finishes the join
    assert out.exit_code == 0, out.stderr
    assert (fed.workspace / "enrollments" / "va.json").exists()
    listed = run("approve", "-s", fed.coordinator, "--json").json()["enrollments"]
    assert [e["site"] for e in listed] == ["cleveland", "hungary", "va"]


def test_joining_after_the_roster_is_approved_enrolls_and_waits_for_approval(
    tmp_path: Path,
) -> None:
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland", "hungary"))
    before = snapshot(fed.workspace)
    out = _join(fed, "va")
    assert out.exit_code == 0, out.stderr
    added = set(snapshot(fed.workspace)) - set(before)
    assert added == {"enrollments/va.json"}, added  # the request, nothing else
    out = run("train-local", "-s", fed.site("va"))
    assert out.exit_code == 1 and "does not include va" in out.stderr
    assert "fedrema approve" in out.stderr


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: {k: v for k, v in m.items() if k != "workspace"},
        lambda m: {k: v for k, v in m.items() if k != "data"},
        lambda m: {**m, "data": {"test": None}},
        lambda m: [m],
    ],
)
def test_a_damaged_site_record(federation: Fed, edit) -> None:
    path = federation.site("va") / "site.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    for command in ("status", "train-local", "submit"):
        out = run(command, "-s", federation.site("va"))
        assert out.exit_code == 1, (command, out.stdout, out.stderr)
        assert out.stderr.startswith("fedrema: error:") and "site.json" in out.stderr


def test_a_damaged_coordinator_record(federation: Fed) -> None:
    path = federation.coordinator / "coordinator.json"
    meta = json.loads(path.read_text())
    del meta["federation_sha256"]
    path.write_text(json.dumps(meta))
    out = run("aggregate", "-s", federation.coordinator)
    assert out.exit_code == 1, (out.stdout, out.stderr)
    assert out.stderr.startswith("fedrema: error:") and "coordinator.json" in out.stderr


def test_a_relative_workspace_is_found_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland", "hungary"), workspace="ws")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for party in (fed.site("cleveland"), fed.coordinator):
        out = run("status", "-s", party, "--json")
        assert out.exit_code == 0, out.stderr
        assert out.json()["round"] == 1
    out = run("submit", "-s", fed.site("cleveland"))
    assert out.exit_code == 0, out.stderr
    assert (tmp_path / "ws" / "rounds" / "0001" / "keys" / "cleveland.json").exists()


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


def test_status_of_an_enrolled_site_waiting_for_or_left_out_of_the_roster(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland", "hungary", "va"), approve=False)
    out = run("status", "-s", fed.site("va"), "--json")
    assert out.exit_code == 0, out.stderr
    assert out.json()["phase"] == "enrolling" and "approve" in out.json()["next"]
    assert run("approve", "-s", fed.coordinator, "cleveland", "hungary", "--yes").exit_code == 0
    before = snapshot(fed.site("va")), snapshot(fed.workspace)
    out = run("status", "-s", fed.site("va"))
    assert out.exit_code == 0, out.stderr
    assert "you are va" in out.stdout and "not admitted" in out.stdout
    out = run("status", "-s", fed.site("va"), "--json")
    assert out.exit_code == 0 and out.json()["next"].startswith("not admitted")
    assert "fedrema approve SITE" in out.json()["next"]
    for command in ("train-local", "submit", "personalize"):  # still refused, with what to do
        _one_line_error(run(command, "-s", fed.site("va")), 1, "does not include va", "next:")
    assert (snapshot(fed.site("va")), snapshot(fed.workspace)) == before
