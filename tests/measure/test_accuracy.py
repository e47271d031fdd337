"""Accuracy and loss on data sets where the right answer is known exactly."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.measure import evaluate_accuracy, evaluate_loss_and_accuracy


class Oracle(nn.Module):
    """Returns one-hot logits of ``(x[:, 0] + shift) % classes``; shift 0 is always right."""

    def __init__(self, shift: int = 0, classes: int = 4) -> None:
        super().__init__()
        self.shift, self.classes = shift, classes
        self.dropout = nn.Dropout(0.9)  # would corrupt results if left in train mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = (x[:, 0].long() + self.shift) % self.classes
        return self.dropout(nn.functional.one_hot(labels, self.classes).float() * 10.0)


def batches(n: int = 50, batch: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    y = torch.arange(n) % 4
    x = torch.stack([y.float(), torch.zeros(n)], dim=1)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def test_exactly_right_and_exactly_wrong() -> None:
    assert evaluate_accuracy(Oracle(0).train(), batches()) == 1.0
    assert evaluate_accuracy(Oracle(1), batches()) == 0.0


def test_partial_accuracy_counts_samples_not_batches() -> None:
    data = batches(n=10, batch=4)  # batches of 4, 4, 2
    x, y = data[2]
    data[2] = (x, (y + 1) % 4)  # the last 2 samples are wrong
    assert evaluate_accuracy(Oracle(0), data) == pytest.approx(8 / 10)


def test_training_mode_restored() -> None:
    model = Oracle(0).train()
    evaluate_accuracy(model, batches())
    assert model.training and model.dropout.training
    model.eval()
    evaluate_accuracy(model, batches())
    assert not model.training


def test_loss_and_accuracy() -> None:
    loss, acc = evaluate_loss_and_accuracy(Oracle(0), batches())
    # logits 10 on the right class, 0 on three others: CE = log(1 + 3 e^-10)
    assert acc == 1.0
    assert loss == pytest.approx(math.log(1 + 3 * math.exp(-10)), abs=1e-6)
    loss_wrong, acc_wrong = evaluate_loss_and_accuracy(Oracle(1), batches())
    assert acc_wrong == 0.0 and loss_wrong == pytest.approx(10 + math.log(1 + 3 * math.exp(-10)), rel=1e-5)


def test_empty_or_malformed_loader() -> None:
    with pytest.raises(TorchslimError, match="empty"):
        evaluate_accuracy(Oracle(0), [])
    with pytest.raises(TorchslimError, match="pair"):
        evaluate_accuracy(Oracle(0), [torch.zeros(2, 2)])
