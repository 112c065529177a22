"""The train-local recipe end to end, with the shell's files simulated in memory.

Order per round (crash-safe): restore -> refuse a recorded round -> gate -> train in memory ->
append the ledger line -> write the accountant cache -> release the model. The ledger is the
source of truth.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import torch
from privacy_testing import site_key
from torch import nn
from torch.utils.data import TensorDataset

import privacy as dp
from privacy.errors import BudgetExceededError


class Crash(Exception):
    """Simulated power loss at a chosen point."""


def train_local(files: dict[str, str], *, round_: int, policy, key, dataset, crash_at=None):
    """What fedrema_cli's train-local should do (file writes are dict assignments here)."""
    # 1. Restore: verify the ledger, repair a torn tail, reconcile the cached accountant.
    ledger = dp.load_verified(files.get("ledger", ""), verify=key.public_key().verify, site="clev")
    if ledger.torn_tail is not None:
        files["ledger"] = ledger.committed_text  # atomic rewrite in the real shell
    state = json.loads(files["state"]) if "state" in files else None
    acc = dp.restore_accountant(
        entries=ledger.entries, mechanism=policy.accountant, cached_state=state
    )
    # 2. Refuse a round already recorded, then gate, before any training step.
    dp.ensure_round_not_recorded(ledger, round=round_)
    plan = dp.plan_round(policy, dataset_size=len(dataset))
    dp.check_round(acc, plan, policy, round=round_)
    # 3. Train in memory.
    torch.manual_seed(0)
    model = nn.Linear(13, 2)
    before = dp.model_fingerprint(model)
    with dp.private_training(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        criterion=nn.CrossEntropyLoss(),
        data=dataset,
        plan=plan,
        accountant=acc,
        sampling_generator=torch.Generator().manual_seed(round_),
        noise_generator=torch.Generator().manual_seed(1000 + round_),
    ) as run:
        for _ in range(plan.local_epochs):
            for x, y in run.data_loader:
                run.optimizer.zero_grad()
                run.criterion(run.model(x), y).backward()
                run.optimizer.step()
    trained = run.standard_module()
    # 4. Append the signed ledger line (append + fsync).
    body = dp.body_from_record(
        run.record,
        accountant=acc,
        delta=policy.delta,
        target_epsilon=policy.target_epsilon,
        federation="demo",
        site="clev",
        round=round_,
        dataset_fingerprint=dp.dataset_fingerprint(dataset),
        model_hashes={"before": before, "after": dp.model_fingerprint(trained)},
        timestamp=(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=round_)).isoformat(),
    )
    line = dp.encode_line(dp.make_entry(ledger.entries[-1] if ledger.entries else None, body,
                                        key.sign))  # fmt: skip
    if crash_at == "mid-append":
        files["ledger"] = files.get("ledger", "") + line[: len(line) // 2]
        raise Crash
    files["ledger"] = files.get("ledger", "") + line
    if crash_at == "after-ledger":
        raise Crash
    # 5. Cache the accountant state (atomic write), then 6. release the model.
    files["state"] = json.dumps(acc.state_dict())
    files[f"model-{round_}"] = dp.model_fingerprint(trained)
    return acc.epsilon(delta=policy.delta)


def test_rounds_crashes_restarts_and_the_budget_wall():
    policy = dp.PrivacyPolicy(target_epsilon=6.0, delta=1e-3, planned_rounds=3, local_epochs=1,
                              batch_size=8, max_grad_norm=1.0)  # fmt: skip
    n = 200
    g = torch.Generator().manual_seed(0)
    dataset = TensorDataset(torch.randn(n, 13, generator=g), torch.randint(0, 2, (n,), generator=g))
    key = site_key(9)
    files: dict[str, str] = {}

    eps1 = train_local(files, round_=1, policy=policy, key=key, dataset=dataset)
    # Round 2 crashes half-way through the ledger append: nothing was committed or released.
    with pytest.raises(Crash):
        train_local(files, round_=2, policy=policy, key=key, dataset=dataset, crash_at="mid-append")
    assert "model-2" not in files
    # Retrying round 2 repairs the torn tail and trains it; then the state write is lost.
    with pytest.raises(Crash):
        train_local(
            files, round_=2, policy=policy, key=key, dataset=dataset, crash_at="after-ledger"
        )
    # Round 2 is now recorded (its budget is spent) although its model was never released.
    with pytest.raises(dp.RoundAlreadyTrainedError):
        train_local(files, round_=2, policy=policy, key=key, dataset=dataset)
    # Round 3 restarts from a lagging cache: the ledger wins and the spend continues.
    eps3 = train_local(files, round_=3, policy=policy, key=key, dataset=dataset)
    plan = dp.plan_round(policy, dataset_size=n)
    assert eps3 == pytest.approx(plan.planned_epsilon) and eps3 <= policy.target_epsilon
    assert eps1 < eps3
    # Round 4 is past the plan: refused before training, nothing written.
    snapshot = dict(files)
    with pytest.raises(BudgetExceededError):
        train_local(files, round_=4, policy=policy, key=key, dataset=dataset)
    assert files == snapshot
    # The auditor recomputes everything from the signed ledger alone.
    report = dp_report(policy, files["ledger"], key)
    assert report.verified and [r.round for r in report.sites[0].rounds] == [1, 2, 3]
    assert report.sites[0].epsilon == pytest.approx(eps3)


def dp_report(policy, text, key):
    from privacy.report import build_report

    return build_report(policy=policy, ledgers={"clev": text},
                        verifiers={"clev": key.public_key().verify}, federation="demo",
                        generated_at="2026-02-01T00:00:00+00:00")  # fmt: skip
