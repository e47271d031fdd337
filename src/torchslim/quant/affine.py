"""Uniform affine quantization: the arithmetic, exactly as ONNX ``QuantizeLinear`` defines it.

``q = saturate(round_half_to_even(x / scale) + zero_point)`` and
``x' = (q - zero_point) * scale``, computed in float32, with scales shaped for
per-tensor, per-channel (any axis) or per-group (blocks of ``group_size`` along
one axis, ONNX "blocked" quantization) granularity.

Example:
    >>> spec = QuantSpec(bits=8, signed=True, symmetric=True, granularity="channel", axis=0)
    >>> w = torch.randn(4, 3)
    >>> qp = qparams_from_tensor(w, spec)
    >>> qp.scale.shape                              # one scale per output channel
    torch.Size([4])
    >>> q = quantize(w, qp)
    >>> qp.qmin <= int(q.min()) and int(q.max()) <= qp.qmax    # within [-128, 127]
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, model_validator

from torchslim.config import Config
from torchslim.errors import TorchslimError

Granularity = Literal["tensor", "channel", "group"]

#: Smallest scale ever produced (a constant tensor would otherwise give scale 0).
MIN_SCALE = 1e-8


class QuantSpec(Config):
    """How one tensor is quantized.

    Attributes:
        bits: integer width, 2 to 8.
        signed: integers in ``[-2^(b-1), 2^(b-1)-1]`` (``True``) or ``[0, 2^b - 1]``.
        symmetric: zero point fixed at the range's middle (0 when signed); the
            scale covers ``max |x|``. Asymmetric ranges cover ``[min(x, 0), max(x, 0)]``.
        granularity: ``tensor``, ``channel`` (one scale per index of ``axis``) or
            ``group`` (one scale per block of ``group_size`` along ``axis``).
        axis: the channel axis (``channel``) or the blocked axis (``group``); may be negative.
        group_size: block length for ``group``.
        narrow: for signed symmetric, use ``[-(2^(b-1)-1), 2^(b-1)-1]`` (keeps +/- balanced).

    Example:
        >>> QuantSpec(bits=4, granularity="group", axis=1, group_size=32).qmin
        -8
    """

    bits: int = Field(default=8, ge=2, le=8)
    signed: bool = True
    symmetric: bool = True
    granularity: Granularity = "tensor"
    axis: int = 0
    group_size: int | None = Field(default=None, ge=1)
    narrow: bool = False

    @model_validator(mode="after")
    def _check_group(self) -> QuantSpec:
        if self.granularity == "group" and self.group_size is None:
            raise ValueError("group_size is required when granularity is 'group'")
        return self

    @property
    def qmin(self) -> int:
        """Smallest integer."""
        if self.signed:
            return -(2 ** (self.bits - 1)) + (1 if self.narrow and self.symmetric else 0)
        return 0

    @property
    def qmax(self) -> int:
        """Largest integer."""
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1


@dataclass(frozen=True)
class QParams:
    """Scale and zero point of a quantized tensor, with its integer range and layout.

    Attributes:
        scale: float32; a scalar (tensor), shape ``(C,)`` (channel) or the tensor's
            shape with ``axis`` divided by ``group_size`` (group).
        zero_point: int32, same shape as ``scale``.
        qmin: smallest integer.
        qmax: largest integer.
        axis: channel / blocked axis (``None`` for per-tensor).
        group_size: block length (``None`` unless per-group).
    """

    scale: torch.Tensor
    zero_point: torch.Tensor
    qmin: int
    qmax: int
    axis: int | None = None
    group_size: int | None = None

    @property
    def bits(self) -> int:
        """Integer width implied by the range."""
        return int(self.qmax - self.qmin).bit_length()

    @property
    def signed(self) -> bool:
        """Whether the integer range is signed."""
        return self.qmin < 0


def _norm_axis(axis: int, ndim: int, what: str = "axis") -> int:
    if not -ndim <= axis < ndim:
        raise TorchslimError(f"{what} {axis} is out of range for a tensor of {ndim} dimension(s)")
    return axis % ndim


def check_spec_fits(spec: QuantSpec, shape: tuple[int, ...] | torch.Size, name: str = "tensor") -> None:
    """Raise a clear error when ``spec`` cannot quantize a tensor of ``shape``.

    Raises:
        TorchslimError: the axis is out of range or ``group_size`` does not divide the axis.

    Example:
        >>> check_spec_fits(QuantSpec(granularity="group", axis=1, group_size=16), (8, 64))
    """
    if spec.granularity == "tensor":
        return
    ndim = len(shape)
    if ndim == 0:
        raise TorchslimError(f"{name}: per-{spec.granularity} quantization needs at least one dimension")
    axis = _norm_axis(spec.axis, ndim, f"{name}: axis")
    if spec.granularity == "group":
        size = int(shape[axis])
        if spec.group_size is None or size % spec.group_size:
            raise TorchslimError(
                f"{name}: group_size {spec.group_size} does not divide dimension {axis} of size {size} "
                f"(shape {tuple(shape)})"
            )


def _blocks(x: torch.Tensor, axis: int, group_size: int) -> torch.Tensor:
    """View ``x`` as ``(..., n_blocks, group_size, ...)`` with the blocks at ``axis``."""
    shape = list(x.shape)
    return x.reshape(shape[:axis] + [shape[axis] // group_size, group_size] + shape[axis + 1 :])


def reduce_min_max(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of ``x`` at the spec's granularity (shapes as :class:`QParams` scales).

    Example:
        >>> lo, hi = reduce_min_max(torch.tensor([[1.0, -2.0], [3.0, 4.0]]), QuantSpec(granularity="channel"))
        >>> lo.tolist(), hi.tolist()
        ([-2.0, 3.0], [1.0, 4.0])
    """
    x = x.detach().float()
    if spec.granularity == "tensor":
        return x.min(), x.max()
    check_spec_fits(spec, x.shape)
    axis = spec.axis % x.dim()
    if spec.granularity == "channel":
        flat = x.movedim(axis, 0).reshape(x.shape[axis], -1)
        return flat.min(dim=1).values, flat.max(dim=1).values
    if spec.group_size is None:  # the validator rejects this; kept for direct callers
        raise TorchslimError("granularity 'group' needs group_size")
    b = _blocks(x, axis, spec.group_size)
    return b.amin(dim=axis + 1), b.amax(dim=axis + 1)


def qparams_from_range(min_val: torch.Tensor, max_val: torch.Tensor, spec: QuantSpec) -> QParams:
    """Scale and zero point covering ``[min_val, max_val]`` (always widened to include 0).

    Symmetric: ``scale = max(|min|, |max|) / ((qmax - qmin) / 2)`` and the zero point is
    the middle of the integer range (0 when signed). Asymmetric:
    ``scale = (max - min) / (qmax - qmin)``, ``zero_point = qmin - round(min / scale)``.

    Example:
        >>> qp = qparams_from_range(torch.tensor(-1.0), torch.tensor(3.0), QuantSpec(signed=False, symmetric=False))
        >>> round(float(qp.scale) * 255, 6), int(qp.zero_point)
        (4.0, 64)
    """
    lo = torch.minimum(min_val.float(), torch.zeros_like(min_val, dtype=torch.float32))
    hi = torch.maximum(max_val.float(), torch.zeros_like(max_val, dtype=torch.float32))
    qmin, qmax = spec.qmin, spec.qmax
    if spec.symmetric:
        amax = torch.maximum(-lo, hi)
        half = (qmax - qmin) / 2.0
        scale = torch.clamp(amax / half, min=MIN_SCALE)
        mid = 0 if spec.signed else (qmax + qmin + 1) // 2
        zero_point = torch.full_like(scale, mid, dtype=torch.int32)
    else:
        scale = torch.clamp((hi - lo) / float(qmax - qmin), min=MIN_SCALE)
        zero_point = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int32)
    axis = None if spec.granularity == "tensor" else spec.axis
    group = spec.group_size if spec.granularity == "group" else None
    return QParams(scale.to(torch.float32), zero_point, qmin, qmax, axis, group)


def qparams_from_tensor(x: torch.Tensor, spec: QuantSpec) -> QParams:
    """Min-max scale and zero point of ``x`` itself (what weights use).

    Example:
        >>> qp = qparams_from_tensor(torch.tensor([-1.0, 0.5]), QuantSpec())   # symmetric: max|x| / 127.5
        >>> round(float(qp.scale) * 127.5, 6), int(qp.zero_point)
        (1.0, 0)
    """
    lo, hi = reduce_min_max(x, spec)
    qp = qparams_from_range(lo, hi, spec)
    if qp.axis is not None:
        qp = QParams(qp.scale, qp.zero_point, qp.qmin, qp.qmax, qp.axis % x.dim(), qp.group_size)
    return qp


def _expand(t: torch.Tensor, x: torch.Tensor, axis: int | None, group_size: int | None) -> torch.Tensor:
    """Broadcast a scale/zero-point tensor against ``x``."""
    if axis is None or t.dim() == 0:
        return t
    axis = axis % x.dim()
    if group_size is not None:
        return t.repeat_interleave(group_size, dim=axis)
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


#: Public name of :func:`_expand`: broadcast a scale or zero-point tensor against the tensor it quantizes
#: (per-tensor: as it is; per-channel: along ``axis``; per-group: each entry repeated ``group_size`` times).
expand_qparam = _expand


def quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Integers of ``x``: ``clamp(round_half_even(x / scale) + zero_point, qmin, qmax)`` (int32).

    Bit-exact with ONNX ``QuantizeLinear`` (float32 division, round half to even,
    saturation).

    Example:
        >>> qp = QParams(torch.tensor(0.5), torch.tensor(0, dtype=torch.int32), -128, 127)
        >>> quantize(torch.tensor([0.25, 0.75, 1.25, 100.0]), qp).tolist()
        [0, 2, 2, 127]
    """
    scale = _expand(qp.scale, x, qp.axis, qp.group_size)
    zp = _expand(qp.zero_point, x, qp.axis, qp.group_size)
    q = torch.round(x.float() / scale) + zp.float()
    return torch.clamp(q, qp.qmin, qp.qmax).to(torch.int32)


def dequantize(q: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Floats of integers ``q``: ``(q - zero_point) * scale`` in float32 (ONNX ``DequantizeLinear``).

    Example:
        >>> qp = QParams(torch.tensor(0.5), torch.tensor(1, dtype=torch.int32), 0, 255)
        >>> dequantize(torch.tensor([0, 1, 3]), qp).tolist()
        [-0.5, 0.0, 1.0]
    """
    scale = _expand(qp.scale, q, qp.axis, qp.group_size)
    zp = _expand(qp.zero_point, q, qp.axis, qp.group_size)
    return (q.to(torch.int32) - zp).float() * scale


def fake_quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """``dequantize(quantize(x))`` (no gradient: see :mod:`torchslim.quant.fake` for STE).

    Example:
        >>> qp = QParams(torch.tensor(0.5), torch.tensor(0, dtype=torch.int32), -8, 7)
        >>> fake_quantize(torch.tensor([0.3, 9.0]), qp).tolist()
        [0.5, 3.5]
    """
    return dequantize(quantize(x, qp), qp)


def quant_error(x: torch.Tensor, qp: QParams) -> float:
    """Mean squared error of fake-quantizing ``x``.

    Example:
        >>> quant_error(torch.zeros(3), qparams_from_tensor(torch.zeros(3), QuantSpec()))
        0.0
    """
    return float(torch.mean((fake_quantize(x, qp) - x.float()) ** 2))


def sqnr_db(x: torch.Tensor, y: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio of ``y`` against reference ``x``, in dB.

    Example:
        >>> round(sqnr_db(torch.ones(4), torch.ones(4) * 1.1), 1)
        20.0
    """
    noise = torch.sum((x.float() - y.float()) ** 2)
    signal = torch.sum(x.float() ** 2)
    if float(noise) == 0.0:
        return float("inf")
    return float(10.0 * torch.log10(signal / noise))
