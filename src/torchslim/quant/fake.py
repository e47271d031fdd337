"""Fake quantization with a straight-through estimator, and learned step size (LSQ).

:class:`FakeQuantize` rounds to the integer grid and back in the forward pass.
Backward, the gradient passes straight through where the input is inside the
representable range and is zero where it saturated (the clipped STE of Bengio
et al. / Jacob et al.). With ``learn_scale=True`` the scale is a parameter
trained with the LSQ gradient (Esser et al. 2020, step-size gradient scaled by
``1 / sqrt(numel * qmax)``).

While ``observing`` the module feeds an observer and refreshes its scale and
zero point from it; when ``enabled`` is ``False`` it is the identity.

Example:
    >>> fq = FakeQuantize(QuantSpec(bits=4), observer="minmax")
    >>> y = fq(torch.randn(8, requires_grad=True))
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.quant.affine import QParams, QuantSpec, _expand, check_spec_fits, dequantize, quantize
from torchslim.quant.observers import Observer, make_observer
from torchslim.quant.tokens import real_tokens


class _STEFakeQuant(torch.autograd.Function):
    """Forward: ONNX-exact fake quantization. Backward: pass-through inside the range, zero outside."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        qmin: int,
        qmax: int,
        axis: int | None,
        group: int | None,
    ) -> torch.Tensor:
        s = _expand(scale, x, axis, group)
        z = _expand(zero_point, x, axis, group).float()
        raw = torch.round(x / s) + z  # the same float32 arithmetic as affine.quantize / dequantize
        ctx.save_for_backward((raw >= qmin) & (raw <= qmax))
        return ((torch.clamp(raw, qmin, qmax) - z) * s).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None, None, None


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def _grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    return x * g + (x - x * g).detach()


def ste_fake_quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Fake-quantize ``x`` with the clipped straight-through gradient.

    Example:
        >>> qp = QParams(torch.tensor(0.1), torch.tensor(0, dtype=torch.int32), -8, 7)
        >>> x = torch.tensor([0.05, 2.0], requires_grad=True)
        >>> ste_fake_quantize(x, qp).sum().backward(); x.grad.tolist()
        [1.0, 0.0]
    """
    return _STEFakeQuant.apply(x, qp.scale, qp.zero_point, qp.qmin, qp.qmax, qp.axis, qp.group_size)


class FakeQuantize(nn.Module):
    """Quantize-dequantize a tensor in the forward pass (weights or activations).

    Args:
        spec: the quantization spec.
        observer: registered observer name (``minmax``, ``moving_average``, ``percentile``, ``mse``).
        observer_args: keyword arguments of the observer.
        learn_scale: make the scale a parameter trained with LSQ.
        per_call: recompute the statistics from each call alone (weights: the scale
            follows the current weight during QAT) instead of accumulating them.

    Attributes:
        observing: feed the observer and refresh the scale/zero point on each call.
        enabled: quantize (``False``: identity).

    Example:
        >>> fq = FakeQuantize(QuantSpec(signed=False, symmetric=False))
        >>> _ = fq(torch.rand(4, 3)); fq.observing = False
        >>> fq.qparams().qmax
        255
    """

    def __init__(
        self,
        spec: QuantSpec,
        observer: str = "minmax",
        observer_args: dict[str, Any] | None = None,
        learn_scale: bool = False,
        per_call: bool = False,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.observer_name = observer
        self.observer_args = dict(observer_args or {})
        self.observer: Observer = make_observer(observer, spec, **self.observer_args)
        self.learn_scale = learn_scale
        self.per_call = per_call
        self.observing = True
        self.enabled = True
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.axis: int | None = None
        self.log_scale: nn.Parameter | None = None

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"bits={s.bits}, signed={s.signed}, symmetric={s.symmetric}, granularity={s.granularity}, "
            f"observer={self.observer_name}, lsq={self.learn_scale}"
        )

    def set_qparams(self, qp: QParams) -> None:
        """Use ``qp`` from now on (buffers resized as needed)."""
        self.scale = qp.scale.detach().clone().float()
        self.zero_point = qp.zero_point.detach().clone().to(torch.int32)
        self.axis = qp.axis
        self.initialized = torch.ones((), dtype=torch.bool)
        if self.learn_scale:
            self.log_scale = nn.Parameter(torch.log(self.scale.clone()))

    def qparams(self) -> QParams:
        """Current scale and zero point.

        Raises:
            TorchslimError: nothing has been observed yet.
        """
        if not bool(self.initialized):
            raise TorchslimError("this FakeQuantize has no scale yet: run calibration data through the model first")
        scale = torch.exp(self.log_scale).detach() if self.log_scale is not None else self.scale
        return QParams(scale, self.zero_point, self.spec.qmin, self.spec.qmax, self.axis, self._group)

    @property
    def _group(self) -> int | None:
        return self.spec.group_size if self.spec.granularity == "group" else None

    def observe(self, x: torch.Tensor) -> None:
        """Feed ``x`` to the observer and refresh scale and zero point (only the real-token positions of
        ``x`` while a :func:`~torchslim.quant.tokens.token_mask` is active)."""
        x = real_tokens(x)
        check_spec_fits(self.spec, x.shape)
        if self.per_call:
            self.observer = make_observer(self.observer_name, self.spec, **self.observer_args)
        self.observer.update(x.detach())
        self.set_qparams(self.observer.qparams())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observe(x)
        if not self.enabled:
            return x
        if torch.onnx.is_in_onnx_export():  # constants in the graph: the scale buffer (learned scales frozen into it)
            qp = self.qparams()
            return _export_fake_quant(x, QParams(self.scale, self.zero_point, qp.qmin, qp.qmax, qp.axis, qp.group_size))
        if self.log_scale is not None:
            return self._lsq(x)
        cache = self.__dict__.get("_weight_cache")
        if cache is not None and isinstance(x, nn.Parameter) and not torch.is_grad_enabled():
            held = (x, x._version, self.scale, self.scale._version, self.zero_point, self.zero_point._version)
            if len(cache) == 7 and all(a is b if isinstance(a, torch.Tensor) else a == b for a, b in zip(cache, held)):
                return cache[6]  # the same weight and scale tensors, unchanged since (their versions)
            out = ste_fake_quantize(x, self.qparams())
            cache[:] = [*held, out]
            return out
        return ste_fake_quantize(x, self.qparams())

    def _lsq(self, x: torch.Tensor) -> torch.Tensor:
        if self.log_scale is None:
            raise TorchslimError("LSQ step size used before initialisation (run a calibration forward first)")
        qmin, qmax = self.spec.qmin, self.spec.qmax
        n = x.numel() if self.axis is None else max(1, x.numel() // max(1, self.log_scale.numel()))
        g = 1.0 / math.sqrt(n * max(1, qmax))
        scale = _grad_scale(torch.exp(self.log_scale), g)
        s = _expand(scale, x, self.axis, self._group)
        z = _expand(self.zero_point, x, self.axis, self._group).float()
        q = torch.clamp(_round_ste(x / s) + z, qmin, qmax)
        return (q - z) * s

    @torch.no_grad()
    def freeze_learned_scale(self) -> None:
        """Copy a learned scale into the ``scale`` buffer (for export and storage)."""
        if self.log_scale is not None:
            self.scale = torch.exp(self.log_scale.detach()).clone()


@contextmanager
def cached_weights(model: nn.Module) -> Iterator[None]:
    """Inside, each weight quantizer of ``model`` keeps its fake-quantized weight between forwards without
    gradients (recomputed when the weight, its scale or zero point is replaced or changed in place); the
    copies are dropped on exit. For loops that run the same quantized model many times (the accuracy guard's
    one-layer-in-float sweep: on SmolLM2-135M, 213 forwards spent 90 % of their time re-quantizing weights).

    Example:
        >>> fq = FakeQuantize(QuantSpec(signed=True, symmetric=True)); w = nn.Parameter(torch.randn(4, 3))
        >>> _ = fq(w); fq.observing = False
        >>> with cached_weights(fq), torch.no_grad():
        ...     a, b = fq(w), fq(w)
        ...     _ = w.mul_(2); c = fq(w)
        >>> a is b, torch.equal(a, c), hasattr(fq, "_weight_cache")
        (True, False, False)
    """
    quantizers = [m for m in model.modules() if isinstance(m, FakeQuantize)]
    for fq in quantizers:
        fq.__dict__["_weight_cache"] = []
    try:
        yield
    finally:
        for fq in quantizers:
            fq.__dict__.pop("_weight_cache", None)


def _export_fake_quant(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Emit ONNX QuantizeLinear/DequantizeLinear through torch's fake-quant ops (8-bit containers).

    Integers of narrower widths live inside the 8-bit container; the exporter
    sees an int8/uint8 range while the values stay on the narrower grid because
    the QDQ post-processing in :mod:`torchslim.deploy` writes weights as
    pre-quantized initializers.
    """
    lo, hi = (-128, 127) if qp.signed else (0, 255)
    if qp.group_size is not None:
        return dequantize(quantize(x, qp), qp)  # exported as float arithmetic on constants
    if qp.axis is None:
        return torch.fake_quantize_per_tensor_affine(x, qp.scale.float(), qp.zero_point.to(torch.int32), lo, hi)
    return torch.fake_quantize_per_channel_affine(x, qp.scale.float(), qp.zero_point.to(torch.int32), qp.axis, lo, hi)
