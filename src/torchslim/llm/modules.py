"""The quantized linear layer every language-model method leaves behind, and its provenance.

:class:`QuantizedLinear` holds one :class:`~torchslim.llm.qweight.QuantizedWeight` as three
buffers (``codes`` uint8 ``[out, in]``, ``scales`` and ``zeros`` float32 ``[out, groups]``),
so a state dict saves it as it is; its forward is ``F.linear`` with the dequantized weight,
cached until a buffer changes. Exporters find quantized layers by
``isinstance(m, QuantizedLinear)`` and read :attr:`QuantizedLinear.quantized_weight`.

Swapping layers changes the module tree: :func:`swap_quantized` records a provenance
record of kind :data:`LLM_QUANT` (each layer's grid), and the rebuilder registered here
puts empty :class:`QuantizedLinear` layers in a fresh model, so a checkpoint loads into it.

Example:
    >>> fc = nn.Linear(10, 3)
    >>> qw = QuantizedWeight.from_float(fc.weight, Grid(bits=4, group_size=4))
    >>> q = QuantizedLinear.from_weight(qw, fc.bias)
    >>> x = torch.randn(2, 10)
    >>> torch.equal(q(x), F.linear(x, qw.dequantize(), fc.bias))
    True
    >>> q.quantized_weight.n_groups, q
    (3, QuantizedLinear(in_features=10, out_features=3, bias=True, bits=4, group_size=4, symmetric=False))
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.graph import provenance
from torchslim.llm.qweight import Grid, QuantizedWeight

__all__ = ["LLM_QUANT", "QuantizedLinear", "swap_quantized"]

#: the provenance kind of the layers swapped for :class:`QuantizedLinear`
LLM_QUANT = "llm_quant"
_CACHE = "_dequantized_cache"


def group_index(in_features: int, grid: Grid, device: torch.device | None = None) -> torch.Tensor:
    """The group of every input column (``[in_features]`` int64), the tail group included.

    Example:
        >>> group_index(5, Grid(group_size=2)).tolist()
        [0, 0, 1, 1, 2]
    """
    return torch.arange(in_features, device=device) // grid.width(in_features)


class QuantizedLinear(nn.Module):
    """A linear layer whose weight is group-wise integer codes (:class:`~torchslim.llm.qweight.QuantizedWeight`).

    Attributes:
        in_features / out_features: the layer's sizes.
        grid: bits, group size and symmetry of the codes.
        bias: the float bias (a parameter) or ``None``.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor

    def __init__(self, in_features: int, out_features: int, grid: Grid, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.grid = int(in_features), int(out_features), grid
        groups = len(range(0, in_features, grid.width(in_features)))
        self.register_buffer("codes", torch.zeros(out_features, in_features, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, groups))
        self.register_buffer("zeros", torch.zeros(out_features, groups))
        self.bias: nn.Parameter | None
        self.register_parameter("bias", nn.Parameter(torch.zeros(out_features)) if bias else None)

    @classmethod
    def from_weight(cls, qw: QuantizedWeight, bias: torch.Tensor | None = None) -> QuantizedLinear:
        """A layer holding ``qw`` (copied) and ``bias`` (copied as a float parameter)."""
        out, cols = qw.shape
        layer = cls(cols, out, qw.grid, bias=bias is not None)
        layer.load_quantized(qw)
        if bias is not None and layer.bias is not None:
            layer.bias = nn.Parameter(bias.detach().clone())
        return layer

    def load_quantized(self, qw: QuantizedWeight) -> None:
        """Replace the codes, scales and zeros by ``qw``'s (same shape and grid)."""
        if qw.shape != (self.out_features, self.in_features) or qw.grid != self.grid:
            raise TorchslimError(
                f"a {qw.shape[0]}x{qw.shape[1]} weight on {qw.grid} does not fit this "
                f"{self.out_features}x{self.in_features} layer on {self.grid}"
            )
        device = self.codes.device
        self.codes = qw.codes.detach().to(device=device, dtype=torch.uint8).clone()
        self.scales = qw.scales.detach().to(device=device, dtype=torch.float32).clone()
        self.zeros = qw.zeros.detach().to(device=device, dtype=torch.float32).clone()

    @property
    def quantized_weight(self) -> QuantizedWeight:
        """The layer's weight as a :class:`QuantizedWeight` (the buffers themselves, on the CPU)."""
        return QuantizedWeight(self.grid, self.codes.cpu(), self.scales.cpu(), self.zeros.cpu())

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(codes - zeros) * scales`` per group in float32 (then ``dtype``), cached until a buffer changes."""
        key = (id(self.codes), self.codes._version, id(self.scales), self.scales._version,
               id(self.zeros), self.zeros._version, self.codes.device, dtype)
        hit = self.__dict__.get(_CACHE)
        if hit is None or hit[0] != key:
            g = group_index(self.in_features, self.grid, self.codes.device)
            w = (self.codes.float() - self.zeros[:, g]) * self.scales[:, g]
            hit = (key, w.to(dtype))
            self.__dict__[_CACHE] = hit
        return hit[1]

    def nonzero_mask(self) -> torch.Tensor:
        """Where the weight is not zero (a code differs from its zero point), without dequantizing."""
        return self.codes.float() != self.zeros[:, group_index(self.in_features, self.grid, self.codes.device)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight(x.dtype), self.bias)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop(_CACHE, None)  # a copy (a transaction's snapshot) rebuilds it when first called
        return state

    def extra_repr(self) -> str:
        g = self.grid
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"bits={g.bits}, group_size={g.group_size}, symmetric={g.symmetric}")


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, leaf = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), leaf


def grid_record(grid: Grid) -> dict[str, Any]:
    """A grid as JSON data."""
    return {"bits": grid.bits, "group_size": grid.group_size, "symmetric": grid.symmetric}


def swap_quantized(model: nn.Module, name: str, qw: QuantizedWeight, bias: torch.Tensor | None) -> QuantizedLinear:
    """Replace the layer ``name`` of ``model`` by a :class:`QuantizedLinear` holding ``qw``, on its device.

    Records the swap (provenance kind :data:`LLM_QUANT`) so a checkpoint reloads into a fresh model.

    Example:
        >>> model = nn.Sequential(nn.Linear(8, 4))
        >>> qw = QuantizedWeight.from_float(model[0].weight, Grid(bits=8, group_size=-1))
        >>> type(swap_quantized(model, "0", qw, model[0].bias)).__name__, provenance.latest(model, LLM_QUANT)
        ('QuantizedLinear', {'layers': {'0': {'bits': 8, 'group_size': -1, 'symmetric': False, 'bias': True}}})
    """
    parent, leaf = _parent(model, name)
    old = getattr(parent, leaf)
    device = next((t.device for t in [*old.parameters(), *old.buffers()]), torch.device("cpu"))
    layer = QuantizedLinear.from_weight(qw, bias).to(device)
    setattr(parent, leaf, layer)
    provenance.record(model, LLM_QUANT, {"layers": {name: {**grid_record(qw.grid), "bias": bias is not None}}})
    return layer


@provenance.register_rebuilder(LLM_QUANT)
def _rebuild(model: nn.Module, data: Any, state: dict[str, torch.Tensor]) -> None:
    """Put an empty :class:`QuantizedLinear` where each recorded layer was (its buffers come from the state dict)."""
    for name, spec in data["layers"].items():
        parent, leaf = _parent(model, name)
        old = getattr(parent, leaf, None)
        if isinstance(old, QuantizedLinear):
            continue
        if not isinstance(old, nn.Linear):
            raise TorchslimError(f"cannot rebuild quantized layer {name!r}: the model has a {type(old).__name__} there")
        grid = Grid(bits=int(spec["bits"]), group_size=int(spec["group_size"]), symmetric=bool(spec["symmetric"]))
        layer = QuantizedLinear(old.in_features, old.out_features, grid, bias=bool(spec["bias"]))
        setattr(parent, leaf, layer.to(old.weight.device))
