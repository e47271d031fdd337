"""All-or-nothing changes to a model.

Every verb and every recipe stage runs its mutation inside :func:`transaction`:
on any exception, torchslim's or not (``KeyboardInterrupt`` included), the
model's parameters, buffers, module tree, module classes and attributes are put
back exactly as they were, and the exception propagates. On success nothing is
copied back: the objects the caller holds (the model, its submodules, their
parameters) are the ones that were changed.

The snapshot is a deep copy of the model taken before the work starts, so a
transaction costs one copy of the model's memory while it runs.

Example:
    >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    >>> before = {k: v.clone() for k, v in model.state_dict().items()}
    >>> try:
    ...     with transaction(model):
    ...         _ = model[0].weight.data.zero_()
    ...         model[1] = nn.Identity()
    ...         raise RuntimeError("half-way")
    ... except RuntimeError:
    ...     pass
    >>> type(model[1]).__name__, torch.equal(model[0].weight, before["0.weight"])
    ('ReLU', True)
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from torchslim.errors import TorchslimError
from torchslim.graph import constraints


def snapshot(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that :func:`restore` can put back.

    Raises:
        TorchslimError: the model cannot be deep-copied (it holds an object that
            refuses ``copy.deepcopy``); nothing was changed.
    """
    try:
        return copy.deepcopy(model)
    except Exception as exc:  # noqa: BLE001 - any copy failure: refuse before touching the model
        raise TorchslimError(
            f"cannot snapshot {type(model).__name__} before changing it ({type(exc).__name__}: {exc}); "
            "torchslim changes a model only when it can restore it on failure"
        ) from None


def transplant(dst: nn.Module, src: nn.Module) -> None:
    """Make ``dst`` become ``src`` (its class, attributes, submodules and tensors); ``dst`` keeps its identity.

    Constraints attached to parameters (pruning masks' gradient hooks) are
    re-attached afterwards, since tensor hooks do not survive a deep copy.

    Example:
        >>> a, b = nn.Linear(2, 2), nn.Linear(2, 3)
        >>> transplant(a, b)
        >>> a.out_features
        3
    """
    dst.__dict__.clear()
    dst.__dict__.update(src.__dict__)
    if type(dst) is not type(src):
        dst.__class__ = type(src)
    constraints.reattach(dst)


def restore(model: nn.Module, saved: nn.Module) -> None:
    """Put the state of :func:`snapshot`'s copy ``saved`` back into ``model``."""
    transplant(model, saved)


@contextmanager
def transaction(model: nn.Module) -> Iterator[nn.Module]:
    """Run the body on ``model``; if it raises, restore ``model`` exactly and re-raise.

    Yields the model itself (the body works on it in place).
    """
    saved = snapshot(model)
    try:
        yield model
    except BaseException:
        restore(model, saved)
        raise
