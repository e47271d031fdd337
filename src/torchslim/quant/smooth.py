"""Activation smoothing (SmoothQuant, Xiao et al. 2023) for Linear layers that read a LayerNorm.

A transformer's LayerNorm outputs carry a few channels tens of times larger than
the rest; one per-tensor 8-bit scale then spends its range on them and leaves
the other channels a handful of levels. Smoothing divides each input channel
``j`` by ``s_j = max|x_j|**alpha / max|w_j|**(1 - alpha)`` and multiplies
the weights' input column ``j`` by ``s_j``: the float product is unchanged
(``x W^T = (x / s)(W diag(s))^T``), the activation's range is flattened, and
part of the difficulty moves to the weights, which are quantized per output
channel. ``alpha`` sets how much moves.

Which layers: Linear layers whose input is a LayerNorm's output tensor, found
by running calibration batches (so every consumer of one LayerNorm, e.g. a
transformer's Q, K and V projections, is found, and they share one ``s``).
In BERT-style (post-LN) models the LayerNorm output is also the residual, so
``1/s`` cannot be folded into the LayerNorm; it stays an elementwise ``Mul``
in front of the layer's input quantizer (:class:`InputScale`), one per
LayerNorm after export.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.measure.macs import batch_inputs, call_model, eval_mode
from torchslim.quant.tokens import mask_of, real_tokens, token_mask


class InputScale(nn.Module):
    """Multiply the last dimension by a fixed per-channel vector (``x * inv_scale``).

    Example:
        >>> InputScale(torch.tensor([2.0, 4.0]))(torch.ones(1, 2)).tolist()
        [[0.5, 0.25]]
    """

    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("inv_scale", 1.0 / scale.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.inv_scale

    def extra_repr(self) -> str:
        return f"channels={self.inv_scale.numel()}"


@dataclass
class SmoothedGroup:
    """Linear layers that read one LayerNorm's output and share one smoothing vector.

    Attributes:
        layernorm: the LayerNorm's qualified name.
        layers: the Linear layers' names.
        scale_min: smallest ``s_j``.
        scale_max: largest ``s_j``.
        act_absmax_before: largest ``|x_j|`` over the calibration batches.
        act_absmax_after: largest ``|x_j / s_j|``.
    """

    layernorm: str
    layers: list[str]
    scale_min: float
    scale_max: float
    act_absmax_before: float
    act_absmax_after: float


def _smoothing_scale(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s_j = max|x_j|**alpha / max|w_j|**(1 - alpha)``; channels that never fire (or have no weight) keep 1.

    Example:
        >>> _smoothing_scale(torch.tensor([16.0, 0.0]), torch.tensor([1.0, 1.0]), 0.5).tolist()
        [4.0, 1.0]
    """
    s = act_absmax.clamp_min(1e-12).pow(alpha) / weight_absmax.clamp_min(1e-12).pow(1.0 - alpha)
    dead = (act_absmax <= 0) | (weight_absmax <= 0)
    return torch.where(dead, torch.ones_like(s), s.clamp(1e-4, 1e4))


@torch.no_grad()
def smooth_layernorm_inputs_(
    model: nn.Module, layer_names: Iterable[str], batches: list[Any], alpha: float, mask_key: str | None = None
) -> list[SmoothedGroup]:
    """Smooth, in place, every named Linear whose input is a LayerNorm's output.

    Runs ``batches`` through ``model`` (eval mode) to find which named Linear
    layers read a LayerNorm output and each input channel's largest magnitude;
    then each group's weights are scaled by ``s`` and every layer of the group
    gets ``input_smooth = InputScale(s)``. The float function is unchanged once
    the layers apply ``input_smooth`` (quantized layers do, before their input
    quantizer). Layers that do not read a LayerNorm are left alone.

    Args:
        model: the float model (modified in place).
        layer_names: candidate Linear layers (the ones being quantized).
        batches: calibration batches (``(inputs, targets)`` or bare inputs).
        alpha: migration strength in (0, 1].
        mask_key: key of a ``[batch, tokens]`` mask in dict batches: channel maxima
            over real tokens only (:mod:`torchslim.quant.tokens`); ``None``: every position.

    Returns:
        The smoothed groups (empty if no candidate reads a LayerNorm).

    Raises:
        TorchslimError: ``alpha`` outside (0, 1] or no batch given.

    Example:
        >>> m = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 2))
        >>> [g.layers for g in smooth_layernorm_inputs_(m, ["1"], [torch.randn(8, 4)], 0.5)]
        [['1']]
    """
    if not 0.0 < alpha <= 1.0:
        raise TorchslimError(f"smoothing alpha must be in (0, 1], got {alpha}")
    if not batches:
        raise TorchslimError("smoothing needs at least one calibration batch")
    modules = dict(model.named_modules())
    linears = {n: modules[n] for n in layer_names if isinstance(modules.get(n), nn.Linear)}
    norms = {n: m for n, m in modules.items() if isinstance(m, nn.LayerNorm)}
    live: dict[int, tuple[str, torch.Tensor]] = {}  # id -> (LayerNorm name, its output), for one forward
    reads: dict[str, str] = {}  # linear -> LayerNorm
    not_ln: set[str] = set()  # linears seen reading something else at least once
    absmax: dict[str, torch.Tensor] = {}

    def ln_hook(name: str) -> Any:
        def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            live[id(out)] = (name, out)

        return hook

    def lin_hook(name: str) -> Any:
        def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
            x = inp[0]
            hit = live.get(id(x))
            if hit is None or hit[1] is not x:
                not_ln.add(name)
                return
            if reads.setdefault(name, hit[0]) != hit[0]:
                not_ln.add(name)
            a = real_tokens(x.detach()).abs().reshape(-1, x.shape[-1]).amax(0).float()
            absmax[name] = a if name not in absmax else torch.maximum(absmax[name], a)

        return hook

    handles = [m.register_forward_hook(ln_hook(n)) for n, m in norms.items()]
    handles += [m.register_forward_pre_hook(lin_hook(n)) for n, m in linears.items()]
    try:
        with eval_mode(model):
            for batch in batches:
                inputs = batch_inputs(batch, model)
                with token_mask(mask_of(inputs, mask_key)):
                    call_model(model, inputs)
                live.clear()
    finally:
        for h in handles:
            h.remove()
    by_norm: dict[str, list[str]] = {}
    for name, ln in reads.items():
        if name not in not_ln:
            by_norm.setdefault(ln, []).append(name)
    groups: list[SmoothedGroup] = []
    for ln, names in by_norm.items():
        act = torch.stack([absmax[n] for n in names]).amax(0)
        w = torch.stack([linears[n].weight.detach().abs().amax(0).float() for n in names]).amax(0)
        s = _smoothing_scale(act, w, alpha)
        for n in names:
            layer = linears[n]
            layer.weight.mul_(s.to(layer.weight.dtype))
            layer.add_module("input_smooth", InputScale(s))
        groups.append(SmoothedGroup(ln, sorted(names), float(s.min()), float(s.max()), float(act.max()), float((act / s).max())))
    return groups


def attach_input_scales(model: nn.Module, names: Iterable[str], state: dict[str, torch.Tensor]) -> None:
    """Give the named layers an :class:`InputScale` shaped like ``state``'s (before ``load_state_dict``).

    Raises:
        TorchslimError: a named layer is missing or ``state`` has no scale for it.
    """
    modules = dict(model.named_modules())
    for name in names:
        key = f"{name}.input_smooth.inv_scale"
        if name not in modules or key not in state:
            raise TorchslimError(f"smoothed layer {name!r} has no {key!r} in the saved state")
        modules[name].add_module("input_smooth", InputScale(1.0 / state[key].float()))
