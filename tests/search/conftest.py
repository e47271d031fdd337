"""Fixtures of the search tests: a small MLP trained on digits (a few seconds, once per session)."""

import copy

import pytest
import torch

from torchslim.measure import num_threads
from torchslim.train import finetune
from torchslim.zoo import create_model


@pytest.fixture(scope="session")
def _mlp(digits):
    torch.manual_seed(0)
    model = create_model("lenet300", in_features=64)
    with num_threads(1):
        finetune(model, digits, {"epochs": 4, "lr": 0.1, "batch_size": 64}, progress=False)
    return model.eval()


@pytest.fixture()
def mlp(_mlp):
    """A fresh copy of the trained LeNet-300-100 (64 inputs) on digits."""
    return copy.deepcopy(_mlp)
