"""Constraints: per-parameter state a technique attaches and that training and loading must keep.

A constraint lives in a buffer ``<param><suffix>`` on the module that owns the
parameter (so it is saved with the state dict): pruning masks
(``weight_mask``), weight-sharing codes (``weight_codes``). The technique that
defines one registers a :class:`Constraint` describing how to re-attach it to a
fresh model, how to check a stored value, and what the training loop must do
around each optimizer step. The training loop and checkpoint code ask this
registry; they import no technique.

Example:
    >>> [c.name for c in ordered()]            # registered by torchslim.prune and torchslim.encode
    ['mask', 'sharing']
    >>> model = ts.create_model("lenet300", in_features=64)
    >>> _ = ts.prune_(model, {"sparsity": 0.5})
    >>> [c.name for c in active(model)], [n for n, *_ in members(model, get("mask"))]
    (['mask'], ['fc2'])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from torchslim.registry import Registry

ModelFn = Callable[[nn.Module], None]


@dataclass(frozen=True)
class Constraint:
    """How torchslim keeps one kind of per-parameter state.

    Attributes:
        name: the registry name (``mask``, ``sharing``).
        suffix: the buffer suffix after the parameter name (``_mask``).
        attach: ``(module, param_name, value)``: attach a stored value to a parameter
            of a freshly loaded model.
        validate: ``(value, param, key)``: raise ``ValueError`` when a stored value
            cannot belong to ``param``; ``None`` accepts any value of the right shape.
        before_step: run on the model after ``backward``, before the optimizer step.
        after_step: run on the model after every optimizer step.
        reattach: run on a model that was deep-copied (tensor hooks do not survive a copy).
        order: constraints are attached and stepped in ascending order (masks before
            sharing: snapping shared weights also zeroes pruned ones).
        after_weights: attach only after the state dict is loaded.
    """

    name: str
    suffix: str
    attach: Callable[[nn.Module, str, torch.Tensor], None]
    validate: Callable[[torch.Tensor, torch.Tensor, str], None] | None = None
    before_step: ModelFn | None = None
    after_step: ModelFn | None = None
    reattach: ModelFn | None = None
    order: int = 0
    after_weights: bool = False


CONSTRAINTS: Registry[Constraint] = Registry("constraint")


def register(constraint: Constraint) -> Constraint:
    """Add ``constraint`` to the registry (each name and suffix once)."""
    if any(get(n).suffix == constraint.suffix for n in CONSTRAINTS.names()):
        raise ValueError(f"a constraint with suffix {constraint.suffix!r} is already registered")
    return CONSTRAINTS.register(constraint.name)(constraint)


def get(name: str) -> Constraint:
    """The constraint registered as ``name`` (an unknown name lists the registered ones)."""
    return CONSTRAINTS.get(name)


def ordered() -> list[Constraint]:
    """Every registered constraint, in attach/step order."""
    return sorted((CONSTRAINTS.get(n) for n in CONSTRAINTS.names()), key=lambda c: (c.order, c.name))


def members(model: nn.Module, constraint: Constraint) -> Iterator[tuple[str, nn.Module, str, torch.Tensor]]:
    """``(module_name, module, param_name, value)`` of every parameter carrying ``constraint``."""
    for mname, module in model.named_modules():
        for bname, buf in module._buffers.items():
            if buf is None or not bname.endswith(constraint.suffix):
                continue
            pname = bname[: -len(constraint.suffix)]
            if isinstance(getattr(module, pname, None), torch.Tensor):
                yield mname, module, pname, buf


def active(model: nn.Module) -> list[Constraint]:
    """The registered constraints ``model`` carries at least once, in order."""
    return [c for c in ordered() if any(True for _ in members(model, c))]


def of_key(key: str) -> Constraint | None:
    """The constraint whose buffer a state-dict ``key`` is, or ``None``."""
    return next((c for c in ordered() if key.endswith(c.suffix)), None)


def before_step(model: nn.Module) -> None:
    """Every active constraint's ``before_step`` (the training loop calls this)."""
    for c in active(model):
        if c.before_step is not None:
            c.before_step(model)


def after_step(model: nn.Module) -> None:
    """Every active constraint's ``after_step`` (the training loop calls this)."""
    for c in active(model):
        if c.after_step is not None:
            c.after_step(model)


def reattach(model: nn.Module) -> None:
    """Re-attach what a deep copy loses (gradient hooks) for every active constraint."""
    for c in active(model):
        if c.reattach is not None:
            c.reattach(model)
