"""BatchNorm folding into the preceding convolution or linear layer (exact in eval mode).

``y = gamma * (W x + b - mean) / sqrt(var + eps) + beta`` equals ``W' x + b'`` with
``W' = W * k`` (``k = gamma / sqrt(var + eps)`` per output channel) and
``b' = (b - mean) * k + beta``. Pairs are found by tracing the model with
``torch.fx``: a Conv/Linear whose only user is a BatchNorm.

Example:
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)).eval()
    >>> pairs = fold_batchnorms_(model)
    >>> pairs
    [('0', '1')]
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.graph.surgery import get_module, replace_module

FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def folded_weight_bias(layer: nn.Module, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``layer`` with ``bn`` (running statistics) folded in.

    Raises:
        TorchslimError: the BatchNorm has no running statistics or its width differs.

    Example:
        >>> w, b = folded_weight_bias(nn.Linear(3, 2), nn.BatchNorm1d(2).eval())
        >>> w.shape, b.shape
        (torch.Size([2, 3]), torch.Size([2]))
    """
    if not isinstance(bn, BATCHNORMS) or bn.running_mean is None or bn.running_var is None:
        raise TorchslimError("only BatchNorm with running statistics can be folded")
    weight = layer.weight
    out = weight.shape[1] * layer.groups if isinstance(layer, nn.ConvTranspose2d) else weight.shape[0]
    if bn.num_features != out:
        raise TorchslimError(f"BatchNorm width {bn.num_features} does not match the layer's {out} outputs")
    var = bn.running_var.double()
    k = (bn.weight.double() if bn.weight is not None else torch.ones_like(var)) / torch.sqrt(var + bn.eps)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(var)
    shape = [-1] + [1] * (weight.dim() - 1)
    new_w = (weight.double() * k.reshape(shape)).to(weight.dtype)
    new_b = ((bias - bn.running_mean.double()) * k + beta).to(weight.dtype)
    return new_w, new_b


def find_conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(layer_name, bn_name)`` for every Conv/Linear whose only consumer is a BatchNorm.

    Raises:
        TorchslimError: the model cannot be traced with ``torch.fx``.

    Example:
        >>> find_conv_bn_pairs(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
        [('0', '1')]
    """
    try:
        graph = torch.fx.Tracer().trace(model)
    except Exception as exc:  # fx raises many types on untraceable code
        raise TorchslimError(f"cannot trace {type(model).__name__} with torch.fx to find BatchNorms: {exc}") from exc
    modules = dict(model.named_modules())
    pairs: list[tuple[str, str]] = []
    bn_uses: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules.get(str(node.target)), BATCHNORMS):
            bn_uses[str(node.target)] = bn_uses.get(str(node.target), 0) + 1
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), FOLDABLE):
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module":
            continue
        bn_name = str(users[0].target)
        if isinstance(modules.get(bn_name), BATCHNORMS) and bn_uses.get(bn_name) == 1 and users[0].args[0] is node:
            pairs.append((str(node.target), bn_name))
    return pairs


@torch.no_grad()
def fold_batchnorms_(model: nn.Module, pairs: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """Fold every (or the given) Conv/Linear→BatchNorm pair in place; the BatchNorm becomes ``Identity``.

    All folded weights are computed before anything changes, so an error leaves
    the model as it was. Outputs are unchanged in eval mode (to float rounding).

    Args:
        model: the model (modified in place).
        pairs: ``(layer, bn)`` names; found with :func:`find_conv_bn_pairs` when ``None``.

    Returns:
        The pairs folded.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).eval()
        >>> fold_batchnorms_(m)
        [('0', '1')]
        >>> type(m[1]).__name__
        'Identity'
    """
    pairs = find_conv_bn_pairs(model) if pairs is None else pairs
    new = [(name, bn_name, *folded_weight_bias(get_module(model, name), get_module(model, bn_name))) for name, bn_name in pairs]
    for name, bn_name, w, b in new:
        layer = get_module(model, name)
        layer.weight.data.copy_(w)
        if layer.bias is None:
            layer.bias = nn.Parameter(b.clone(), requires_grad=layer.weight.requires_grad)
        else:
            layer.bias.data.copy_(b)
        replace_module(model, bn_name, nn.Identity())
    return pairs


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
    if not isinstance(layer, FOLDABLE):
        raise TorchslimError(f"cannot fold a BatchNorm into a {type(layer).__name__}")
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
