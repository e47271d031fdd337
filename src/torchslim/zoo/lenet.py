"""LeNet-300-100 and the Caffe LeNet-5, as used by Han et al. (Deep Compression)."""

from __future__ import annotations

import torch
from torch import nn

from torchslim.zoo.registry import MODELS


class LeNet300(nn.Module):
    """Fully connected 784-300-100-10 with ReLU (266,610 parameters).

    Accepts images (N, 1, 28, 28) or flat vectors (N, 784).
    """

    def __init__(self, in_features: int = 784, num_classes: int = 10, hidden: tuple[int, int] = (300, 100)) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], num_classes)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.fc3(self.relu(self.fc2(self.relu(self.fc1(x)))))


class LeNet5(nn.Module):
    """Caffe LeNet-5: conv 20@5×5, max-pool, conv 50@5×5, max-pool, fc 500, ReLU, fc 10 (431,080 parameters)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.pool2 = nn.MaxPool2d(2)
        side = ((image_size - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(50 * side * side, 500)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool2(self.conv2(self.pool1(self.conv1(x))))
        return self.fc2(self.relu(self.fc1(x.flatten(1))))


@MODELS.register("lenet300")
def lenet300(in_features: int = 784, num_classes: int = 10) -> nn.Module:
    """LeNet-300-100 (784-300-100-10)."""
    return LeNet300(in_features, num_classes)


@MODELS.register("lenet5")
def lenet5(in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> nn.Module:
    """Caffe LeNet-5 (20-50-500-10)."""
    return LeNet5(in_channels, num_classes, image_size)
