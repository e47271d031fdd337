"""Pruning masks that stay applied.

A mask is a boolean buffer ``<param>_mask`` on the module owning the parameter
(so it is saved with the state dict). Attaching one zeroes the pruned entries in
place and registers a gradient hook that zeroes their gradients, so standard
optimizers (SGD with momentum and weight decay, Adam, AdamW) never move them;
:func:`reapply_masks`, run after every optimizer step by the training loop,
makes this exact for any optimizer.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from torchslim.graph import constraints

MASK_SUFFIX = "_mask"
_HOOKS_ATTR = "_torchslim_mask_hooks"
_FLOAT_ATTR = "_torchslim_float_masks"


def _float_mask(module: nn.Module, buffer: str, like: torch.Tensor) -> torch.Tensor:
    """The boolean mask buffer as 0/1 in ``like``'s dtype, cached until the buffer changes.

    Multiplying by a float mask is several times faster than any boolean op on
    CPU; the cache is keyed on the buffer's identity and version counter, so a
    ``load_state_dict`` or in-place edit of the mask invalidates it.
    """
    mask = module._buffers[buffer]
    cache: dict[str, tuple[torch.Tensor, int, torch.Tensor]] = module.__dict__.setdefault(_FLOAT_ATTR, {})
    hit = cache.get(buffer)
    if (
        hit is None
        or hit[0] is not mask
        or hit[1] != mask._version
        or hit[2].dtype != like.dtype
        or hit[2].device != like.device
    ):
        hit = (mask, mask._version, mask.to(device=like.device, dtype=like.dtype))
        cache[buffer] = hit
    return hit[2]


class _GradMask:
    """Gradient hook multiplying by the module's current mask (looked up at call time)."""

    def __init__(self, module: nn.Module, buffer: str) -> None:
        self.module, self.buffer = module, buffer

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        if not grad.is_floating_point():
            return grad * getattr(self.module, self.buffer)
        return grad * _float_mask(self.module, self.buffer, grad)


def attach_mask(module: nn.Module, param_name: str, mask: torch.Tensor) -> None:
    """Attach (or replace) the mask of ``module.<param_name>`` and zero the pruned entries."""
    param = getattr(module, param_name)
    if mask.shape != param.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match {param_name} {tuple(param.shape)}")
    buffer = param_name + MASK_SUFFIX
    mask = mask.to(device=param.device, dtype=torch.bool)
    if hasattr(module, buffer) and buffer in module._buffers:
        module._buffers[buffer] = mask
    else:
        module.register_buffer(buffer, mask)
    _ensure_hook(module, param_name)
    with torch.no_grad():
        param.masked_fill_(~mask, 0.0)  # +0.0 (mul_ would leave -0.0 where weights were negative)


def _ensure_hook(module: nn.Module, param_name: str) -> None:
    """Register the gradient hook of ``module.<param_name>``'s mask unless the parameter has it.

    Tensor hooks do not survive ``copy.deepcopy``: a copied model gets them again here. A frozen
    parameter (``requires_grad=False``) has no gradient to mask and gets none (the mask is reapplied
    after every optimizer step all the same; :func:`reattach_masks` adds the hook once it trains).
    """
    param = getattr(module, param_name)
    if not param.requires_grad:
        return
    buffer = param_name + MASK_SUFFIX
    current = (param._backward_hooks or {}).values()
    if any(isinstance(h, _GradMask) and h.module is module and h.buffer == buffer for h in current):
        return
    hooks: dict[str, torch.utils.hooks.RemovableHandle] = module.__dict__.setdefault(_HOOKS_ATTR, {})
    hooks[param_name] = param.register_hook(_GradMask(module, buffer))


def reattach_masks(model: nn.Module) -> None:
    """Give every masked parameter of ``model`` its gradient hook again (after a deep copy).

    Example:
        >>> import copy
        >>> model = ts.create_model("lenet300", in_features=64)
        >>> _ = ts.prune_(model, {"sparsity": 0.5})
        >>> clone = copy.deepcopy(model)
        >>> reattach_masks(clone)
        >>> clone(torch.randn(2, 64)).sum().backward()
        >>> bool((clone.fc2.weight.grad[~clone.fc2.weight_mask] == 0).all())
        True
    """
    for _, module, pname, _mask in iter_masks(model):
        _ensure_hook(module, pname)


def _check_mask(value: torch.Tensor, param: torch.Tensor, key: str) -> None:
    if value.dtype != torch.bool and not bool(((value == 0) | (value == 1)).all()):
        raise ValueError(f"mask {key} holds values other than 0 and 1")


def iter_masks(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, torch.Tensor]]:
    """Yield ``(module_name, module, param_name, mask)`` for every masked parameter."""
    for mname, module in model.named_modules():
        for bname, buf in module._buffers.items():
            if buf is not None and bname.endswith(MASK_SUFFIX) and hasattr(module, bname[: -len(MASK_SUFFIX)]):
                yield mname, module, bname[: -len(MASK_SUFFIX)], buf


def get_mask(module: nn.Module, param_name: str) -> torch.Tensor | None:
    buf = module._buffers.get(param_name + MASK_SUFFIX)
    return buf


@torch.no_grad()
def reapply_masks(model: nn.Module) -> None:
    """Zero every masked entry again (after an optimizer step)."""
    for _, module, pname, mask in iter_masks(model):
        param = getattr(module, pname)
        if param.is_floating_point():
            # x * 0 is -0.0 for negative x; adding +0.0 turns it into +0.0 and changes nothing else
            param.mul_(_float_mask(module, pname + MASK_SUFFIX, param)).add_(0.0)
        else:
            param.masked_fill_(~mask, 0)


def remove_masks(model: nn.Module) -> int:
    """Make pruning permanent: drop masks and hooks, keep the zeroed weights. Returns how many were removed."""
    found = list(iter_masks(model))
    for _, module, pname, _mask in found:
        del module._buffers[pname + MASK_SUFFIX]
        module.__dict__.get(_FLOAT_ATTR, {}).pop(pname + MASK_SUFFIX, None)
        handle = module.__dict__.get(_HOOKS_ATTR, {}).pop(pname, None)
        if handle is not None:
            handle.remove()
    return len(found)


def mask_keys(model: nn.Module) -> list[str]:
    """State-dict keys of every mask buffer in ``model``."""
    return [f"{m}.{p}{MASK_SUFFIX}" if m else f"{p}{MASK_SUFFIX}" for m, _, p, _ in iter_masks(model)]


MASK = constraints.register(
    constraints.Constraint(
        "mask",
        MASK_SUFFIX,
        attach=attach_mask,
        validate=_check_mask,
        after_step=reapply_masks,
        reattach=reattach_masks,
        order=0,
    )
)
