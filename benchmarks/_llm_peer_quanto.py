"""optimum-quanto 0.2.7 weight-only round-to-nearest (qint4 / qint8) of SmolLM2: a worker for ``.venv-quanto``.

Run with ``.venv-quanto/bin/python``; ``_llm_peers.run_peer("quanto", ...)`` starts it.
It calls ``optimum.quanto.quantize(model, weights=qint4|qint8, exclude="lm_head")`` and
``freeze(model)``, then writes each ``QLinear``'s ``weight.dequantize()`` (the float values
quanto computes with). quanto calibrates nothing for weight-only quantization: the
calibration ids are read (so every peer is handed the same inputs) and not used.

quanto's own choices: ``qint8`` is symmetric per output channel (``AbsmaxOptimizer``);
``qint4`` is asymmetric (``MaxOptimizer``: a scale and a shift per group) with a group size
quanto picks itself: 128 when it divides the layer's input width, else the largest of
96, 64, 32 that does (SmolLM2: 96 for the 576-wide inputs, 128 for ``down_proj``'s 1,536).
quanto exposes no argument for it, so ``group_size`` in the config (an int) overrides that
choice by setting each ``QLinear``'s public ``weight_group_size`` attribute before
``freeze``; ``"auto"`` keeps quanto's choice. The groups used are recorded per layer width.

Config keys: ``bits`` (4 or 8), ``group_size`` (``"auto"`` or an int, 4-bit only), ``threads``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from _llm_peer_common import grid_levels, main, target_linears
from torch import nn

PACKAGES = ("optimum-quanto", "transformers", "torch")


def _set_group_size(layers: dict[str, Any], group: int) -> None:
    """Override quanto's group size on every quantized layer (each input width must be a multiple)."""
    for name, layer in layers.items():
        width = layer.weight.shape[1]
        if width % group:
            raise ValueError(f"group_size {group} does not divide the input width {width} of {name}; quanto needs whole groups")
        layer.weight_group_size = group


def quantize(
    model: nn.Module, calib: torch.Tensor, cfg: dict[str, Any], gguf: Path
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """quanto ``quantize`` + ``freeze``; the dequantized weights of the target layers."""
    from optimum.quanto import freeze, qint4, qint8
    from optimum.quanto import quantize as quanto_quantize

    bits = int(cfg.get("bits", 4))
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 (qint4) or 8 (qint8) for quanto, got {bits}")
    group = cfg.get("group_size", "auto")
    quanto_quantize(model, weights=qint4 if bits == 4 else qint8, exclude="lm_head")
    layers: dict[str, Any] = dict(target_linears(model))
    chosen = {str(m.weight.shape[1]): m.weight_group_size for m in layers.values()}
    if bits == 4 and group != "auto":
        _set_group_size(layers, int(group))
    freeze(model)
    weights = {f"{n}.weight": m.weight.dequantize().detach().clone() for n, m in layers.items()}
    used = {str(m.weight.shape[1]): m.weight_group_size for m in layers.values()}
    optimizers = sorted({type(m.optimizer).__name__ for m in layers.values()})
    levels = max(grid_levels(weights[f"{n}.weight"], m.weight_group_size or 0) for n, m in layers.items())
    return weights, {
        "quanto_group_size_by_width": chosen, "group_size_by_width": used, "optimizers": optimizers,
        "max_levels_per_group": levels, "grid_group_size": used,
    }


if __name__ == "__main__":
    sys.exit(main("quanto", quantize, PACKAGES))
