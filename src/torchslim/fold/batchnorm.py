"""BatchNorm folding in place, as quantization uses it: the pairs come from the one fold planner.

:func:`find_conv_bn_pairs` asks :mod:`torchslim.fold.planner` (the BatchNorm pass of
:func:`torchslim.fold.fold_`, linear merges off), so quantization and ``fold_``
fold the same BatchNorms by the same rules: eval mode, running statistics, the
BatchNorm and its producer each called once, nothing else reading the producer's
output, ``nn.Identity`` between them skipped. :func:`fold_batchnorms_` then folds
each pair into the existing layer's weight (and a new or updated bias) in place.

The arithmetic (:func:`folded_weight_bias`, :func:`fold_bn`) lives in
:mod:`torchslim.fold.bnmath` and is re-exported here.

Example:
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)).eval()
    >>> pairs = fold_batchnorms_(model)
    >>> pairs
    [('0', '1')]
"""

from __future__ import annotations

import torch
from torch import nn

from torchslim.fold.bnmath import BATCHNORMS, FOLDABLE, fold_bn, folded_weight_bias
from torchslim.fold.planner import plan_parts
from torchslim.graph.surgery import get_module, replace_module
from torchslim.graph.trace import TraceError, trace_parts

__all__ = ["BATCHNORMS", "FOLDABLE", "find_conv_bn_pairs", "fold_batchnorms_", "fold_bn", "folded_weight_bias"]


def find_conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(layer_name, bn_name)`` for every BatchNorm that folds into the Conv/Linear before it.

    The rules are those of :func:`torchslim.fold.fold_` (put the model in eval mode
    first: a BatchNorm in training mode does not fold). A model torch.fx cannot
    trace as a whole is searched in its largest sub-modules that trace; to see
    which parts were not searched and why, and why each other BatchNorm does not
    fold, use :func:`torchslim.fold.plan_folds` (``{"linear": "never"}``).

    Raises:
        TraceError: (a :class:`~torchslim.errors.TorchslimError`) no part of the model
            can be traced with ``torch.fx``; the message gives torch.fx's reason.

    Example:
        >>> find_conv_bn_pairs(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).eval())
        [('0', '1')]
        >>> find_conv_bn_pairs(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))    # training mode
        []
    """
    parts, failures = trace_parts(model)
    if not parts:
        raise TraceError("finding BatchNorms to fold: " + "; ".join(str(f) for f in failures))
    return plan_parts(model, parts, linear="never", build=False).pairs


@torch.no_grad()
def fold_batchnorms_(model: nn.Module, pairs: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """Fold every (or the given) Conv/Linear→BatchNorm pair in place; the BatchNorm becomes ``Identity``.

    All folded weights are computed before anything changes, so an error leaves
    the model as it was. Outputs are unchanged in eval mode (to float rounding).
    Pairs folding into the same layer (``conv → bn1 → bn2``) fold one after the other.

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
    folded: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, bn_name in pairs:
        layer = get_module(model, name)
        weight, bias = folded.get(name, (layer.weight, layer.bias))
        folded[name] = folded_weight_bias(layer, get_module(model, bn_name), weight=weight, bias=bias)
    for name, bn_name in pairs:
        layer = get_module(model, name)
        w, b = folded[name]
        layer.weight.data.copy_(w)
        if layer.bias is None:
            layer.bias = nn.Parameter(b.clone(), requires_grad=layer.weight.requires_grad)
        else:
            layer.bias.data.copy_(b)
        replace_module(model, bn_name, nn.Identity())
    return pairs
