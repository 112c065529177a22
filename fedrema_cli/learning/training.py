"""Local training and evaluation at a site: one loop, private (Opacus DP-SGD) or not.

The loop is the same either way; with a privacy run the model, optimizer and loader come
back from `privacy.engine` wrapped for per-sample clipping, noise and Poisson sampling, and
the steps Opacus actually took are recorded in the site's accountant.

Imbalanced labels. `train_local` takes optional per-class loss weights
(`ClassWeightedCrossEntropy`); `inverse_frequency_weights` turns label counts into them.
Under DP the counts must not be the site's exact counts, which are a function of the records
that DP-SGD's accounting does not cover: `dp_label_counts` releases them through a Gaussian
mechanism whose (sigma, q=1, 1 step) triple the site's accountant composes with the DP-SGD
steps (or the federation fixes the weights in its public config).

No class-balanced sampler is offered. DP-SGD's accounting (Opacus's and ours) assumes Poisson
sampling of every record with the same probability q. A sampler that draws minority records
more often gives them a larger rate q_c > q; the privacy of a record depends on its own rate,
so the accountant would have to be charged at max_c q_c (more noise for the same epsilon) and
the rates would themselves be a function of the label counts. Opacus's loader records one q
and ignores a WeightedRandomSampler's weights (opacus#813), and `privacy.engine` refuses any
weighted or custom sampler. Re-weighting the loss gives the same expected gradient with the
same uniform q, so the accounting stays exactly what it was.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader, TensorDataset

from fedrema_cli.config import LABEL_COUNT_NOISE, TrainingConfig
from fedrema_cli.learning.metrics import Metrics, basic_metrics

if TYPE_CHECKING:
    from privacy import RoundPlan, SiteAccountant
    from privacy.analysis import Mechanism, Triple
    from privacy.engine import RoundRecord

__all__ = [
    "ClassWeightedCrossEntropy",
    "Metrics",
    "NoisyLabelCounts",
    "PrivateRun",
    "TrainResult",
    "balanced_class_weights",
    "dp_label_counts",
    "evaluate",
    "finetune_head",
    "fit_majority",
    "inverse_frequency_weights",
    "predict_proba",
    "train_local",
]


@dataclass(frozen=True)
class TrainResult:
    """What a local round did."""

    steps: int
    examples: int
    mean_loss: float


MAX_CLASS_WEIGHT = 10.0
"""Cap on an inverse-frequency weight: 10 is the weight of a 5% class among two. A larger
weight would mostly be eaten by DP-SGD's clipping anyway, and a noisy count near 0 would
otherwise give an unbounded weight."""

#: Told after each epoch: (epochs done, epochs in all, optimizer steps so far).
Progress = Callable[[int, int, int], None]


class ClassWeightedCrossEntropy(nn.Module):
    """Cross-entropy with a fixed weight per class: record i's loss is ``w[y_i] * CE_i``.

    The reduction divides by the number of records in the batch, never by the batch's sum of
    weights. torch's ``CrossEntropyLoss(weight=w)`` with ``reduction="mean"`` divides by
    ``sum_j w[y_j]``: one record's gradient then depends on the labels of the others in its
    batch, so adding or removing a record rescales every other record's contribution, and the
    per-record sensitivity DP-SGD's accounting assumes no longer holds. Here, with Opacus's
    ``loss_reduction="mean"`` (it multiplies per-sample gradients back by the batch size), the
    per-sample gradient of record i is exactly ``w[y_i] * grad CE_i``: a function of that
    record and the public weights alone, clipped to norm C like any other; the noisy sum is
    divided by the expected batch size, which depends on no record either.

    ``reduction`` is an attribute because Opacus's ghost clipping sets it to ``"none"`` to get
    per-sample losses; ``"sum"`` is accepted too.
    """

    def __init__(self, weights: Sequence[float] | np.ndarray) -> None:
        super().__init__()
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or not len(w) or not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise ValueError(f"class weights must be positive finite numbers, got {weights!r}")
        self.register_buffer("weights", torch.from_numpy(w.astype(np.float32)))
        self.reduction = "mean"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_record = functional.cross_entropy(logits, target, reduction="none")
        per_record = per_record * self.weights[target]
        if self.reduction == "none":
            return per_record
        if self.reduction == "sum" or not len(per_record):  # an empty Poisson batch: 0, not NaN
            return per_record.sum()
        return per_record.mean()


def inverse_frequency_weights(
    counts: Sequence[float] | np.ndarray,
    *,
    normalize: Literal["mean", "max"],
    max_weight: float = MAX_CLASS_WEIGHT,
) -> np.ndarray:
    """Per-class weights proportional to ``1 / n_c``, so every class carries the same total.

    ``n / (K * n_c)`` (scikit-learn's "balanced": mean weight per record 1), capped at
    ``max_weight``; counts below 1 (a class the site lacks, or a noisy count from
    `dp_label_counts`) are taken as 1 first. ``normalize="max"`` then divides by the largest
    weight, so the rarest class has weight 1 and the others less.

    Use ``"max"`` under DP-SGD and ``"mean"`` without. Clipping bounds each weighted
    per-sample gradient by C, and at C = 1 unweighted per-sample norms are already close to C
    (0.85-0.93 at initialisation on both bundled tables): a weight above 1 is mostly clipped
    away (a weight of 8.3 on a 6% class acted as about 2), while weights of at most 1 only
    shrink gradients, which clipping leaves alone, so the balance survives. Measured with
    `fedrema simulate` defaults (20 rounds, seeds 1-3), mean balanced accuracy on heart disease
    at epsilon 3: fedrema 0.63 unweighted, 0.63 with "mean", 0.76 with "max". Without DP there
    is no clipping and "max" mostly slows learning (it scales the majority's gradients down by
    up to 1/16 on breast-cancer-imbalanced): "mean" was better for 5 of the 6 (method, table)
    pairs of fedavg, fedrema and local on the two tables.
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or len(c) < 2 or not np.all(np.isfinite(c)):
        raise ValueError(f"expected finite counts for at least two classes, got {counts!r}")
    if normalize not in ("mean", "max"):
        raise ValueError(f"normalize must be 'mean' or 'max', got {normalize!r}")
    c = np.maximum(c, 1.0)
    w = np.minimum(c.sum() / (len(c) * c), max_weight)
    return w / w.max() if normalize == "max" else w


@dataclass(frozen=True)
class NoisyLabelCounts:
    """A site's label counts released by the Gaussian mechanism, and what that cost.

    ``epsilon`` is the mechanism's epsilon on its own, at ``delta``. It composes with the
    site's DP-SGD steps much more cheaply than adding it: append ``history()`` to the site's
    accountant (and ledger) and the RDP accountant composes both exactly.
    """

    counts: np.ndarray
    noise_multiplier: float
    epsilon: float
    delta: float
    mechanism: str

    def history(self) -> list[Triple]:
        """The accountant entry of this release: one step of the Gaussian mechanism, q = 1."""
        return [self.triple()]

    # What a ledger entry records of a release (`privacy.ledger.RoundRecordLike`): the
    # histogram's L2 sensitivity stands where DP-SGD's clipping norm does.
    max_grad_norm = 1.0
    grad_sample_mode = "label-counts"

    def triple(self) -> Triple:
        return (self.noise_multiplier, 1.0, 1)


def dp_label_counts(
    y: np.ndarray,
    num_classes: int,
    *,
    noise_multiplier: float,
    rng: np.random.Generator,
    delta: float,
    mechanism: Mechanism = "rdp",
) -> NoisyLabelCounts:
    """Label counts plus N(0, noise_multiplier^2) noise per class (the Gaussian mechanism).

    Adding or removing one record changes one count by 1, so the histogram's L2 sensitivity
    is 1 and the noise multiplier is the noise's standard deviation: record-level DP in the
    same unit (add/remove one) and with the same accountant as DP-SGD, as one step at
    sampling rate 1. ``rng`` must be seeded from the OS at a real site
    (``np.random.default_rng()``); only simulations pass a seeded one.
    """
    from privacy import analysis

    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"noise multiplier must be positive, got {noise_multiplier}")
    labels = np.asarray(y, dtype=np.int64)
    exact = np.bincount(labels, minlength=num_classes)[:num_classes].astype(np.float64)
    noisy = exact + rng.normal(0.0, noise_multiplier, size=num_classes)
    history = [(float(noise_multiplier), 1.0, 1)]
    return NoisyLabelCounts(
        counts=noisy,
        noise_multiplier=float(noise_multiplier),
        epsilon=float(analysis.epsilon(history, delta=delta, mechanism=mechanism)),
        delta=delta,
        mechanism=mechanism,
    )


def balanced_class_weights(
    y: np.ndarray,
    num_classes: int,
    *,
    private: bool,
    rng: np.random.Generator | None = None,
    delta: float | None = None,
    mechanism: Mechanism = "rdp",
    noise_multiplier: float = LABEL_COUNT_NOISE,
) -> tuple[np.ndarray, NoisyLabelCounts | None]:
    """A site's inverse-frequency class weights, and the DP release they came from (if any).

    Without DP: the exact label counts, ``normalize="mean"``. With DP (``private``): counts
    from `dp_label_counts` (``rng`` and ``delta`` required), ``normalize="max"`` (see
    `inverse_frequency_weights` for both choices); the returned release's ``history()`` must be
    added to the site's accountant and ledger before any model trained with these weights
    leaves the site. Compute once per site and keep the result: every new draw costs again.
    """
    labels = np.asarray(y, dtype=np.int64)
    if not private:
        counts = np.bincount(labels, minlength=num_classes)[:num_classes]
        return inverse_frequency_weights(counts, normalize="mean"), None
    if rng is None or delta is None:
        raise ValueError("DP class weights need a random generator and the policy's delta")
    release = dp_label_counts(
        labels,
        num_classes,
        noise_multiplier=noise_multiplier,
        rng=rng,
        delta=delta,
        mechanism=mechanism,
    )
    return inverse_frequency_weights(release.counts, normalize="max"), release


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
    class_weights: Sequence[float] | np.ndarray | None = None,
    proximal: Proximal | None = None,
    progress: Progress | None = None,
) -> tuple[nn.Module, TrainResult, RoundRecord | None]:
    """Train ``model`` on (x, y) for ``config.local_epochs`` epochs; returns a plain nn.Module.

    Without DP: shuffled mini-batches in an order seeded by ``seed``. With DP: Opacus with
    Poisson sampling at the plan's rate; the steps it accounted are added to the accountant.
    Sampling and noise are drawn from generators seeded by the OS's randomness, never from
    ``seed``: a noise stream anyone can replay would protect nothing. The one exception is
    ``replayable_noise_seed``, which only simulations set (`fedrema simulate`, benchmarks), so
    their DP results can be reproduced; no command of a real site can set it.

    ``class_weights``: one loss weight per class (`ClassWeightedCrossEntropy`); they must not
    depend on this site's exact records when ``private`` is given (see the module docstring).
    Weighting changes what is learned, never the accounting: same steps, q, noise and epsilon.

    ``proximal``: after every step, pull the weights towards a centre (MR-MTL; `Proximal`).

    ``progress``: called after each epoch with (epochs done, epochs, steps so far), so a
    caller can show how far training is; it must not touch the model.
    """
    dataset = _tensors(x, y)
    pull = _pull(model, proximal, config.lr)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    loss_fn: nn.Module = (
        nn.CrossEntropyLoss() if class_weights is None else ClassWeightedCrossEntropy(class_weights)
    )
    if private is None:
        loader = DataLoader(
            dataset,
            batch_size=config.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )
        steps, loss = _loop(
            model, optimizer, loader, loss_fn, config.local_epochs, pull, progress=progress
        )
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
            dp.model,
            dp.optimizer,
            dp.data_loader,
            dp.criterion,
            private.plan.local_epochs,
            pull,
            progress=progress,
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
    class_weights: Sequence[float] | np.ndarray | None = None,
    progress: Progress | None = None,
) -> tuple[nn.Module, TrainResult, RoundRecord | None]:
    """One round of `train_local` in which only the classifier head learns.

    Same optimizer, epochs and loop (DP-SGD when ``private`` is given: only the head's
    per-sample gradients are clipped and noised, and the accountant records the steps), so a
    fine-tuning round costs exactly what a federated round costs.
    """
    from fedrema_cli.learning.models import _unwrap

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
        class_weights=class_weights,
        progress=progress,
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
class Proximal:
    """A pull ``lam/2 * ||w - centre||^2`` on the weights (MR-MTL's mean regularizer).

    It is applied as its own step after each optimizer step, from the weights before that
    step: for SGD without momentum that is exactly adding ``lam * (w - centre)`` to the
    gradient. Under DP it comes after the clipped, noised step and uses no record, only the
    site's own weights and the federation's published model: a post-processing, so the
    accountant is right to ignore it.
    """

    lam: float
    centre: Mapping[str, np.ndarray]


def _pull(
    model: nn.Module, proximal: Proximal | None, lr: float
) -> tuple[float, list[tuple[torch.Tensor, torch.Tensor]]] | None:
    if proximal is None or proximal.lam == 0:
        return None
    from fedrema_cli.learning.models import _unwrap

    pairs = [
        (p, torch.from_numpy(np.asarray(proximal.centre[name], dtype=np.float32)))
        for name, p in _unwrap(model).named_parameters()
        if p.requires_grad and name in proximal.centre
    ]
    return lr * proximal.lam, pairs


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
    pull: tuple[float, list[tuple[torch.Tensor, torch.Tensor]]] | None = None,
    *,
    progress: Progress | None = None,
) -> tuple[int, float]:
    """Plain SGD epochs. Empty Poisson batches go through forward/backward too: Opacus turns
    them into a noise-only step, which the accountant counts."""
    model.train()
    steps, total, seen = 0, 0.0, 0
    for epoch in range(epochs):
        for xb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            before = [p.detach().clone() for p, _ in pull[1]] if pull else []
            optimizer.step()
            if pull:
                with torch.no_grad():
                    for (p, centre), w in zip(pull[1], before, strict=True):
                        p.sub_(pull[0] * (w - centre))
            steps += 1
            if len(yb):
                total += float(loss.detach())
                seen += 1
        if progress is not None:
            progress(epoch + 1, epochs, steps)
    return steps, total / max(seen, 1)


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    logits = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return torch.softmax(logits, dim=-1).numpy().astype(np.float64)


def evaluate(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    threshold: float | None = None,
) -> Metrics:
    """Accuracy, balanced accuracy and ROC AUC (`learning.metrics.basic_metrics`): AUC is
    None when the test set has a single class; with more than two classes, one-vs-rest
    averaged over the classes the test set holds. ``threshold`` (binary models only, chosen on
    validation data): predict class 1 when its probability is at least the threshold; None:
    the most probable class."""
    proba = predict_proba(model, x)
    if proba.shape[1] != num_classes:
        raise ValueError(f"the model has {proba.shape[1]} outputs for {num_classes} classes")
    return basic_metrics(proba, y, threshold=threshold)
