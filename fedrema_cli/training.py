"""Local training and evaluation at a site: one loop, private (Opacus DP-SGD) or not.

The loop is the same either way; with a privacy run the model, optimizer and loader come
back from `privacy.engine` wrapped for per-sample clipping, noise and Poisson sampling, and
the steps Opacus actually took are recorded in the site's accountant.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedrema_cli.config import TrainingConfig

if TYPE_CHECKING:
    from privacy import RoundPlan, SiteAccountant
    from privacy.engine import RoundRecord


@dataclass(frozen=True)
class TrainResult:
    """What a local round did."""

    steps: int
    examples: int
    mean_loss: float


@dataclass(frozen=True)
class Metrics:
    """Test metrics of a model on one site's hold-out data."""

    n: int
    accuracy: float
    balanced_accuracy: float
    auc: float | None
    loss: float

    def to_json(self) -> dict:
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "auc": self.auc,
            "loss": self.loss,
        }


def _tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    return TensorDataset(
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
    )


def train_local(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    config: TrainingConfig,
    seed: int,
    private: PrivateRun | None = None,
    replayable_noise_seed: int | None = None,
) -> tuple[nn.Module, TrainResult, RoundRecord | None]:
    """Train ``model`` on (x, y) for ``config.local_epochs`` epochs; returns a plain nn.Module.

    Without DP: shuffled mini-batches in an order seeded by ``seed``. With DP: Opacus with
    Poisson sampling at the plan's rate; the steps it accounted are added to the accountant.
    Sampling and noise are drawn from generators seeded by the OS's randomness, never from
    ``seed``: a noise stream anyone can replay would protect nothing. The one exception is
    ``replayable_noise_seed``, which only simulations set (`fedrema simulate`, benchmarks), so
    their DP results can be reproduced; no command of a real site can set it.
    """
    dataset = _tensors(x, y)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    loss_fn = nn.CrossEntropyLoss()
    if private is None:
        loader = DataLoader(
            dataset,
            batch_size=config.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )
        steps, loss = _loop(model, optimizer, loader, loss_fn, config.local_epochs)
        return model, TrainResult(steps=steps, examples=len(dataset), mean_loss=loss), None

    from privacy.engine import private_training

    with private_training(
        model=model,
        optimizer=optimizer,
        criterion=loss_fn,
        data=dataset,
        plan=private.plan,
        accountant=private.accountant,
        sampling_generator=_generator(replayable_noise_seed, 0),
        noise_generator=_generator(replayable_noise_seed, 1),
    ) as dp:
        steps, loss = _loop(
            dp.model, dp.optimizer, dp.data_loader, dp.criterion, private.plan.local_epochs
        )
    result = TrainResult(steps=steps, examples=len(dataset), mean_loss=loss)
    return dp.standard_module(), result, dp.record


def finetune_head(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    config: TrainingConfig,
    seed: int,
    private: PrivateRun | None = None,
    replayable_noise_seed: int | None = None,
) -> tuple[nn.Module, TrainResult, RoundRecord | None]:
    """One round of `train_local` in which only the classifier head learns.

    Same optimizer, epochs and loop (DP-SGD when ``private`` is given: only the head's
    per-sample gradients are clipped and noised, and the accountant records the steps), so a
    fine-tuning round costs exactly what a federated round costs.
    """
    from fedrema_cli.models import _unwrap

    for p in _unwrap(model).extractor.parameters():
        p.requires_grad_(False)
    model, result, record = train_local(
        model,
        x,
        y,
        config=config,
        seed=seed,
        private=private,
        replayable_noise_seed=replayable_noise_seed,
    )
    for p in _unwrap(model).extractor.parameters():
        p.requires_grad_(True)
    return model, result, record


def fit_majority(model: nn.Module, y: np.ndarray, *, num_classes: int) -> TrainResult:
    """Make ``model`` predict the class prior of ``y`` whatever the input (majority baseline).

    The last head layer gets zero weights and bias log((count + 1) / (n + classes)): the
    argmax is the most frequent class (ties: the lowest label) and the probabilities are the
    smoothed prior, so AUC is that of a constant score. No gradient step is taken.
    """
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=num_classes)[:num_classes]
    prior = (counts + 1.0) / (counts.sum() + num_classes)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.from_numpy(np.log(prior).astype(np.float32)))
    return TrainResult(steps=0, examples=len(y), mean_loss=float(-np.log(prior[y]).mean()))


@dataclass(frozen=True)
class PrivateRun:
    """The round plan the budget gate approved, and the accountant to record into."""

    plan: RoundPlan
    accountant: SiteAccountant


def _generator(replayable_seed: int | None, stream: int) -> torch.Generator:
    """A generator seeded by the OS's randomness (or, in simulations only, by a given seed)."""
    if replayable_seed is None:
        return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "big") >> 1)
    return torch.Generator().manual_seed((replayable_seed + stream) % 2**63)


def _loop(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    loss_fn: nn.Module,
    epochs: int,
) -> tuple[int, float]:
    """Plain SGD epochs. Empty Poisson batches go through forward/backward too: Opacus turns
    them into a noise-only step, which the accountant counts."""
    model.train()
    steps, total, seen = 0, 0.0, 0
    for _ in range(epochs):
        for xb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            steps += 1
            if len(yb):
                total += float(loss.detach())
                seen += 1
    return steps, total / max(seen, 1)


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    logits = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return torch.softmax(logits, dim=-1).numpy().astype(np.float64)


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, *, num_classes: int) -> Metrics:
    """Accuracy, balanced accuracy and ROC AUC (None when the test set has a single class;
    with more than two classes, one-vs-rest averaged over the classes the test set holds)."""
    from sklearn.metrics import roc_auc_score

    proba = predict_proba(model, x)
    pred = proba.argmax(axis=1)
    y = np.asarray(y)
    eps = 1e-12
    loss = float(-np.mean(np.log(proba[np.arange(len(y)), y] + eps))) if len(y) else float("nan")
    auc: float | None = None
    if len(np.unique(y)) > 1:
        if num_classes == 2:
            auc = float(roc_auc_score(y, proba[:, 1]))
        else:
            # One-vs-rest, macro over the classes present in this test set (small skewed test
            # sets miss some classes; with all present this equals sklearn's "ovr" macro AUC).
            auc = float(np.mean([roc_auc_score(y == c, proba[:, c]) for c in np.unique(y)]))
    return Metrics(
        n=len(y),
        accuracy=float((pred == y).mean()) if len(y) else float("nan"),
        # Mean recall over the classes the test set holds (sklearn's definition, without its
        # warning when the model predicts a class the test set lacks).
        balanced_accuracy=(
            float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))
            if len(y)
            else float("nan")
        ),
        auc=auc,
        loss=loss,
    )
