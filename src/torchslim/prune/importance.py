"""Importance criteria: a registry of callables scoring every prunable unit.

A criterion takes the parameter to prune and a :class:`ImportanceContext` and
returns one score per unit (for element granularity, a tensor shaped like the
parameter); the lowest scores are pruned first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from torchslim.registry import Registry


@dataclass
class ImportanceContext:
    """What a criterion may use besides the weights: the owning module and a seeded generator."""

    module: nn.Module
    name: str
    generator: torch.Generator


Importance = Callable[[torch.Tensor, ImportanceContext], torch.Tensor]
CRITERIA: Registry[Importance] = Registry("criterion")


@CRITERIA.register("magnitude")
def magnitude(weight: torch.Tensor, ctx: ImportanceContext) -> torch.Tensor:
    """|w|: the smallest weights go first (Han et al. 2015)."""
    return weight.detach().abs()


@CRITERIA.register("random")
def random(weight: torch.Tensor, ctx: ImportanceContext) -> torch.Tensor:
    """Uniform random scores: the baseline every criterion must beat."""
    return torch.rand(weight.shape, generator=ctx.generator).to(weight.device)
