"""The one-line error reads `(next: ...)` once."""

from __future__ import annotations

from tests.cli.conftest import Fed, key_exchange, run


def test_train_local_twice_says_next_once(federation: Fed) -> None:
    key_exchange(federation)
    assert run("train-local", "-s", federation.site("va")).exit_code == 0
    out = run("train-local", "-s", federation.site("va"))
    assert out.exit_code == 1
    assert "(next: `fedrema submit`)" in out.stderr and "next: next:" not in out.stderr
