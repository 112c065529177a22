"""The five commands end to end, and the bad inputs that must fail cleanly (issue #2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import Fed, full_round, key_exchange, make_federation, run, snapshot


def test_a_whole_federation_through_the_cli(federation: Fed) -> None:
    fed = federation
    status = run("status", "-s", fed.coordinator, "--json").json()
    assert status["round"] == 1 and status["phase"] == "waiting"
    assert status["next_for"]["cleveland"] == "`fedrema submit`"
    key_exchange(fed)
    status = run("status", "-s", fed.site("va"), "--json").json()
    assert status["phase"] == "collect" and status["you"] == "va"
    assert status["next"] == "`fedrema train-local`, then `fedrema submit`"
    full_round(fed)
    status = run("status", "-s", fed.coordinator, "--json").json()
    assert status["round"] == 2 and status["phase"] == "collect"
    full_round(fed)
    assert run("status", "-s", fed.coordinator, "--json").json()["complete"]
    export = fed.root / "model-va"
    out = run("personalize", "-s", fed.site("va"), "--export", export, "--json").json()
    assert out["complete"] and out["after_round"] == 2
    assert 0.0 <= out["metrics"]["accuracy"] <= 1.0 and out["metrics"]["n"] == 45
    assert (export / "model.safetensors").exists() and (export / "model-card.json").exists()


def test_status_tells_each_party_what_to_do_next(federation: Fed) -> None:
    fed = federation
    key_exchange(fed)
    run("train-local", "-s", fed.site("cleveland"))
    out = run("status", "-s", fed.site("cleveland"), "--json").json()
    assert out["next"] == "`fedrema submit`" and out["next_command"] == "submit"
    run("submit", "-s", fed.site("cleveland"))
    out = run("status", "-s", fed.site("cleveland"), "--json").json()
    assert out["next"] == "wait for the coordinator" and out["next_command"] is None
    coord = run("status", "-s", fed.coordinator, "--json").json()
    assert coord["missing"] == ["hungary", "switzerland", "va"]
    assert "wait for hungary, switzerland, va" in coord["next"]
    assert coord["next_command"] is None  # waiting; `aggregate --close` is the exception
    text = run("status", "-s", fed.coordinator)
    assert "waiting for hungary, switzerland, va" in text.stdout


# -- bad input: one line, non-zero exit, nothing changed -----------------------------------


def _one_line_error(out, code: int, *needles: str) -> None:
    assert out.exit_code == code, (out.exit_code, out.stdout, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    # a wait (75) is worded as one, so a log watcher on "error" stays quiet
    assert lines[0].startswith("fedrema: waiting:" if code == 75 else "fedrema: error:")
    assert "Traceback" not in out.stderr + out.stdout
    for n in needles:
        assert n in lines[0], lines[0]


def _join(fed: Fed, name: str, train: Path) -> object:
    return run("init", "-w", fed.workspace, "-s", fed.root / name, "--site", name, "--train", train)


def test_wrong_column_name_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland", "hungary"), approve=False)
    bad = tmp_path / "renamed.csv"
    bad.write_text(fed.data("va").read_text().replace("thalach", "thalac", 1))
    before = snapshot(fed.workspace)
    out = _join(fed, "va", bad)
    _one_line_error(out, 1, "renamed.csv", "thalach", "thalac")
    assert snapshot(fed.workspace) == before
    assert not (tmp_path / "va").exists() or not any((tmp_path / "va").iterdir())


def test_missing_file(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland", "hungary"), approve=False)
    before = snapshot(fed.workspace)
    out = _join(fed, "va", tmp_path / "nope.csv")
    _one_line_error(out, 1, "nope.csv")
    assert snapshot(fed.workspace) == before


@pytest.mark.parametrize("content", [b"\x00\x01\x02\xff\xfe garbage", b"age,sex\n1,2,3,4\n"])
def test_corrupt_csv(tmp_path: Path, content: bytes) -> None:
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland", "hungary"), approve=False)
    bad = tmp_path / "corrupt.csv"
    bad.write_bytes(content)
    before = snapshot(fed.workspace)
    out = _join(fed, "va", bad)
    _one_line_error(out, 1, "corrupt.csv")
    assert snapshot(fed.workspace) == before


def test_aggregate_before_anyone_submitted(federation: Fed) -> None:
    fed = federation
    before = snapshot(fed.workspace), snapshot(fed.coordinator)
    out = run("aggregate", "-s", fed.coordinator)
    _one_line_error(out, 75, "nothing to aggregate yet", "cleveland")
    assert (snapshot(fed.workspace), snapshot(fed.coordinator)) == before


def test_train_local_twice_in_one_round(federation: Fed) -> None:
    fed = federation
    key_exchange(fed)
    assert run("train-local", "-s", fed.site("va")).exit_code == 0
    before = snapshot(fed.workspace), snapshot(fed.site("va"))
    out = run("train-local", "-s", fed.site("va"))  # cron re-runs it: a no-op, not a failure
    assert out.exit_code == 0, out.stderr
    assert "round 1 already trained; next: `fedrema submit`" in out.stdout
    assert run("train-local", "-s", fed.site("va"), "--json").json()["already_trained"]
    assert (snapshot(fed.workspace), snapshot(fed.site("va"))) == before


def test_submit_before_training_says_to_train(federation: Fed) -> None:
    fed = federation
    key_exchange(fed)
    before = snapshot(fed.workspace)
    out = run("submit", "-s", fed.site("va"))
    _one_line_error(out, 75, "not trained", "train-local")
    # the documented cron line's `submit --wait` does not wait for what only this site can do
    out = run("submit", "-s", fed.site("va"), "--wait", "--timeout", "60")
    _one_line_error(out, 75, "not trained", "train-local")
    assert snapshot(fed.workspace) == before


def test_commands_refuse_a_folder_that_is_not_a_state_folder(tmp_path: Path) -> None:
    out = run("train-local", "-s", tmp_path)
    _one_line_error(out, 1, "not a site state folder")
    out = run("aggregate", "-s", tmp_path)
    _one_line_error(out, 1, "not a coordinator state folder")


def test_init_twice_changes_nothing(federation: Fed) -> None:
    fed = federation
    before = snapshot(fed.workspace)
    out = run("init", "-w", fed.workspace, "-s", fed.root / "other", "--preset", "heart-disease")
    _one_line_error(out, 1, "already holds a federation")
    out = run(
        "init", "-w", fed.workspace, "-s", fed.site("va"), "--site", "va", "--train", fed.data("va")
    )
    _one_line_error(out, 1, "already holds site")  # other data than it joined with
    again = ("--site", "va", "--train", fed.data("va"), "--test", fed.data("va", "test"))
    out = run("init", "-w", fed.workspace, "-s", fed.site("va"), *again)
    assert out.exit_code == 0, out.stderr  # the very same init again: nothing to do
    assert "already joined" in out.stdout and "approve" not in out.stdout
    assert snapshot(fed.workspace) == before
    # Another study under the same federation id: va's state folder belongs to the first.
    other = make_federation(fed.root / "second", "--no-dp", sites=("cleveland", "va"))
    before_other = snapshot(other.workspace)
    out = run("init", "-w", other.workspace, "-s", fed.site("va"), *again)
    _one_line_error(out, 1, "another federation", "new folder")
    assert snapshot(other.workspace) == before_other


def test_an_identity_copied_from_another_site_is_named(federation: Fed) -> None:
    fed = federation
    mine = fed.site("va") / "identity.json"
    mine.write_bytes((fed.site("hungary") / "identity.json").read_bytes())
    for cmd in ("status", "submit"):
        out = run(cmd, "-s", fed.site("va"))
        _one_line_error(out, 1, "identity.json does not hold va's key", "backup")


def test_joining_with_the_wrong_coordinator_fingerprint_is_refused(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland",), approve=False)
    out = run(
        "init",
        "-w",
        fed.workspace,
        "-s",
        tmp_path / "va",
        "--site",
        "va",
        "--train",
        fed.data("va"),
        "--coordinator-fingerprint",
        "0000:0000:0000:0000:0000:0000:0000:0000",
    )
    _one_line_error(out, 3, "fingerprint")


def test_joining_without_a_fingerprint_shows_the_unchecked_one(tmp_path: Path) -> None:
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland",), approve=False)
    coord = run("status", "-w", fed.workspace, "--json").json()["coordinator_fingerprint"]
    join = ("init", "-w", fed.workspace, "--site", "va", "--train", fed.data("va"))
    out = run(*join[:3], "-s", tmp_path / "va", *join[3:])
    assert out.exit_code == 0, out.stderr
    assert "unchecked" in out.stderr and coord in out.stderr.replace("\n", "")
    checked = run(*join[:3], "-s", tmp_path / "hu", "--site", "hungary", "--train",
                  fed.data("hungary"), "--coordinator-fingerprint", coord, "--json")  # fmt: skip
    assert checked.exit_code == 0 and "unchecked" not in checked.stderr
    assert checked.json()["coordinator_fingerprint_checked"] is True


def test_init_refuses_options_of_the_other_role(federation: Fed, tmp_path: Path) -> None:
    """A hospital cannot set the federation's ε (the coordinator's signed config does), and
    a federation is created without data: either is a usage error, and nothing is written."""
    join = ("init", "-w", federation.workspace, "-s", tmp_path / "va2", "--site", "va")
    out = run(*join, "--train", federation.data("va"), "--epsilon", "1", "--rounds", "5")
    _one_line_error(out, 2, "--rounds, --epsilon", "signed config")
    assert not (tmp_path / "va2").exists()
    out = run("init", "-w", tmp_path / "ws2", "-s", tmp_path / "c2", "--preset",
              "heart-disease", "--train", federation.data("va"))  # fmt: skip
    _one_line_error(out, 2, "--train", "--site NAME")
    assert not (tmp_path / "ws2").exists() and not (tmp_path / "c2").exists()


@pytest.mark.parametrize("name", ["../escape", "Cleveland Clinic", "a/b", ""])
def test_a_site_name_that_could_escape_the_workspace_is_refused(tmp_path: Path, name: str) -> None:
    fed = make_federation(tmp_path, "--no-dp", sites=("cleveland",), approve=False)
    before = snapshot(fed.workspace)
    out = run(
        "init", "-w", fed.workspace, "-s", tmp_path / "x", "--site", name, "--train", fed.data("va")
    )
    _one_line_error(out, 1, "not allowed")
    assert snapshot(fed.workspace) == before


def test_a_federation_over_your_own_table(tmp_path: Path) -> None:
    """No preset: the coordinator describes the table; a hospital's CSV is checked against it."""
    ws, coord = tmp_path / "ws", tmp_path / "coord"
    out = run(
        "init",
        "-w",
        ws,
        "-s",
        coord,
        "--features",
        "age,chol,thalach",
        "--label",
        "target",
        "--classes",
        "0,1",
        "--hidden",
        "8",
        "--rounds",
        "1",
        "--no-dp",
        "--json",
    )
    assert out.exit_code == 0, out.stderr
    rows = ["age,chol,thalach,target,extra"] + [
        f"{40 + i},{200 + i},{150 - i},{i % 2},x" for i in range(30)
    ]
    (tmp_path / "a.csv").write_text("\n".join(rows) + "\n")
    out = run("init", "-w", ws, "-s", tmp_path / "a", "--site", "a", "--train", tmp_path / "a.csv")
    assert out.exit_code == 0, out.stderr
    (tmp_path / "b.csv").write_text("age,chol,target\n50,210,1\n")
    out = run("init", "-w", ws, "-s", tmp_path / "b", "--site", "b", "--train", tmp_path / "b.csv")
    _one_line_error(out, 1, "b.csv", "thalach")
    out = run(
        "init", "-w", tmp_path / "ws2", "-s", tmp_path / "c2", "--features", "age", "--label", "y"
    )
    _one_line_error(out, 2, "--classes")  # a missing option: a usage error


@pytest.mark.parametrize(
    ("option", "value"),
    [("--secagg-bits", "16"), ("--secagg-bounds", "foo"), ("--broadcast", "float8")],
)
def test_a_value_no_simulate_option_takes_is_a_usage_error(
    tmp_path: Path, option: str, value: str
) -> None:
    out = run(
        "simulate", "heart-disease", "--rounds", "1", "--workdir", tmp_path / "w", option, value
    )
    _one_line_error(out, 2, option)
    assert not (tmp_path / "w").exists()


def test_ctrl_c_says_what_happened_and_exits_130(
    federation: Fed, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedrema_cli.views import status as status_view

    def interrupted(**kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(status_view, "federation_status", interrupted)
    out = run("status", "-s", federation.site("va"))
    assert out.exit_code == 130
    assert out.stderr.splitlines() == [
        "fedrema: interrupted; nothing half-written, run the command again"
    ]
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "| 130 | interrupted" in readme


def test_sigterm_is_handled_as_ctrl_c_and_exits_143(
    federation: Fed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service manager or `timeout` stops a command with SIGTERM: the same one line."""
    import os
    import signal

    from fedrema_cli.views import status as status_view

    def terminated(**kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(status_view, "federation_status", terminated)
    before = signal.getsignal(signal.SIGTERM)
    out = run("status", "-s", federation.site("va"), "--json")
    assert out.exit_code == 143
    assert out.json()["exit_code"] == 143
    assert out.stderr.splitlines() == [
        "fedrema: interrupted; nothing half-written, run the command again"
    ]
    assert signal.getsignal(signal.SIGTERM) == before  # restored for whatever runs next
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "| 143 | stopped by SIGTERM" in readme


def test_the_readme_lists_every_command_and_one_benchmark_time() -> None:
    import re

    import typer

    from fedrema_cli.app import app

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| ") and "`fedrema " in line]

    def names(group, prefix: str = "") -> list[str]:
        out = []
        for name, command in group.commands.items():
            if command.hidden:
                continue
            sub = getattr(command, "commands", None)
            out += names(command, f"{prefix}{name} ") if sub else [f"{prefix}{name}"]
        return out

    commands = names(typer.main.get_command(app))
    assert "privacy report" in commands
    missing = [c for c in commands if not any(f"`fedrema {c} " in row for row in rows)]
    assert not missing, f"README's command table misses {missing}"
    readme_min = re.search(r"`make bench-accuracy`,\s+(\d+) min", readme)
    makefile_min = re.search(
        r"about (\d+) min.*\n.*\nbench-accuracy:", (root / "Makefile").read_text()
    )
    assert readme_min and makefile_min and readme_min[1] == makefile_min[1]
