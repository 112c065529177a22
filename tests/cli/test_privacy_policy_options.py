"""Out-of-range privacy options are refused with a message, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import run


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (("--epsilon", "0"), "--epsilon"),
        (("--epsilon", "nan"), "--epsilon"),
        (("--epsilon", "inf"), "--epsilon"),
        (("--epsilon", "3", "--delta", "2"), "delta"),
        (("--epsilon", "3", "--max-grad-norm", "-1"), "--max-grad-norm"),
    ],
)
def test_init_refuses_a_privacy_policy_out_of_range(
    tmp_path: Path, options: tuple[str, ...], named: str
) -> None:
    out = run(
        "init", "-w", tmp_path / "ws", "-s", tmp_path / "c", "--preset", "heart-disease", *options
    )
    assert out.exit_code == 1, out.stderr
    assert named in out.stderr and "privacy policy" in out.stderr
    assert not (tmp_path / "ws" / "federation.json").exists()
