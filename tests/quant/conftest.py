"""Quantization test fixtures (the trained SmallResNet and ``digits`` come from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from torchslim.measure import evaluate_accuracy


class Untraceable(nn.Module):
    """Conv-BN-Linear behind data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(144, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > -1e9:
            x = self.bn(self.conv(x))
        return self.fc(x.flatten(1))


@pytest.fixture()
def untraceable() -> Callable[[], nn.Module]:
    """Builds an :class:`Untraceable` model."""
    return Untraceable


@pytest.fixture(scope="session")
def float_accuracy(_trained, digits) -> float:
    return evaluate_accuracy(_trained, digits.loader("test", 512))
