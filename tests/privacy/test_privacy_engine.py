"""Real (tiny) Opacus DP-SGD runs: what Opacus counts is what we persist; bad setups refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, SubsetRandomSampler, TensorDataset, WeightedRandomSampler

from privacy import analysis
from privacy.accountant import SiteAccountant
from privacy.budget import check_round
from privacy.engine import (
    make_private,
    model_fingerprint,
    private_training,
    standard_state_dict,
    strip_wrapper_prefix,
    validate_training_setup,
)
from privacy.errors import AccountingError, UnsupportedTrainingSetup
from privacy.policy import PrivacyPolicy, plan_round


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(13, 8), nn.ReLU(), nn.Linear(8, 2))


def data(n: int) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 13, generator=g), torch.randint(0, 2, (n,), generator=g))


def policy(**kw) -> PrivacyPolicy:
    base = dict(
        target_epsilon=8.0,
        delta=1e-3,
        planned_rounds=3,
        local_epochs=2,
        batch_size=8,
        max_grad_norm=1.0,
    )
    base.update(kw)
    return PrivacyPolicy(**base)


def run_round(model, dataset, plan, acc, *, seed=0, epochs=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with private_training(
        model=model,
        optimizer=opt,
        criterion=nn.CrossEntropyLoss(),
        data=dataset,
        plan=plan,
        accountant=acc,
        sampling_generator=torch.Generator().manual_seed(100 + seed),
        noise_generator=torch.Generator().manual_seed(200 + seed),
    ) as dp:
        for _ in range(plan.local_epochs if epochs is None else epochs):
            for x, y in dp.data_loader:  # empty Poisson batches go through forward/backward too
                dp.optimizer.zero_grad()
                dp.criterion(dp.model(x), y).backward()
                dp.optimizer.step()
    return dp


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_records_exactly_what_opacus_counted(mode):
    # Tiny data so that some Poisson batches are empty; both modes must survive them.
    p = policy(grad_sample_mode=mode)
    dataset = data(40)
    plan = plan_round(p, dataset_size=40)
    acc = SiteAccountant(mechanism="rdp")
    model = mlp()
    dp = run_round(model, dataset, plan, acc)
    counted = dp.opacus_history()
    assert counted == plan.round_history() == [(plan.noise_multiplier, 0.2, 10)]
    assert acc.history == counted
    assert dp.record.steps == dp.record.parameter_updates == plan.steps_per_round
    assert dp.record.triple() == (plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)
    # The shell gets its plain module back: no wrapper, no `_module.` keys, reusable next round.
    plain = dp.standard_module()
    assert plain is model and type(plain) is nn.Sequential
    assert sorted(standard_state_dict(plain)) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    run_round(model, dataset, plan, acc, seed=1)
    assert acc.history == [(plan.noise_multiplier, 0.2, 20)]


def test_persisted_history_across_rounds_gives_the_composed_epsilon():
    p = policy()
    dataset = data(40)
    plan = plan_round(p, dataset_size=40)
    acc = SiteAccountant(mechanism="rdp")
    model = mlp()
    for r in range(p.planned_rounds):
        check_round(acc, plan, p, round=r + 1)
        run_round(model, dataset, plan, acc, seed=r)
    assert acc.history == [(plan.noise_multiplier, plan.sample_rate, 30)]
    assert acc.epsilon(delta=p.delta) == plan.planned_epsilon <= p.target_epsilon


def test_plan_equals_opacus_for_the_float_quirk():
    # 369 records, batch 4: Opacus runs int(1/(1/93)) = 92 steps and records q = 1/92.
    p = policy(local_epochs=1, batch_size=4, delta=1e-5)
    plan = plan_round(p, dataset_size=369)
    acc = SiteAccountant(mechanism="rdp")
    dp = run_round(nn.Linear(13, 2), data(369), plan, acc)
    assert dp.opacus_history() == [(plan.noise_multiplier, 1 / 92, 92)]
    assert dp.poisson_rate == 1 / 93


def test_seeded_runs_are_deterministic():
    p = policy()
    plan = plan_round(p, dataset_size=40)
    fingerprints = []
    for _ in range(2):
        model = mlp()
        run_round(model, data(40), plan, SiteAccountant(mechanism="rdp"), seed=5)
        fingerprints.append(model_fingerprint(model))
    assert fingerprints[0] == fingerprints[1]
    other = mlp()
    run_round(other, data(40), plan, SiteAccountant(mechanism="rdp"), seed=6)
    assert model_fingerprint(other) != fingerprints[0]


def test_batchnorm_is_refused_and_nothing_is_recorded():
    model = nn.Sequential(nn.Linear(13, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    plan = plan_round(policy(), dataset_size=40)
    acc = SiteAccountant(mechanism="rdp")
    with pytest.raises(UnsupportedTrainingSetup, match="BatchNorm") as info:
        run_round(model, data(40), plan, acc)
    assert any("GroupNorm" in p for p in info.value.problems)
    assert acc.history == []


def test_weighted_sampler_is_refused():
    dataset = data(40)
    loader = DataLoader(
        dataset, batch_size=8, sampler=WeightedRandomSampler([1.0] * 40, num_samples=40)
    )
    problems = validate_training_setup(model=mlp(), data=loader, batch_size=8, raise_if_error=False)
    assert any("WeightedRandomSampler" in p and "813" in p for p in problems)
    plan = plan_round(policy(), dataset_size=40)
    with pytest.raises(UnsupportedTrainingSetup, match="WeightedRandomSampler"):
        run_round(mlp(), loader, plan, SiteAccountant(mechanism="rdp"))


@pytest.mark.parametrize(
    "loader_kwargs",
    [
        {"sampler": SubsetRandomSampler(list(range(40)))},
        {"drop_last": True},
        {"shuffle": True, "batch_size": 16},
    ],
)
def test_other_non_poisson_loaders_are_refused(loader_kwargs):
    kwargs = {"batch_size": 8, **loader_kwargs}
    loader = DataLoader(data(40), **kwargs)
    with pytest.raises(UnsupportedTrainingSetup):
        validate_training_setup(model=mlp(), data=loader, batch_size=8)


def test_plain_loader_is_accepted_and_replaced_by_poisson():
    loader = DataLoader(data(40), batch_size=8, shuffle=True)
    plan = plan_round(policy(), dataset_size=40)
    acc = SiteAccountant(mechanism="rdp")
    dp = run_round(mlp(), loader, plan, acc)
    from opacus.data_loader import DPDataLoader

    assert isinstance(dp.data_loader, DPDataLoader)
    assert acc.history == plan.round_history()


def test_unsupported_modes_losses_and_secure_mode_are_refused():
    problems = validate_training_setup(
        model=mlp(),
        data=data(40),
        batch_size=8,
        criterion=nn.CrossEntropyLoss(reduction="sum"),
        grad_sample_mode="ew",
        secure_mode=True,
        raise_if_error=False,
    )
    text = " ".join(problems)
    assert "ExpandedWeights" in text and "reduction='sum'" in text and "torchcsprng" in text
    functorch = validate_training_setup(
        model=mlp(),
        data=data(40),
        batch_size=8,
        grad_sample_mode="functorch",
        raise_if_error=False,
    )
    assert len(functorch) == 1 and "GroupNorm" in functorch[0]


def test_already_private_model_is_refused():
    plan = plan_round(policy(), dataset_size=40)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    acc = SiteAccountant(mechanism="rdp")
    training = make_private(
        model=model,
        optimizer=opt,
        criterion=nn.CrossEntropyLoss(),
        data=data(40),
        accountant=acc,
        batch_size=8,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=1.0,
    )
    with pytest.raises(UnsupportedTrainingSetup, match="already wrapped"):
        validate_training_setup(model=training.model, data=data(40), batch_size=8)
    training.close()


def test_updates_without_accounting_fail_closed():
    plan = plan_round(policy(), dataset_size=40)
    acc = SiteAccountant(mechanism="rdp")
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with (
        pytest.raises(AccountingError, match="without DP noise"),
        private_training(
            model=model,
            optimizer=opt,
            criterion=nn.CrossEntropyLoss(),
            data=data(40),
            plan=plan,
            accountant=acc,
        ) as dp,
    ):
        x, y = next(iter(dp.data_loader))
        dp.optimizer.zero_grad()
        dp.criterion(dp.model(x), y).backward()
        dp.optimizer.step()  # one proper DP step
        opt.step()  # the raw optimizer: an update with no clipping, noise or accounting
    assert acc.total_steps == 1  # what Opacus counted is still recorded


def test_loop_cannot_run_past_the_approved_steps():
    plan = plan_round(policy(), dataset_size=40)
    acc = SiteAccountant(mechanism="rdp")
    with pytest.raises(AccountingError, match="more than 10 steps"):
        run_round(mlp(), data(40), plan, acc, epochs=plan.local_epochs + 1)
    assert acc.total_steps == plan.steps_per_round + 1  # the refused step was accounted


def test_plan_for_another_dataset_size_is_refused():
    plan = plan_round(policy(), dataset_size=40)
    with pytest.raises(AccountingError, match="size"):
        run_round(mlp(), data(48), plan, SiteAccountant(mechanism="rdp"))


def test_nan_epsilon_fails_closed_in_the_gate(monkeypatch):
    from opacus.accountants.analysis import rdp as opacus_rdp

    p = policy()
    plan = plan_round(p, dataset_size=40)
    monkeypatch.setattr(opacus_rdp, "get_privacy_spent", lambda **_: (float("nan"), 0.0))
    with pytest.raises(AccountingError):
        check_round(SiteAccountant(mechanism="rdp"), plan, p)


def test_strip_wrapper_prefix():
    sd = {"_module.0.weight": torch.zeros(1), "_module._module.bias": torch.ones(1)}
    assert sorted(strip_wrapper_prefix(sd)) == ["0.weight", "bias"]


def test_epsilon_from_engine_equals_independent_recomputation():
    p = policy()
    plan = plan_round(p, dataset_size=40)
    acc = SiteAccountant(mechanism="rdp")
    run_round(mlp(), data(40), plan, acc)
    from privacy.independent import independent_epsilon

    ind = independent_epsilon(acc.history, delta=p.delta, pld_discretization=1e-3)
    ours_int, _ = analysis.rdp_epsilon(
        acc.history, delta=p.delta, orders=analysis.INTEGER_RDP_ORDERS
    )
    assert abs(ours_int - ind.rdp_integer) < 1e-3  # like-for-like at exact orders
    assert ind.pld <= acc.epsilon(delta=p.delta)  # our RDP claim is above the tight bound
    assert acc.epsilon(delta=p.delta) == analysis.epsilon(
        plan.round_history(), delta=p.delta, mechanism="rdp"
    )


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_empty_poisson_batches_are_trained_and_counted(mode):
    # 6 records, batch 2 -> q = 1/3: about 9% of Poisson batches are empty. An empty batch is
    # still a noisy step (noise only) and must be counted, not skipped.
    p = policy(batch_size=2, local_epochs=10, planned_rounds=1, grad_sample_mode=mode)
    plan = plan_round(p, dataset_size=6)
    acc = SiteAccountant(mechanism="rdp")
    model = mlp()
    sizes = []
    with private_training(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        criterion=nn.CrossEntropyLoss(),
        data=data(6),
        plan=plan,
        accountant=acc,
        sampling_generator=torch.Generator().manual_seed(3),
        noise_generator=torch.Generator().manual_seed(4),
    ) as dp:
        for _ in range(plan.local_epochs):
            for x, y in dp.data_loader:
                sizes.append(len(y))
                dp.optimizer.zero_grad()
                dp.criterion(dp.model(x), y).backward()
                dp.optimizer.step()
    assert 0 in sizes and len(sizes) == plan.steps_per_round == 30
    assert acc.history == plan.round_history()
    assert all(torch.isfinite(t).all() for t in model.parameters())
