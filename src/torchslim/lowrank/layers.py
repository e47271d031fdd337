"""The per-layer arithmetic of ``factorize_``: which method, which ranks, what a layer costs, what it reads.

* :func:`layer_method`: truncated SVD for Linear and 1×1 Conv2d, Tucker-2 for k×k
  ungrouped Conv2d, ``None`` otherwise.
* :func:`layer_ranks` and :func:`layer_cost`: the ranks a rule gives and the
  ``(params, macs)`` of the layer, dense or factorised.
* :func:`measure_pixels` and :func:`input_grams`: what one forward (or the
  calibration batches) tells about each layer's input, with hooks that are
  removed and modes that are restored afterwards (the model is only run).

Example:
    >>> layer = LowRankLayer("fc", nn.Linear(300, 100), "svd", LayerFactorizeConfig(ratio=0.5))
    >>> ranks = layer_ranks(layer, layer.rule)
    >>> ranks, layer_cost(layer, ranks), layer_cost(layer, None)
    ((37,), (14800, 14800), (30000, 30000))
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from torchslim.config import Config
from torchslim.errors import TransformRefusedError
from torchslim.graph.surgery import is_conv1d
from torchslim.lowrank.svd import rank_for_energy, singular_values, svd_rank_for_ratio
from torchslim.lowrank.tucker import tucker2_ranks_for_ratio
from torchslim.measure.macs import ExampleInput, batch_inputs, call_model, eval_mode, first_sample


class LayerFactorizeConfig(Config):
    """Per-layer override of the rank rule (set at most one)."""

    rank: int | None = Field(default=None, ge=1)
    energy: float | None = Field(default=None, gt=0, le=1)
    ratio: float | None = Field(default=None, gt=0, lt=1)

    @model_validator(mode="after")
    def _one_rule(self) -> LayerFactorizeConfig:
        if sum(v is not None for v in (self.rank, self.energy, self.ratio)) > 1:
            raise ValueError("set at most one of rank, energy, ratio")
        return self


@dataclass
class LowRankLayer:
    """A layer chosen for factorisation: its method, its rank rule, and its input/output positions per sample."""

    name: str
    module: nn.Module
    method: str  # "svd" | "tucker2"
    rule: LayerFactorizeConfig
    in_pixels: int = 1  # spatial positions (or tokens) of the input per sample
    out_pixels: int = 1


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The layer's weight as ``(out, in, ...)``: a Hugging Face ``Conv1D``'s ``(in, out)`` weight transposed.

    Example:
        >>> tuple(dense_weight(nn.Linear(3, 5)).shape)
        (5, 3)
    """
    weight = cast(torch.Tensor, module.weight)
    return weight.t() if is_conv1d(module) else weight


def linear_inputs(module: nn.Module) -> int | None:
    """The input features of a Linear or Hugging Face ``Conv1D`` (``None`` for any other layer)."""
    if isinstance(module, nn.Linear):
        return module.in_features
    return int(cast(int, module.nx)) if is_conv1d(module) else None


def layer_method(module: nn.Module) -> str | None:
    """``"svd"`` (Linear, Hugging Face ``Conv1D``, 1×1 Conv2d), ``"tucker2"`` (k×k ungrouped Conv2d) or ``None``
    (no low-rank form here)."""
    if linear_inputs(module) is not None:
        return "svd"
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        return "svd" if module.kernel_size == (1, 1) else "tucker2"
    return None


def layer_ranks(layer: LowRankLayer, rule: LayerFactorizeConfig) -> tuple[int, ...]:
    """The ranks ``rule`` gives the layer: ``(r,)`` for SVD, ``(r_in, r_out)`` for Tucker-2 (no rule: ratio 0.5)."""
    w = dense_weight(layer.module)
    if layer.method == "svd":
        out_f, in_f = w.shape[0], w[0].numel()
        if rule.rank is not None:
            return (min(rule.rank, out_f, in_f),)
        if rule.energy is not None:
            return (rank_for_energy(singular_values(w), rule.energy),)
        return (min(out_f, in_f, svd_rank_for_ratio(in_f, out_f, rule.ratio or 0.5)),)
    c_out, c_in, k = w.shape[0], w.shape[1], w.shape[2] * w.shape[3]
    if rule.rank is not None:
        return (min(rule.rank, c_in), min(rule.rank, c_out))
    if rule.energy is not None:
        r_out = rank_for_energy(singular_values(w), rule.energy)
        r_in = rank_for_energy(singular_values(w.transpose(0, 1)), rule.energy)
        return (r_in, r_out)
    r_in, r_out = tucker2_ranks_for_ratio(c_in, c_out, k, rule.ratio or 0.5)
    return (min(r_in, c_in), min(r_out, c_out))


def layer_cost(layer: LowRankLayer, ranks: tuple[int, ...] | None) -> tuple[int, int]:
    """``(params, macs)`` of a layer's weights, dense (``ranks=None``) or factorised."""
    w = dense_weight(layer.module)
    out_f, in_f = w.shape[0], w[0].numel()
    if ranks is None:
        return w.numel(), w.numel() * layer.out_pixels
    if layer.method == "svd":
        (r,) = ranks
        return r * (in_f + out_f), r * (in_f + out_f) * layer.out_pixels
    r_in, r_out = ranks
    c_in, kk = w.shape[1], w.shape[2] * w.shape[3]
    params = c_in * r_in + r_in * r_out * kk + r_out * out_f
    macs = c_in * r_in * layer.in_pixels + (r_in * r_out * kk + r_out * out_f) * layer.out_pixels
    return params, macs


def measure_pixels(model: nn.Module, layers: list[LowRankLayer], example_input: ExampleInput) -> None:
    """Set each layer's input/output positions per sample from one forward of the first sample (eval, no grad)."""
    hooks = []

    def make(layer: LowRankLayer) -> Any:
        def hook(_m: nn.Module, args: Any, out: torch.Tensor) -> None:
            x = args[0]
            features = linear_inputs(layer.module)
            if features is not None:
                layer.in_pixels = layer.out_pixels = max(1, x[:1].numel() // features)
            else:
                layer.in_pixels, layer.out_pixels = x[0, 0].numel(), out[0, 0].numel()

        return hook

    for layer in layers:
        hooks.append(layer.module.register_forward_hook(make(layer)))
    try:
        with eval_mode(model), torch.no_grad():
            call_model(model, first_sample(example_input))
    finally:
        for h in hooks:
            h.remove()


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows ``(n, in)``: tokens of a Linear, the strided (padded) pixels a 1×1 conv sees."""
    features = linear_inputs(module)
    if features is not None:
        return x.reshape(-1, features)
    if not isinstance(module, nn.Conv2d):
        raise TypeError(f"expected a Linear or 1×1 Conv2d, got {type(module).__name__}")
    padding: Any = 0 if isinstance(module.padding, str) else module.padding  # 'same'/'valid' pad nothing at 1×1
    if module.padding_mode != "zeros" and any(padding):
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
        padding = 0
    cols = F.unfold(x, 1, padding=padding, stride=module.stride)  # (N, C, L); zero padding adds nothing to C
    return cols.transpose(1, 2).reshape(-1, module.in_channels)


def input_grams(
    model: nn.Module, layers: list[LowRankLayer], calibration: Iterable[Any], batches: int
) -> tuple[dict[str, tuple[torch.Tensor, int]], int]:
    """``{name: (Σ x xᵀ in float64, rows)}`` of each layer's inputs over the calibration batches, and the batches run.

    The model is only run (eval mode, no grad); its hooks are removed and modes restored afterwards.
    """
    grams: dict[str, tuple[torch.Tensor, int]] = {}

    def make(layer: LowRankLayer) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            rows = input_rows(module, args[0].detach())
            dev = rows.device if rows.device.type != "mps" else torch.device("cpu")  # no float64 on MPS
            rows = rows.to(device=dev, dtype=torch.float64)
            empty = (torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float64, device=dev), 0)
            gram, n = grams.get(layer.name, empty)
            grams[layer.name] = (gram.addmm_(rows.T, rows), n + rows.shape[0])

        return hook

    hooks = [l.module.register_forward_pre_hook(make(l)) for l in layers]
    used = 0
    try:
        with eval_mode(model), torch.no_grad():
            for batch in itertools.islice(iter(calibration), batches):
                call_model(model, batch_inputs(batch, model))
                used += 1
    finally:
        for h in hooks:
            h.remove()
    if used == 0:
        raise TransformRefusedError("the calibration batches are empty: data_aware factorisation needs at least one")
    return grams, used
