"""A fine-tuned model leaves `personalize --export` only once its spend is in the ledger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedrema_cli.store import storage
from tests.cli.conftest import SITES, make_federation, run, run_rounds


class Crash(BaseException):
    """The process dies (not an error the CLI reports)."""


def test_export_after_a_crash_in_the_last_finetuning_round_is_on_the_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = make_federation(
        tmp_path, "--epsilon", "3", "--method", "fedavg-ft", "--rounds", "1", sites=SITES
    )
    run_rounds(fed, 1)
    site = fed.site("va")
    last = 1 + 5  # one federated round, then fedavg-ft's five fine-tuning rounds
    original = storage.LocalStorage.replace

    def replace(self: storage.LocalStorage, path: str, data: bytes) -> None:
        if path == "ledger.jsonl" and f'"round":{last},'.encode() in data:
            raise Crash(path)  # killed right before appending the last round's entry
        original(self, path, data)

    monkeypatch.setattr(storage.LocalStorage, "replace", replace)
    with pytest.raises(Crash):
        run("personalize", "-s", site)
    monkeypatch.setattr(storage.LocalStorage, "replace", original)
    out = run("personalize", "-s", site, "--export", tmp_path / "model")
    assert out.exit_code == 0, out.stderr
    rounds = [json.loads(x)["round"] for x in (site / "ledger.jsonl").read_text().splitlines()]
    assert rounds == list(range(1, last + 1))  # the exported model's last round is recorded
    assert (fed.workspace / "ledger" / "va" / f"{last:04d}.json").exists()
