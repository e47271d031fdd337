"""The arithmetic of a BatchNorm fold (exact in eval mode): the folded weight and bias, or a new folded layer.

``y = gamma * (W x + b - mean) / sqrt(var + eps) + beta`` equals ``W' x + b'`` with
``W' = W * k`` (``k = gamma / sqrt(var + eps)`` per output channel) and
``b' = (b - mean) * k + beta``. Which pairs fold is decided by
:mod:`torchslim.fold.planner`; :mod:`torchslim.fold.batchnorm` folds them in place.

Example:
    >>> conv, bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4).eval()
    >>> x = torch.randn(2, 1, 8, 8)
    >>> torch.allclose(fold_bn(conv, bn)(x), bn(conv(x)), atol=1e-6)
    True
"""

from __future__ import annotations

import torch
from torch import nn

from torchslim.errors import TorchslimError

FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def check_fold(layer: nn.Module, bn: nn.Module) -> None:
    """Raise what :func:`fold_bn` would raise for this pair, without computing anything.

    Raises:
        TorchslimError: unsupported layer, no running statistics or mismatched widths.

    Example:
        >>> check_fold(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(4).eval())
        Traceback (most recent call last):
            ...
        torchslim.errors.TorchslimError: BatchNorm width 4 does not match the layer's 8 outputs
    """
    if not isinstance(layer, FOLDABLE):
        raise TorchslimError(f"cannot fold a BatchNorm into a {type(layer).__name__}")
    _check_statistics_and_width(layer, layer.weight, bn)


def _check_statistics_and_width(layer: nn.Module, weight: torch.Tensor, bn: nn.Module) -> None:
    if not isinstance(bn, BATCHNORMS) or bn.running_mean is None or bn.running_var is None:
        raise TorchslimError("only BatchNorm with running statistics can be folded")
    out = weight.shape[1] * layer.groups if isinstance(layer, nn.ConvTranspose2d) else weight.shape[0]
    if bn.num_features != out:
        raise TorchslimError(f"BatchNorm width {bn.num_features} does not match the layer's {out} outputs")


@torch.no_grad()
def folded_weight_bias(
    layer: nn.Module, bn: nn.Module, *, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``layer`` with ``bn`` (running statistics) folded in.

    Args:
        layer: the Conv/Linear before ``bn``.
        bn: the BatchNorm (its running statistics, weight and bias).
        weight, bias: fold into these instead of ``layer.weight``/``layer.bias`` (the
            result of an earlier fold into the same layer); ``bias=None`` with ``weight``
            given means no bias.

    Raises:
        TorchslimError: the BatchNorm has no running statistics or its width differs.

    Example:
        >>> w, b = folded_weight_bias(nn.Linear(3, 2), nn.BatchNorm1d(2).eval())
        >>> w.shape, b.shape
        (torch.Size([2, 3]), torch.Size([2]))
    """
    if weight is None:
        weight, bias = layer.weight, layer.bias
    _check_statistics_and_width(layer, weight, bn)
    var = bn.running_var.double()
    k = (bn.weight.double() if bn.weight is not None else torch.ones_like(var)) / torch.sqrt(var + bn.eps)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    b0 = bias.double() if bias is not None else torch.zeros_like(var)
    shape = [-1] + [1] * (weight.dim() - 1)
    new_w = (weight.double() * k.reshape(shape)).to(weight.dtype)
    new_b = ((b0 - bn.running_mean.double()) * k + beta).to(weight.dtype)
    return new_w, new_b


def fold_bn(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """A new Conv/Linear (with a bias) equal to ``bn(layer(x))`` in eval mode; ``layer`` is left as it is.

    Used by :func:`torchslim.fold.fold_` to plan every fold before mutating the
    model. Works for grouped and depthwise convolutions (BatchNorm acts per output
    channel).

    Raises:
        TorchslimError: unsupported layer, no running statistics or mismatched widths.

    Example:
        >>> fused = fold_bn(nn.Conv2d(3, 8, 3, groups=1), nn.BatchNorm2d(8).eval())
        >>> fused.bias is not None
        True
    """
    check_fold(layer, bn)
    w, b = folded_weight_bias(layer, bn)
    if isinstance(layer, nn.Linear):
        new: nn.Module = nn.Linear(layer.in_features, layer.out_features, bias=True)
    else:
        new = type(layer)(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=True,
            padding_mode=layer.padding_mode,
        )
    new = new.to(device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        new.bias.copy_(b)
    new.weight.requires_grad_(layer.weight.requires_grad)
    new.train(layer.training)
    return new
