"""Swap modules and parameters by qualified name.

Example:
    >>> model = ts.create_model("resnet_cifar", depth=20)
    >>> old = replace_module(model, "layer1.0.conv1", nn.Conv2d(16, 8, 3, padding=1))
    >>> old.out_channels, get_module(model, "layer1.0.conv1").out_channels
    (16, 8)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from torchslim.errors import TorchslimError


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (``""`` is the model itself); a clear error when absent."""
    if name == "":
        return model
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise TorchslimError(f"the model has no module {name!r}") from None


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where module ``name`` was; returns the old module."""
    if name == "":
        raise TorchslimError("cannot replace the root module in place")
    parent_name, _, child = name.rpartition(".")
    parent = get_module(model, parent_name)
    old = get_module(model, name)
    setattr(parent, child, new)
    return old


def get_parameter(model: nn.Module, name: str) -> nn.Parameter:
    """The parameter ``module.path.param``."""
    mod_name, _, pname = name.rpartition(".")
    param = getattr(get_module(model, mod_name), pname, None)
    if not isinstance(param, nn.Parameter):
        raise TorchslimError(f"the model has no parameter {name!r}")
    return param


def set_parameter(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace parameter ``name`` with a new ``nn.Parameter`` holding ``value`` (shape may change)."""
    mod_name, _, pname = name.rpartition(".")
    module = get_module(model, mod_name)
    old = getattr(module, pname, None)
    requires_grad = old.requires_grad if isinstance(old, nn.Parameter) else True
    setattr(module, pname, nn.Parameter(value.detach().clone(), requires_grad=requires_grad))


def is_conv1d(module: object) -> bool:
    """A Hugging Face ``Conv1D`` (GPT-2's Linear with a transposed ``(in, out)`` weight), recognised by its shape.

    Example:
        >>> is_conv1d(nn.Linear(2, 3))
        False
    """
    weight = getattr(module, "weight", None)
    nf, nx = getattr(module, "nf", None), getattr(module, "nx", None)
    return (
        type(module).__name__ == "Conv1D" and isinstance(nf, int) and isinstance(nx, int)
        and isinstance(weight, torch.Tensor) and tuple(weight.shape) == (nx, nf)
    )


def linear_width(module: object, side: str) -> int | None:
    """Input (``side="in"``) or output width of a Linear or a Hugging Face ``Conv1D``; ``None`` for anything else.

    Example:
        >>> linear_width(nn.Linear(2, 3), "in"), linear_width(nn.Linear(2, 3), "out"), linear_width(nn.ReLU(), "in")
        (2, 3, None)
    """
    if isinstance(module, nn.Linear):
        return module.out_features if side == "out" else module.in_features
    if module is not None and is_conv1d(module):
        return int(getattr(module, "nf") if side == "out" else getattr(module, "nx"))  # noqa: B009
    return None


def named_leaf_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Modules with no children, by qualified name."""
    for name, module in model.named_modules():
        if name and not any(True for _ in module.children()):
            yield name, module


def remove_from_container(model: nn.Module, names: list[str]) -> None:
    """Delete items ``names`` (e.g. ``"encoder.layer.3"``) from their ``nn.Sequential``/``nn.ModuleList``.

    The container is rebuilt without them (later items shift down); everything is
    checked before anything changes.

    Example:
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
        >>> remove_from_container(m, ["1"])
        >>> len(m)
        2
    """
    by_parent: dict[str, set[str]] = {}
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = get_module(model, parent_name)
        if not isinstance(parent, (nn.Sequential, nn.ModuleList)) or child not in parent._modules:
            raise TorchslimError(f"{name!r} is not an item of a Sequential or ModuleList")
        by_parent.setdefault(parent_name, set()).add(child)
    for parent_name, drop in by_parent.items():
        parent = get_module(model, parent_name)
        kept = [m for key, m in parent._modules.items() if key not in drop]
        parent._modules.clear()
        for i, m in enumerate(kept):
            parent._modules[str(i)] = m
