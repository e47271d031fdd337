"""Physically shrink modules: keep given indices of their output/input dimension or heads.

A *structure step* is JSON data, so what structured pruning did can be saved
with a checkpoint and replayed on a fresh instance of the architecture::

    {"modules": {"layer1.0.conv1": {"out": [0, 2, 5, ...]}, "layer1.0.conv2": {"in": [0, 2, 5, ...]}},
     "heads": {"blocks.0.attn": [0, 2]},
     "blocks": ["layer2.1"]}

Index lists are the positions *kept*, relative to the module as it is when the
step is applied. Constraint buffers (pruning masks ``<param>_mask``) are sliced with their parameter.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.graph import constraints, provenance
from torchslim.graph.surgery import get_module, replace_module

#: the provenance kind of structure steps
STRUCTURE = "structure"


def _slice_param(module: nn.Module, pname: str, dim: int, idx: torch.Tensor) -> None:
    p = getattr(module, pname, None)
    if p is None:
        return
    new = nn.Parameter(p.detach().index_select(dim, idx.to(p.device)).clone(), requires_grad=p.requires_grad)
    setattr(module, pname, new)
    for c in constraints.ordered():  # a pruning mask (or other per-parameter state) is sliced with its parameter
        buf = module._buffers.get(pname + c.suffix)
        if buf is not None and buf.shape == p.shape:
            module._buffers[pname + c.suffix] = buf.index_select(dim, idx.to(buf.device)).clone()


def _slice_buffer(module: nn.Module, bname: str, idx: torch.Tensor) -> None:
    b = module._buffers.get(bname)
    if b is not None:
        module._buffers[bname] = b.index_select(0, idx.to(b.device)).clone()


def _idx(kept: list[int], size: int, what: str) -> torch.Tensor:
    if not kept:
        raise TorchslimError(f"{what}: cannot remove every channel")
    if len(set(kept)) != len(kept) or min(kept) < 0 or max(kept) >= size:
        raise TorchslimError(f"{what}: kept indices out of range for size {size}")
    return torch.tensor(sorted(kept), dtype=torch.long)


def slice_module(module: nn.Module, name: str, out: list[int] | None = None, inp: list[int] | None = None) -> None:
    """Keep ``out`` positions of the output dimension and ``inp`` of the input dimension of ``module``."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        depthwise = module.groups == module.in_channels == module.out_channels and module.groups > 1
        if out is not None:
            idx = _idx(out, module.out_channels, name)
            _slice_param(module, "weight", 0, idx)
            _slice_param(module, "bias", 0, idx)
            module.out_channels = len(idx)
            if depthwise:
                module.in_channels = module.groups = len(idx)
        if inp is not None:
            if depthwise:
                raise TorchslimError(f"{name}: a depthwise convolution is sliced through its output channels only")
            if module.groups != 1:
                raise TorchslimError(f"{name}: grouped convolution (groups={module.groups}) cannot be sliced on its input")
            idx = _idx(inp, module.in_channels, name)
            _slice_param(module, "weight", 1, idx)
            module.in_channels = len(idx)
    elif isinstance(module, nn.Linear):
        if out is not None:
            idx = _idx(out, module.out_features, name)
            _slice_param(module, "weight", 0, idx)
            _slice_param(module, "bias", 0, idx)
            module.out_features = len(idx)
        if inp is not None:
            idx = _idx(inp, module.in_features, name)
            _slice_param(module, "weight", 1, idx)
            module.in_features = len(idx)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        if out is not None:
            idx = _idx(out, module.num_features, name)
            _slice_param(module, "weight", 0, idx)
            _slice_param(module, "bias", 0, idx)
            _slice_buffer(module, "running_mean", idx)
            _slice_buffer(module, "running_var", idx)
            module.num_features = len(idx)
    elif isinstance(module, nn.LayerNorm):
        if out is not None:
            idx = _idx(out, module.normalized_shape[0], name)
            _slice_param(module, "weight", 0, idx)
            _slice_param(module, "bias", 0, idx)
            module.normalized_shape = (len(idx),)
    elif all(isinstance(getattr(module, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj", "out_proj")):
        if inp is not None:
            for proj in ("q_proj", "k_proj", "v_proj"):
                slice_module(getattr(module, proj), f"{name}.{proj}", inp=inp)
        if out is not None:
            slice_module(module.out_proj, f"{name}.out_proj", out=out)
    else:
        raise TorchslimError(f"{name}: cannot slice a {type(module).__name__}")


def slice_heads(module: nn.Module, name: str, kept_heads: list[int]) -> None:
    """Keep heads ``kept_heads`` of an attention module (q/k/v rows and out_proj columns)."""
    hd = module.head_dim
    heads = module.q_proj.out_features // hd
    idx = _idx(kept_heads, heads, name)
    rows = (idx[:, None] * hd + torch.arange(hd)[None, :]).flatten().tolist()
    for proj in ("q_proj", "k_proj", "v_proj"):
        slice_module(getattr(module, proj), f"{name}.{proj}", out=rows)
    slice_module(module.out_proj, f"{name}.out_proj", inp=rows)
    if hasattr(module, "num_heads") and not isinstance(getattr(type(module), "num_heads", None), property):
        module.num_heads = len(idx)


def apply_structure(model: nn.Module, step: dict[str, Any], *, record: bool = True) -> None:
    """Apply one structure step to ``model`` in place (and append it to the model's recorded structure)."""
    for name, dims in step.get("modules", {}).items():
        slice_module(get_module(model, name), name, out=dims.get("out"), inp=dims.get("in"))
    for name, kept in step.get("heads", {}).items():
        slice_heads(get_module(model, name), name, kept)
    for name in step.get("blocks", []):
        replace_module(model, name, nn.Identity())
    if record:
        provenance.record(model, STRUCTURE, step)


@provenance.register_rebuilder(STRUCTURE)
def _rebuild_structure(model: nn.Module, step: Any, state: dict[str, torch.Tensor]) -> None:
    if not isinstance(step, dict):
        raise TorchslimError(f"a structure step must be a mapping, got {type(step).__name__}")
    apply_structure(model, step, record=False)


def recorded_structure(model: nn.Module) -> list[dict[str, Any]]:
    """The structure steps applied to ``model`` so far (JSON data)."""
    return provenance.of_kind(model, STRUCTURE)


def replay_structure(model: nn.Module, steps: list[dict[str, Any]]) -> None:
    """Bring a model to the recorded structure ``steps``: applies the steps it does not have yet.

    Raises:
        TorchslimError: when the model already carries a different structure.
    """
    current = recorded_structure(model)
    if steps[: len(current)] != current:
        raise TorchslimError("the model's structure differs from the checkpoint's recorded structure")
    for step in steps[len(current) :]:
        apply_structure(model, step)
