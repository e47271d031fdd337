"""Block removal: whole shape-preserving blocks (residual blocks, transformer layers) replaced by identity.

A candidate is a child of an ``nn.Sequential``/``nn.ModuleList`` that holds a
Conv or Linear and whose output has its input's shape; it is scored by how much
it changes its input on the calibration batches (``1 - cosine``), and the least
influential ones go.

Example:
    >>> model = ts.create_model("resnet_cifar", depth=14)
    >>> x = torch.randn(2, 3, 16, 16)
    >>> block_candidates(model, x)                  # layer2.0, layer3.0 downsample
    ['layer1.0', 'layer1.1', 'layer2.1', 'layer3.1']
    >>> cfg = StructuredPruneConfig(granularity="block", sparsity=0.5, targets={"layer1.0": None, "re:.*": {}})
    >>> step, layers, skipped = block_step(model, cfg, x, None, None)
    >>> len(step["blocks"]), [l.action for l in layers], [(s.name, s.reason) for s in skipped]
    (2, ['removed', 'removed'], [('layer1.0', "excluded by targets['layer1.0'] = null")])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from torchslim.errors import TransformRefusedError
from torchslim.graph.surgery import get_module
from torchslim.measure.macs import call_model
from torchslim.prune.config import StructuredPruneConfig
from torchslim.report import LayerReport, SkippedLayer
from torchslim.targets import select_layers

FilterFn = Callable[[nn.Module, str], bool]


def block_candidates(model: nn.Module, x: Any) -> list[str]:
    """Children of ``nn.Sequential``/``nn.ModuleList`` containers holding a Conv or Linear whose output has their input's shape."""
    containers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Sequential, nn.ModuleList))]
    names = [f"{n}.{c}" if n else c for n, m in containers for c, _ in m.named_children()]
    shapes: dict[str, bool] = {}
    hooks = []
    for name in names:
        mod = get_module(model, name)
        if not any(isinstance(sub, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) for sub in mod.modules()):
            continue

        def hook(m: nn.Module, args: Any, out: Any, name: str = name) -> None:
            if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                shapes[name] = tuple(args[0].shape) == tuple(out.shape)

        hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            call_model(model, x)
            model.train(was)
    finally:
        for h in hooks:
            h.remove()
    return [n for n in names if shapes.get(n)]


def _influence(model: nn.Module, chosen: list[str], x: Any, calibration: Iterable[Any] | None, batches: int) -> dict[str, float]:
    """``Σ (1 - cosine(input, output))`` of each block over the calibration batches (or ``x`` alone)."""
    influence = {n: 0.0 for n in chosen}
    hooks = []
    for n in chosen:
        def hook(mod: nn.Module, args: Any, out: Any, n: str = n) -> None:
            a, b = args[0].flatten(1).float(), out.flatten(1).float()
            influence[n] += float((1 - torch.nn.functional.cosine_similarity(a, b, dim=1)).sum())

        hooks.append(get_module(model, n).register_forward_hook(hook))
    data = [(x,)] if calibration is None else calibration
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, batch in enumerate(data):
                if i >= batches:
                    break
                call_model(model, batch[0] if isinstance(batch, (tuple, list)) else batch)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return influence


def block_step(
    model: nn.Module, cfg: StructuredPruneConfig, x: Any, calibration: Iterable[Any] | None, filter_fn: FilterFn | None
) -> tuple[dict[str, Any], list[LayerReport], list[SkippedLayer]]:
    """The step ``{"blocks": [...]}`` removing ``sparsity`` of the candidate blocks, their reports, the skipped ones.

    Raises:
        TransformRefusedError: the model has no shape-preserving block.
    """
    names = block_candidates(model, x)
    if not names:
        raise TransformRefusedError("granularity 'block': no shape-preserving block inside an nn.Sequential/ModuleList")
    picked, skipped = select_layers([(n, get_module(model, n)) for n in names], cfg.targets, filter_fn=filter_fn)
    chosen = [n for n, _, _ in picked]
    influence = _influence(model, chosen, x, calibration, cfg.calibration.batches)
    k = int(round((cfg.sparsity or 0.0) * len(chosen)))
    drop: list[str] = []
    for n in sorted(chosen, key=lambda n: influence[n]):  # a block inside a removed one (or holding one) is not removed again
        if len(drop) < k and not any(n.startswith(d + ".") or d.startswith(n + ".") for d in drop):
            drop.append(n)
    layers = [LayerReport(n, type(get_module(model, n)).__name__, (), 0, 0, "removed", {"influence": influence[n]}) for n in drop]
    return {"blocks": drop}, layers, [SkippedLayer(n, r) for n, r in skipped]
