"""Local training and evaluation metrics."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score
from torch.utils.data import TensorDataset

from fedrema_cli.learning.training import (
    ClassWeightedCrossEntropy,
    balanced_class_weights,
    dp_label_counts,
    evaluate,
    inverse_frequency_weights,
)


class _Fixed(torch.nn.Module):
    """A 'model' whose predictions are given: logits one-hot on the chosen class."""

    def __init__(self, pred: np.ndarray, classes: int) -> None:
        super().__init__()
        self.logits = torch.nn.functional.one_hot(torch.from_numpy(pred), classes).float() * 5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: len(x)]


def test_balanced_accuracy_is_sklearns_without_its_warning() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        y = rng.integers(0, 4, 30)
        pred = rng.integers(0, 5, 30)  # predicts a class the test set never holds
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning from our metric
            m = evaluate(_Fixed(pred, 5), np.zeros((30, 1)), y, num_classes=5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = balanced_accuracy_score(y, pred)
        assert abs(m.balanced_accuracy - expected) < 1e-12
        assert abs(m.accuracy - float((pred == y).mean())) < 1e-12


def test_auc_is_none_for_a_single_class_test_set() -> None:
    y = np.ones(10, dtype=np.int64)
    m = evaluate(_Fixed(np.ones(10, dtype=np.int64), 2), np.zeros((10, 1)), y, num_classes=2)
    assert m.auc is None and m.accuracy == 1.0 and m.balanced_accuracy == 1.0


# ------------------------------------------------------------------------- class-weighted loss


def _tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


def _flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def _record_grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unweighted cross-entropy gradient of each record alone, [records, parameters]."""
    rows = []
    for i in range(len(y)):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        rows.append(_flat_grad(model).clone())
    return torch.stack(rows)


X3 = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.3, -0.7], [-0.2, 0.8, 0.1]])
Y3 = torch.tensor([0, 1, 1])


def test_weighted_loss_scales_each_records_gradient_by_its_class_weight() -> None:
    model = _tiny()
    g = _record_grads(model, X3, Y3)
    w = torch.tensor([3.0, 0.5])
    model.zero_grad()
    ClassWeightedCrossEntropy([3.0, 0.5])(model(X3), Y3).backward()
    # (1/3) * sum_i w[y_i] * grad_i: divided by the number of records, not by sum of weights.
    expected = (w[Y3][:, None] * g).sum(0) / 3
    torch.testing.assert_close(_flat_grad(model), expected)
    assert not torch.allclose(expected, g.mean(0))  # weighting changed the gradient
    model.zero_grad()
    torch.nn.CrossEntropyLoss(weight=w)(model(X3), Y3).backward()
    coupled = (w[Y3][:, None] * g).sum(0) / w[Y3].sum()  # what torch's weighted mean does
    torch.testing.assert_close(_flat_grad(model), coupled)
    assert not torch.allclose(coupled, expected)
    # Weights of 1 are plain cross-entropy; empty batches give 0, not NaN.
    ones = ClassWeightedCrossEntropy([1.0, 1.0])
    torch.testing.assert_close(
        ones(model(X3), Y3), torch.nn.functional.cross_entropy(model(X3), Y3)
    )
    assert float(ones(model(X3[:0]), Y3[:0]).detach()) == 0.0
    with pytest.raises(ValueError, match="positive finite"):
        ClassWeightedCrossEntropy([1.0, 0.0])


def _private(model: torch.nn.Module, criterion: torch.nn.Module, clip: float):
    from privacy.accountant import SiteAccountant
    from privacy.engine import make_private

    data = TensorDataset(torch.randn(12, 3), torch.randint(0, 2, (12,)))
    return make_private(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        criterion=criterion,
        data=data,
        accountant=SiteAccountant(mechanism="rdp"),
        batch_size=4,
        noise_multiplier=1.0,
        max_grad_norm=clip,
    )


def _grad_samples(dp, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Opacus's per-sample gradients (before clipping and noise), [records, parameters]."""
    dp.optimizer.zero_grad()
    dp.criterion(dp.model(x), y).backward()
    return torch.cat(
        [p.grad_sample.reshape(len(y), -1) for p in dp.model.parameters()], dim=1
    ).detach()


def test_under_opacus_a_records_gradient_depends_on_it_alone() -> None:
    g = _record_grads(_tiny(), X3, Y3)
    dp = _private(_tiny(), ClassWeightedCrossEntropy([3.0, 0.5]), clip=1.0)
    samples = _grad_samples(dp, X3, Y3)
    torch.testing.assert_close(samples, torch.tensor([3.0, 0.5, 0.5])[:, None] * g)
    # The same record next to other companions: the same per-sample gradient.
    swapped = _grad_samples(dp, X3[[0, 2]], torch.tensor([0, 0]))
    torch.testing.assert_close(swapped[0], samples[0])
    dp.close()
    # torch's weighted mean couples records: record 0's gradient moves with the others' labels.
    dp = _private(_tiny(), torch.nn.CrossEntropyLoss(weight=torch.tensor([3.0, 0.5])), clip=1.0)
    a = _grad_samples(dp, X3, Y3)[0]
    b = _grad_samples(dp, X3, torch.tensor([0, 0, 0]))[0]
    assert not torch.allclose(a, b)
    dp.close()


def test_clipping_bounds_every_weighted_record_by_c() -> None:
    clip = 0.05
    dp = _private(_tiny(), ClassWeightedCrossEntropy([40.0, 1.0]), clip=clip)
    samples = _grad_samples(dp, X3, Y3)
    norms = samples.norm(dim=1)
    assert norms[0] > 10 * clip  # the heavy record is far above C before clipping
    dp.optimizer.clip_and_accumulate()  # clipping only; noise is added later in step()
    summed = torch.cat([p.summed_grad.reshape(-1) for p in dp.model.parameters()])
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    torch.testing.assert_close(summed, (factors[:, None] * samples).sum(0))
    assert ((factors[:, None] * samples).norm(dim=1) <= clip * (1 + 1e-5)).all()
    # One record alone contributes at most C whatever its weight: the sensitivity is C.
    dp.optimizer.zero_grad()
    for p in dp.model.parameters():
        p.summed_grad = None
    _grad_samples(dp, X3[:1], Y3[:1])
    dp.optimizer.clip_and_accumulate()
    alone = torch.cat([p.summed_grad.reshape(-1) for p in dp.model.parameters()])
    assert float(alone.norm()) <= clip * (1 + 1e-5)
    dp.close()


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_weighting_leaves_dp_accounting_unchanged(mode: str) -> None:
    from fedrema_cli.config import TrainingConfig
    from fedrema_cli.learning.models import build_model, get_part
    from fedrema_cli.learning.modelspec import ModelSpec
    from fedrema_cli.learning.training import PrivateRun, train_local
    from privacy import PrivacyPolicy, SiteAccountant, plan_round

    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 5)).astype(np.float32)
    y = (rng.random(90) < 0.15).astype(np.int64)  # 15% minority
    policy = PrivacyPolicy(
        target_epsilon=3.0,
        delta=1e-5,
        planned_rounds=2,
        local_epochs=1,
        batch_size=16,
        max_grad_norm=1.0,
        grad_sample_mode=mode,
    )
    plan = plan_round(policy, dataset_size=len(y))
    spec = ModelSpec.mlp(in_features=5, hidden=(8,), num_classes=2)
    runs = []
    for weights in (None, inverse_frequency_weights(np.bincount(y), normalize="max")):
        acc = SiteAccountant(mechanism="rdp")
        model, result, record = train_local(
            build_model(spec, seed=0),
            x,
            y,
            config=TrainingConfig(batch_size=16),
            seed=1,
            private=PrivateRun(plan=plan, accountant=acc),
            replayable_noise_seed=7,
            class_weights=weights,
        )
        runs.append((get_part(model, "all"), result, record, acc))
    (p0, r0, rec0, acc0), (p1, r1, rec1, acc1) = runs
    assert rec0 is not None and rec1 is not None
    assert rec1.history == rec0.history == tuple(plan.round_history())
    assert (rec1.steps, rec1.parameter_updates) == (rec0.steps, rec0.parameter_updates)
    assert (rec1.noise_multiplier, rec1.sample_rate, rec1.max_grad_norm) == (
        rec0.noise_multiplier,
        rec0.sample_rate,
        rec0.max_grad_norm,
    )
    assert rec1.grad_sample_mode == mode
    assert acc1.epsilon(delta=1e-5) == acc0.epsilon(delta=1e-5)
    assert r1.steps == r0.steps == plan.steps_per_round
    assert any(not np.allclose(p0[k], p1[k]) for k in p0)  # the weights did change training


def test_inverse_frequency_weights() -> None:
    w = inverse_frequency_weights([90, 10], normalize="mean")
    np.testing.assert_allclose(w, [100 / 180, 5.0])
    assert float(np.dot(w, [90, 10])) == pytest.approx(100)  # mean weight per record is 1
    np.testing.assert_allclose(inverse_frequency_weights([90, 10], normalize="max"), [1 / 9, 1])
    np.testing.assert_allclose(inverse_frequency_weights([50, 50], normalize="mean"), [1, 1])
    capped = inverse_frequency_weights([198, 2], normalize="mean")
    np.testing.assert_allclose(capped, [100 / 198, 10.0])
    noisy = inverse_frequency_weights([60, -3.2, 0.4], normalize="mean")  # counts < 1 -> 1
    np.testing.assert_allclose(noisy, [62 / 180, 10, 10])
    with pytest.raises(ValueError, match="two classes"):
        inverse_frequency_weights([10], normalize="mean")
    with pytest.raises(ValueError, match="normalize"):
        inverse_frequency_weights([10, 5], normalize="sum")  # type: ignore[arg-type]


def test_dp_label_counts_is_the_gaussian_mechanism_with_its_cost() -> None:
    from privacy import analysis

    y = np.array([0] * 70 + [1] * 30)
    release = dp_label_counts(y, 2, noise_multiplier=10.0, rng=np.random.default_rng(1), delta=1e-5)
    again = dp_label_counts(y, 2, noise_multiplier=10.0, rng=np.random.default_rng(1), delta=1e-5)
    np.testing.assert_array_equal(release.counts, again.counts)
    assert not np.array_equal(release.counts, [70, 30])
    assert release.history() == [(10.0, 1.0, 1)]
    assert release.epsilon == analysis.epsilon([(10.0, 1.0, 1)], delta=1e-5, mechanism="rdp")
    draws = np.array(
        [
            dp_label_counts(
                y, 3, noise_multiplier=4.0, rng=np.random.default_rng(s), delta=1e-5
            ).counts
            for s in range(400)
        ]
    )
    np.testing.assert_allclose(draws.mean(0), [70, 30, 0], atol=4.0 * 4 / np.sqrt(400))
    np.testing.assert_allclose(draws.std(0), [4.0] * 3, rtol=0.15)
    with pytest.raises(ValueError, match="noise multiplier"):
        dp_label_counts(y, 2, noise_multiplier=0.0, rng=np.random.default_rng(), delta=1e-5)


def test_evaluate_takes_a_threshold() -> None:
    pred = np.array([0, 0, 1, 1])
    model = _Fixed(pred, 2)  # P(class 1) = 0.0067 or 0.9933
    y = np.array([0, 1, 1, 1])
    assert evaluate(model, np.zeros((4, 1)), y, num_classes=2).accuracy == 0.75
    low = evaluate(model, np.zeros((4, 1)), y, num_classes=2, threshold=0.001)
    assert low.accuracy == 0.75 and low.balanced_accuracy == 0.5  # all predicted positive
    with pytest.raises(ValueError, match="2 outputs for 3 classes"):
        evaluate(model, np.zeros((4, 1)), y, num_classes=3)


def test_balanced_class_weights_follow_the_dp_rule() -> None:
    y = np.array([0] * 80 + [1] * 20)
    plain, release = balanced_class_weights(y, 2, private=False)
    assert release is None
    np.testing.assert_allclose(plain, inverse_frequency_weights([80, 20], normalize="mean"))
    weights, release = balanced_class_weights(
        y, 2, private=True, rng=np.random.default_rng(3), delta=1e-5
    )
    assert release is not None and release.history() == [(10.0, 1.0, 1)]
    np.testing.assert_allclose(weights, inverse_frequency_weights(release.counts, normalize="max"))
    assert weights.max() == 1.0
    with pytest.raises(ValueError, match="random generator"):
        balanced_class_weights(y, 2, private=True)
