"""`fedrema withdraw`: a site leaves for good and the coordinator stops waiting for it.

Without it, a hospital that stops taking part (budget spent, or told to stop) costs every
phase of every later round its full deadline (24 h by default) unless the coordinator
passes `--close` each time.
"""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from fedrema_cli.errors import StateBusyError
from fedrema_cli.protocol import secagg as secure
from fedrema_cli.roles.site import Site
from fedrema_cli.store.state import PartyState
from tests.cli.conftest import (
    SITES,
    Fed,
    full_round,
    key_exchange,
    run,
    run_rounds,
    snapshot,
    submit_all,
    train_and_submit,
)
from tests.signed_files import read_signed

OTHERS = SITES[:-1]  # va withdraws


def _body(fed: Fed, path: str) -> dict:
    return read_signed(fed.workspace / path)["body"]


def _finish_round_without_close(fed: Fed, sites: tuple[str, ...]) -> None:
    """Drive the open round to its result with `aggregate` never given --close."""
    r = run("status", "-s", fed.coordinator, "--json").json()["round"]
    for _ in range(6):
        submit_all(fed, sites)
        out = run("aggregate", "-s", fed.coordinator)
        assert out.exit_code in (0, 75), out.stderr
        if (fed.workspace / f"rounds/{r:04d}/result.json").exists():
            return
    raise AssertionError(f"round {r} did not finish without --close")


def test_a_withdrawn_site_is_not_waited_for(federation: Fed) -> None:
    fed = federation
    run_rounds(fed, 1)
    out = run("withdraw", "-s", fed.site("va"), "--yes", "--json")
    assert out.exit_code == 0, out.stderr
    assert out.json()["from_round"] == 2 and out.json()["new"] is True
    assert run("status", "-w", fed.workspace, "--json").json()["withdrawn"] == {"va": 2}
    # va can send nothing more, and says why
    for cmd in ("train-local", "submit"):
        out = run(cmd, "-s", fed.site("va"))
        assert out.exit_code == 1 and "withdrew from the federation from round 2" in out.stderr
    train_and_submit(fed, OTHERS)
    _finish_round_without_close(fed, OTHERS)
    result = _body(fed, "rounds/0002/result.json")
    assert result["survivors"] == list(OTHERS)
    status = run("status", "-s", fed.site("va"), "--json").json()
    assert status["complete"] and status["withdrawn"] == {"va": 2}
    out = run("personalize", "-s", fed.site("va"), "--json")
    assert out.exit_code == 0 and out.json()["complete"], out.stderr


def test_a_site_whose_update_is_in_the_sum_reveals_before_it_leaves(federation: Fed) -> None:
    fed = federation
    key_exchange(fed)
    train_and_submit(fed)  # round 1: every masked update is in, va's too
    out = run("withdraw", "-s", fed.site("va"), "--yes")
    assert out.exit_code == 0 and "`fedrema submit` once more" in out.stdout, out.stderr
    assert _body(fed, "withdrawals/va.json")["from_round"] == 2
    # the keys va advertised for round 2 alongside its update are of no use any more
    assert not (fed.site("va") / "secagg" / "0002.json").exists()
    assert run("aggregate", "-s", fed.coordinator).exit_code == 0
    submit_all(fed)  # va reveals its shares for round 1: the sum holds its update
    assert run("aggregate", "-s", fed.coordinator).exit_code == 0
    assert _body(fed, "rounds/0001/result.json")["survivors"] == list(SITES)
    # round 1 is finished: va owes nothing more, and the next refused command forgets the
    # shares of its peers' secrets it held for round 1
    assert (fed.site("va") / "secagg" / "0001.json").exists()
    assert run("submit", "-s", fed.site("va")).exit_code == 1
    assert not (fed.site("va") / "secagg").exists() or not list(
        (fed.site("va") / "secagg").iterdir()
    )
    train_and_submit(fed, OTHERS)
    _finish_round_without_close(fed, OTHERS)
    assert _body(fed, "rounds/0002/result.json")["survivors"] == list(OTHERS)
    assert not (fed.workspace / "rounds/0002/shares/va.json").exists()


def test_too_few_sites_left_stops_with_a_clear_error(federation: Fed) -> None:
    fed = federation  # 4 sites, t = 3
    run_rounds(fed, 1)
    for s in ("switzerland", "va"):
        assert run("withdraw", "-s", fed.site(s), "--yes").exit_code == 0
    train_and_submit(fed, SITES[:2])
    before = snapshot(fed.workspace)
    out = run("aggregate", "-s", fed.coordinator)
    assert out.exit_code == 5, out.stderr
    assert "withdrawn: switzerland, va" in out.stderr and "needs at least 3" in out.stderr
    assert "cannot go on" in out.stderr
    assert snapshot(fed.workspace) == before


def test_a_withdrawal_another_party_wrote_is_refused(federation: Fed) -> None:
    fed = federation
    run_rounds(fed, 1)
    assert run("withdraw", "-s", fed.site("hungary"), "--yes").exit_code == 0
    # Someone with write access to the storage tries to take va out with hungary's notice.
    shutil.move(fed.workspace / "withdrawals/hungary.json", fed.workspace / "withdrawals/va.json")
    assert run("status", "-w", fed.workspace, "--json").json()["withdrawn"] == {}
    train_and_submit(fed, OTHERS)
    out = run("aggregate", "-s", fed.coordinator, "--json")
    # still waiting, with a forged file in the way: an alarm (3), not a plain wait (75)
    assert out.exit_code == 3 and list(out.json()["refused_withdrawals"]) == ["va"]
    assert "va" in out.json()["waiting_for"]  # still waited for: only va can withdraw va
    out = run("aggregate", "-s", fed.coordinator)
    assert "va's withdrawal refused, va is still waited for" in out.stderr
    # va itself carries on as before; when it does withdraw, the forged file is moved aside
    # (kept under quarantine/, reported) and va's own signed notice takes its place.
    assert run("train-local", "-s", fed.site("va")).exit_code == 0
    out = run("withdraw", "-s", fed.site("va"), "--yes")
    assert out.exit_code == 0, out.stderr
    assert "ignored withdrawals/va.json" in out.stderr and "quarantine/" in out.stderr
    notice = read_signed(fed.workspace / "withdrawals/va.json")
    assert notice["header"]["author"] == "site:va"


def test_withdraw_asks_for_yes_and_re_running_changes_nothing(federation: Fed) -> None:
    fed = federation
    key_exchange(fed)
    before = snapshot(fed.workspace)
    out = run("withdraw", "-s", fed.site("va"))
    assert out.exit_code == 1 and "cannot be undone" in out.stderr
    assert snapshot(fed.workspace) == before
    out = run("withdraw", "-s", fed.site("va"), "--yes", "--reason", "[red]x\nmore")
    assert out.exit_code == 1 and "reason must be one printable line" in out.stderr
    assert snapshot(fed.workspace) == before
    out = run("withdraw", "-s", fed.site("va"), "--yes", "--reason", "ethics approval ended")
    assert out.exit_code == 0, out.stderr
    after = snapshot(fed.workspace)
    out = run("withdraw", "-s", fed.site("va"), "--yes", "--json")
    assert out.exit_code == 0 and out.json()["new"] is False
    assert out.json()["reason"] == "ethics approval ended"
    assert snapshot(fed.workspace) == after


def test_a_withdrawal_cut_off_before_forgetting_its_keys_finishes_when_re_run(
    federation: Fed, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = federation
    key_exchange(fed)
    full_round(fed)  # and round 2's keys are shared: va holds secrets for round 2
    assert (fed.site("va") / "secagg" / "0002.json").exists()

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(secure, "forget_secrets", crash)
    with pytest.raises(KeyboardInterrupt):
        Site(fed.site("va")).withdraw()
    monkeypatch.undo()
    assert (fed.site("va") / "secagg" / "0002.json").exists()  # posted, not yet forgotten
    assert run("withdraw", "-s", fed.site("va"), "--yes").exit_code == 0
    assert not (fed.site("va") / "secagg" / "0002.json").exists()


def test_a_reason_is_shown_as_text_never_as_markup(federation: Fed) -> None:
    fed = federation
    key_exchange(fed)
    reason = "budget [/] spent [bold]"
    assert run("withdraw", "-s", fed.site("va"), "--yes", "--reason", reason).exit_code == 0
    out = run("status", "-s", fed.site("va"))
    assert out.exit_code == 0 and reason in out.stdout, out.stderr


def test_two_commands_on_one_state_folder_take_turns(federation: Fed) -> None:
    fed = federation
    key_exchange(fed)
    state = PartyState(fed.site("va"))
    with (
        state.exclusive(),
        pytest.raises(StateBusyError, match="in use by another fedrema"),
        PartyState(fed.site("va")).exclusive(wait_seconds=0.2),
    ):
        pass
    held = threading.Event()

    def hold() -> None:
        with state.exclusive():
            held.set()
            time.sleep(0.5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(5)
    started = time.monotonic()
    out = run("train-local", "-s", fed.site("va"))  # waits for the holder, then trains
    holder.join()
    assert out.exit_code == 0, out.stderr
    assert time.monotonic() - started >= 0.3


def test_a_file_system_without_locks_still_runs_commands(
    federation: Fed, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import fcntl

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    key_exchange(federation)
    assert run("train-local", "-s", federation.site("va")).exit_code == 0


def test_a_busy_state_folder_means_later_not_failed(
    federation: Fed, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedrema_cli.store import state as state_module

    fed = federation
    monkeypatch.setattr(state_module, "LOCK_WAIT_SECONDS", 0.2)
    with PartyState(fed.site("va")).exclusive():
        out = run("submit", "-s", fed.site("va"))
        assert out.exit_code == 75 and "in use by another fedrema command" in out.stderr
        out = run("submit", "-s", fed.site("va"), "--wait", "--timeout", "1", "--json")
        assert out.exit_code == 75 and out.json()["timed_out"]  # waited, as --timeout said
    assert run("submit", "-s", fed.site("va")).exit_code == 0  # free again: it goes on
