"""Local training and evaluation metrics."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score

from fedrema_cli.training import evaluate


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
