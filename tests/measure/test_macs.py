"""MAC counts from torch's FLOP counter, checked against hand computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.measure import count_macs


def lenet300() -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
    )


def lenet5() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10),
    )


def test_mlp_macs() -> None:
    # 784*300 + 300*100 + 100*10
    assert count_macs(lenet300(), torch.randn(16, 1, 28, 28)) == 266_200


def test_lenet5_macs() -> None:
    # conv1 24*24*20*(1*25)=288,000; conv2 8*8*50*(20*25)=1,600,000; fc 400,000 + 5,000
    assert count_macs(lenet5(), torch.randn(4, 1, 28, 28)) == 2_293_000


def test_macs_are_per_sample_and_ignore_zeros() -> None:
    model = lenet300()
    with torch.no_grad():
        model[1].weight.zero_()
    assert count_macs(model, torch.randn(1, 784)) == count_macs(model, torch.randn(64, 784)) == 266_200


def test_training_mode_is_restored() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Dropout(), nn.Linear(8, 2))
    model.train()
    model[2].eval()  # a mixed state must come back exactly
    assert count_macs(model, torch.randn(3, 8)) == 8 * 8 + 8 * 2
    assert [m.training for m in model.modules()] == [True, True, True, False, True]
    assert model[1].running_mean.abs().sum() == 0  # eval forward did not update BN statistics


def test_dict_and_tuple_inputs() -> None:
    class TwoIn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(5, 3)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(y)

    model = TwoIn()
    assert count_macs(model, (torch.randn(2, 4), torch.randn(2, 5))) == 27
    assert count_macs(model, {"x": torch.randn(2, 4), "y": torch.randn(2, 5)}) == 27


def test_bad_example_input() -> None:
    with pytest.raises(TorchslimError, match="example_input"):
        count_macs(nn.Linear(2, 2), [1, 2])  # type: ignore[arg-type]
