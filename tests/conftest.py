"""Suite-wide settings and shared fixtures.

Every test runs with one intra-op thread (restored afterwards): the models here
are small, one thread is as fast as two for them, and a test's timing then does
not depend on what else the machine is running. Tests that measure threads set
them explicitly.

``SmallResNet`` trained on real digits (``trained``: a fresh copy per test) serves
the quantization and deployment tests.
"""

import copy

import pytest
import torch
from torch import nn

from torchslim.data import load_data
from torchslim.measure import num_threads
from torchslim.train import finetune


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class SmallResNet(nn.Module):
    """Conv-BN-ReLU, a residual block (functional add), max-pool, global pool, Linear: 8×8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(16, 32, 3, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.relu(self.bn2(self.conv2(h)) + h)
        h = self.relu(self.conv3(self.pool(h)))
        return self.fc(self.gap(h).flatten(1))


@pytest.fixture(scope="session")
def digits():
    return load_data("digits")


@pytest.fixture(scope="session")
def _trained(digits) -> nn.Module:
    torch.manual_seed(0)
    model = SmallResNet()
    with num_threads(1):
        finetune(model, digits, {"epochs": 8, "lr": 0.05, "batch_size": 64, "schedule": "cosine"}, progress=False)
    return model.eval()


@pytest.fixture()
def trained(_trained) -> nn.Module:
    """A fresh copy of the trained float model (tests may mutate it)."""
    return copy.deepcopy(_trained)
