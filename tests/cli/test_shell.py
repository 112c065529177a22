"""What every command shares, from the shell: exit codes, --json on failure, -h, --version,
--verbose/--quiet, completion, did-you-mean and the progress display. No federation needed."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from fedrema_cli import __version__, ui
from fedrema_cli.suggest import closest, did_you_mean, missing_folder
from tests.cli.conftest import run

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "args",
    [
        ["status", "--bogus"],  # unknown option
        ["submit", "-s"],  # option without its value
        ["submit", "--timeout", "soon", "-s", "x"],  # a value Click cannot parse
        ["no-such-command"],
    ],
)
def test_click_usage_errors_exit_2(args: list[str]) -> None:
    out = run(*args)
    assert out.exit_code == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr


def test_a_bad_value_of_our_own_options_exits_2_too() -> None:
    out = run("simulate", "heart-disease", "--method", "fedavgg", "--rounds", "1")
    assert out.exit_code == 2, out.stderr
    assert "unknown method 'fedavgg'" in out.stderr


def test_json_failure_is_one_json_object_on_stdout(tmp_path: Path) -> None:
    out = run("train-local", "-s", tmp_path / "nowhere", "--json")
    assert out.exit_code == 1
    doc = out.json()
    assert doc["ok"] is False and doc["exit_code"] == 1
    assert "nowhere is not a site state folder" in doc["error"]
    assert doc["hint"] and "fedrema init" in doc["hint"]
    assert out.stderr.startswith("fedrema: error:")  # people reading the log still see it


def test_json_usage_error_is_a_json_object_too() -> None:
    out = run("status", "--json", "--bogus")
    assert out.exit_code == 2
    doc = out.json()
    assert doc == {
        "ok": False,
        "error": "No such option: --bogus",
        "hint": "`fedrema status -h` shows its options",
        "exit_code": 2,
    }


@pytest.mark.parametrize(
    ("args", "help_of"),
    [
        (("status", "--bogus"), "fedrema status"),
        (("init", "-w", "ws", "-s", "st", "--rounds", "0"), "fedrema init"),
        (("simulate", "heart-disease", "--lr", "-1"), "fedrema simulate"),
        (("--bogus", "status"), "fedrema"),  # before any command: Click's own parse
    ],
)
def test_a_usage_error_is_one_line_that_names_the_help(args: tuple[str, ...], help_of: str) -> None:
    out = run(*args)
    assert out.exit_code == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedrema: error: "), out.stderr
    assert f"`{help_of} -h` shows its options" in lines[0]


def test_json_values_carry_no_rich_markup() -> None:
    doc = {"a": "[green]✓[/] done [bold]x[/bold]", "b": ["\\[not markup]", 3], "c": "[1, 2]"}
    assert ui.plain(doc) == {"a": "✓ done x", "b": ["[not markup]", 3], "c": "[1, 2]"}


def test_version_and_h_everywhere() -> None:
    out = run("--version")
    assert out.exit_code == 0 and out.stdout.strip() == f"fedrema {__version__}"
    for args in (["-h"], ["submit", "-h"], ["privacy", "report", "-h"]):
        out = run(*args)
        assert out.exit_code == 0 and "Usage: fedrema" in out.stdout, args


def test_quiet_keeps_results_and_drops_chatter(tmp_path: Path) -> None:
    loud = run("prepare-data", "heart-disease", "--out", tmp_path / "a")
    assert loud.exit_code == 0 and "train" in loud.stdout
    quiet = run("-q", "prepare-data", "heart-disease", "--out", tmp_path / "b")
    assert quiet.exit_code == 0 and quiet.stdout == ""
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(
        p.name for p in (tmp_path / "a").iterdir()
    )
    failed = run("-q", "train-local", "-s", tmp_path / "nowhere")
    assert failed.exit_code == 1 and failed.stderr.startswith("fedrema: error:")


def test_verbose_shows_the_traceback_of_an_error(tmp_path: Path) -> None:
    plain = run("train-local", "-s", tmp_path / "nowhere")
    assert "Traceback" not in plain.stderr
    verbose = run("--verbose", "train-local", "-s", tmp_path / "nowhere")
    assert verbose.exit_code == 1
    assert "Traceback" in verbose.stderr and "ConfigError" in verbose.stderr
    assert verbose.stderr.rstrip().splitlines()[-1].startswith("fedrema: error:")
    both = run("-v", "-q", "status")
    assert both.exit_code == 2 and "contradict" in both.stderr


def test_shell_completion_completes_command_names() -> None:
    # in a real process, as a user's shell runs it (typer keeps completion state per process)
    # The shell is named, not detected from the parent process: a runner with no shell above
    # the test (a daemon, `nohup ... &`) makes Typer's detection answer "Shell  not supported".
    shown = subprocess.run(
        [sys.executable, "-m", "fedrema_cli", "--show-completion", "bash"],
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0 and "_FEDREMA_COMPLETE" in shown.stdout, shown.stderr
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "_FEDREMA_COMPLETE": "complete_bash",
        "COMP_WORDS": "fedrema train",
        "COMP_CWORD": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "fedrema_cli"], env=env, capture_output=True, text=True, timeout=60
    )
    assert "train-local" in done.stdout.split(), (done.stdout, done.stderr)


def test_a_mistyped_state_folder_gets_a_did_you_mean(tmp_path: Path) -> None:
    (tmp_path / "cleveland").mkdir()
    out = run("submit", "-s", tmp_path / "clevelnd")
    assert out.exit_code == 1
    assert f"does not exist; did you mean {tmp_path / 'cleveland'}?" in out.stderr
    out = run("aggregate", "-s", tmp_path / "zzz")  # nothing close: no guess
    assert "does not exist" in out.stderr and "did you mean" not in out.stderr


def test_one_did_you_mean_for_every_name() -> None:
    assert closest("Age", ["age", "sex"]) == "age"
    assert closest("cleveland2", ["cleveland", "hungary"]) == "cleveland"
    assert closest("zzz", ["cleveland"]) is None
    assert did_you_mean("cleveland", ["cleveland"]) == ""  # itself is not a suggestion
    assert did_you_mean("hungray", ["hungary", "va"]) == "; did you mean 'hungary'?"
    assert missing_folder("/nonexistent-root/x") == "does not exist"


def test_the_activity_display_shows_elapsed_time_and_clears_its_line() -> None:
    buf = io.StringIO()
    term = Console(file=buf, force_terminal=True, width=100)
    with ui.activity("va: training, epoch", out=term) as shown:
        shown.steps(1, 3)
        time.sleep(1.2)
        shown.steps(2, 3)
    text = buf.getvalue()
    assert "va: training, epoch" in text and "2/3" in text
    assert "0:00:01" in text  # elapsed time
    assert text.endswith("\x1b[1A\x1b[2K")  # the line is erased when it ends
    not_a_terminal = io.StringIO()
    with ui.activity("quiet in a cron log", out=Console(file=not_a_terminal)):
        pass
    assert not_a_terminal.getvalue() == ""


def test_help_names_every_bundled_dataset_and_the_drop_syntax() -> None:
    from fedrema_cli.data.datasets import DATASETS

    for args in (["simulate", "-h"], ["prepare-data", "-h"], ["init", "-h"]):
        text = " ".join(run(*args).stdout.split())
        for name in DATASETS:
            assert name in text, (args, name)
    text = " ".join(run("simulate", "-h").stdout.split())
    assert "SITE:STAGE[@ROUND]" in text  # not eaten as markup


def test_prepare_data_into_a_file_is_a_one_line_error(tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("keep me")
    out = run("prepare-data", "heart-disease", "--out", target)
    assert out.exit_code == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "is a file; the site files go into a folder" in lines[0]
    assert target.read_text() == "keep me"


def test_simulate_below_the_threshold_says_what_to_change_in_the_simulation(
    tmp_path: Path,
) -> None:
    out = run(
        "simulate", "heart-disease", "--rounds", "1", "--no-dp", "--workdir", tmp_path / "w",
        "--drop", "va:submit", "--drop", "hungary:submit",
    )  # fmt: skip
    assert out.exit_code == 5, out.stderr
    lines = out.stderr.strip().splitlines()
    assert "--drop fewer sites" in lines[-1] and "fedrema aggregate" not in lines[-1]
