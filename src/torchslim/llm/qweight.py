"""Group-wise integer weights of a language model's linear layers: the one representation every method writes.

A weight ``W`` of shape ``[out, in]`` is cut along its input dimension into groups of
``group_size`` columns (the last group is narrower when ``group_size`` does not divide
``in``: SmolLM2's 576 columns at group 128 give four groups of 128 and one of 64).
Each row of each group has a scale and an integer zero point; the codes are unsigned,
``q = clamp(round(w / scale) + zero, 0, 2**bits - 1)`` and ``w' = (q - zero) * scale``.
Symmetric grids fix ``zero = 2**(bits - 1)`` and take the scale from the largest
magnitude; asymmetric grids take both from the row-group's minimum and maximum (the
range always contains 0). This is the layout of ONNX Runtime's ``MatMulNBits``, of
GPTQ checkpoints and of compressed-tensors' ``pack-quantized`` format, so every method
(RTN, GPTQ, AWQ) and every exporter share it.

Example:
    >>> w = torch.randn(3, 10)
    >>> grid = Grid(bits=4, group_size=4, symmetric=False)
    >>> qw = QuantizedWeight.from_float(w, grid)
    >>> qw.codes.shape, qw.scales.shape, qw.n_groups      # groups 4, 4 and a tail of 2
    (torch.Size([3, 10]), torch.Size([3, 3]), 3)
    >>> int(qw.codes.max()) <= 15 and torch.allclose(qw.dequantize(), w, atol=float(qw.scales.max()) / 2 + 1e-6)
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from torchslim.errors import TorchslimError

__all__ = ["Grid", "QuantizedWeight", "group_bounds", "grid_params", "quantize_to_grid"]

#: the smallest scale a grid ever gets (an all-zero row group would otherwise divide by zero)
MIN_SCALE = 1e-10


@dataclass(frozen=True)
class Grid:
    """How a weight is quantized: bits (2 to 8), columns per group (``-1``: one group per row), symmetric or not."""

    bits: int = 4
    group_size: int = 128
    symmetric: bool = False

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise TorchslimError(f"bits must be in [2, 8], got {self.bits}")
        if self.group_size != -1 and self.group_size < 1:
            raise TorchslimError(f"group_size must be -1 (a whole row) or >= 1, got {self.group_size}")

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    def width(self, in_features: int) -> int:
        """Columns per group for a weight with ``in_features`` columns."""
        return in_features if self.group_size == -1 else min(self.group_size, in_features)


def group_bounds(in_features: int, grid: Grid) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` column ranges of the groups, the last one possibly narrower."""
    g = grid.width(in_features)
    return [(s, min(s + g, in_features)) for s in range(0, in_features, g)]


def grid_params(w: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point (both ``[rows]``, float32) of the columns ``w`` (``[rows, cols]``) on ``grid``."""
    w = w.float()
    if grid.symmetric:
        half = 2 ** (grid.bits - 1)
        amax = w.abs().amax(dim=1)
        # codes run 0..2**bits-1 around zero = half: the positive side has half - 1 steps
        scale = (amax / max(half - 1, 1)).clamp_min(MIN_SCALE)
        zero = torch.full_like(scale, float(half))
        return scale, zero
    lo = w.amin(dim=1).clamp(max=0.0)
    hi = w.amax(dim=1).clamp(min=0.0)
    scale = ((hi - lo) / grid.qmax).clamp_min(MIN_SCALE)
    zero = torch.round(-lo / scale).clamp(0, grid.qmax)
    return scale, zero


def quantize_to_grid(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Integer codes (float tensor of whole numbers in ``[0, qmax]``) of ``w`` with per-row ``scale``/``zero``."""
    s = scale.reshape(-1, *([1] * (w.dim() - 1)))
    z = zero.reshape(-1, *([1] * (w.dim() - 1)))
    return torch.clamp(torch.round(w.float() / s) + z, 0, grid.qmax)


@dataclass
class QuantizedWeight:
    """One linear layer's integer weight: ``codes`` uint8 ``[out, in]``, ``scales``/``zeros`` ``[out, n_groups]``."""

    grid: Grid
    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor

    def __post_init__(self) -> None:
        if self.codes.dim() != 2:
            raise TorchslimError(f"codes must be [out, in], got shape {tuple(self.codes.shape)}")
        out, cols = self.codes.shape
        n = math.ceil(cols / self.grid.width(cols))
        for name, t in (("scales", self.scales), ("zeros", self.zeros)):
            if tuple(t.shape) != (out, n):
                raise TorchslimError(f"{name} must be [{out}, {n}] for codes {out}x{cols} on {self.grid}, got {tuple(t.shape)}")
        if self.codes.numel() and int(self.codes.max()) > self.grid.qmax:
            raise TorchslimError(f"codes exceed {self.grid.qmax} ({self.grid.bits} bits)")

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.codes.shape[0]), int(self.codes.shape[1]))

    @property
    def n_groups(self) -> int:
        return int(self.scales.shape[1])

    def dequantize(self) -> torch.Tensor:
        """The float32 weight the codes stand for."""
        out = torch.empty(self.shape, dtype=torch.float32)
        for g, (a, b) in enumerate(group_bounds(self.shape[1], self.grid)):
            out[:, a:b] = (self.codes[:, a:b].float() - self.zeros[:, g : g + 1]) * self.scales[:, g : g + 1]
        return out

    @classmethod
    def from_float(cls, w: torch.Tensor, grid: Grid) -> QuantizedWeight:
        """Round to nearest on ``grid`` (RTN): every method's baseline."""
        w = w.detach().float()
        bounds = group_bounds(w.shape[1], grid)
        codes = torch.empty(w.shape, dtype=torch.uint8)
        scales = torch.empty(w.shape[0], len(bounds))
        zeros = torch.empty(w.shape[0], len(bounds))
        for g, (a, b) in enumerate(bounds):
            s, z = grid_params(w[:, a:b], grid)
            codes[:, a:b] = quantize_to_grid(w[:, a:b], s, z, grid).to(torch.uint8)
            scales[:, g], zeros[:, g] = s, z
        return cls(grid, codes, scales, zeros)
