"""A small DenseNet (Huang et al. 2017) for 28×28 / 32×32 images.

Each dense layer is BatchNorm → ReLU → 3×3 conv producing ``growth_rate`` new
channels, concatenated to its input; transition layers (BatchNorm → ReLU → 1×1
conv → 2×2 average pool) halve the resolution and compress the channels.

Example:
    >>> model = densenet_small(in_channels=1, num_classes=10)
    >>> model(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.zoo.registry import MODELS


class DenseLayer(nn.Module):
    """BN → ReLU → 3×3 conv (``growth_rate`` channels); output = cat(input, new features)."""

    def __init__(self, in_ch: int, growth_rate: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU(inplace=False)
        self.conv = nn.Conv2d(in_ch, growth_rate, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.relu(self.norm(x)))], dim=1)


class Transition(nn.Sequential):
    """BN → ReLU → 1×1 conv → 2×2 average pool."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU(inplace=False)
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.pool = nn.AvgPool2d(2)


class DenseNetSmall(nn.Module):
    """Stem 3×3 conv, dense blocks separated by transitions, final BN-ReLU, global pool, linear."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        growth_rate: int = 12,
        block_config: tuple[int, ...] = (4, 4, 4),
        init_features: int = 24,
        compression: float = 0.5,
    ) -> None:
        super().__init__()
        if not block_config or any(n < 1 for n in block_config):
            raise TorchslimError(f"densenet_small block_config needs >= 1 layer per block, got {block_config}")
        if not 0 < compression <= 1:
            raise TorchslimError(f"densenet_small compression must be in (0, 1], got {compression}")
        self.stem = nn.Conv2d(in_channels, init_features, 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        ch = init_features
        for i, n in enumerate(block_config):
            layers = []
            for _ in range(n):
                layers.append(DenseLayer(ch, growth_rate))
                ch += growth_rate
            blocks.append(nn.Sequential(*layers))
            if i < len(block_config) - 1:
                out = max(1, int(ch * compression))
                blocks.append(Transition(ch, out))
                ch = out
        self.features = nn.Sequential(*blocks)
        self.norm = nn.BatchNorm2d(ch)
        self.relu = nn.ReLU(inplace=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch, num_classes)
        self.num_features = ch
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.norm(self.features(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


@MODELS.register("densenet_small")
def densenet_small(
    in_channels: int = 1,
    num_classes: int = 10,
    growth_rate: int = 12,
    block_config: tuple[int, ...] = (4, 4, 4),
    init_features: int = 24,
    compression: float = 0.5,
) -> nn.Module:
    """Small DenseNet (default: 3 blocks of 4 layers, growth 12, ~0.1M parameters).

    Example:
        >>> densenet_small(in_channels=3, num_classes=10)(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """
    return DenseNetSmall(in_channels, num_classes, growth_rate, tuple(block_config), init_features, compression)
