"""The zoo registry and its factory."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from torchslim.errors import TorchslimError
from torchslim.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("zoo model")


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the zoo model ``name`` with ``kwargs``; unknown names or arguments raise a clear error."""
    factory = MODELS.get(name)
    params = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        allowed = ", ".join(params) or "(none)"
        raise TorchslimError(f"zoo model {name!r} takes no argument(s) {', '.join(unknown)}; allowed: {allowed}")
    return factory(**kwargs)
