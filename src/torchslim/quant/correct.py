"""Bias correction: give each quantized layer back the mean output its float self has.

Quantization noise is not zero-mean per channel. A weight's rounding error
``δW`` shifts the layer's output by ``δW · E[x]``, and the activation grids
upstream shift it further; on inputs with large flat regions (a photo's sky, the
constant background of a digit or a garment) the shift is a constant offset on
most of the feature map, which every later layer carries on. Measured on the
zoo's ImageNet MobileNetV2 with Fashion-MNIST images: the 8-bit weights of the
first depthwise convolution alone (one 3×3 edge filter whose taps cancel to
-0.04 but are each rounded by up to 0.02) took the output SQNR to 19 dB.

:func:`correct_biases` (empirical bias correction: Nagel et al. 2019, the
``BiasCorrection`` step of NNCF's post-training quantization) runs each
calibration batch twice: once with every quantizer off (the float model's
per-channel output means of every quantized layer), once quantized, where each
layer's output is shifted by the difference *as it runs*, so the layers after
it are measured on corrected inputs (sequential, as if corrected one by one).
The mean shift over the batches is added to each layer's bias; a layer without
a bias gets one.

Example:
    >>> from torchslim.quant.config import WeightQuantConfig
    >>> from torchslim.quant.model import swap_layer
    >>> _ = torch.manual_seed(0)
    >>> layer = nn.Linear(16, 4, bias=False); swap_layer(layer, WeightQuantConfig(bits=2))
    >>> x = torch.randn(256, 16) + 3.0                       # inputs with a large mean
    >>> with torch.no_grad():
    ...     before = float((layer(x) - x @ layer.weight.T).mean(0).abs().max())
    ...     meta = correct_biases(layer, [("", layer)], [x])
    ...     after = float((layer(x) - x @ layer.weight.T).mean(0).abs().max())
    >>> meta["added_bias"], after < before / 100
    ([''], True)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from torchslim.measure.macs import batch_inputs, call_model, eval_mode
from torchslim.quant.fake import FakeQuantize
from torchslim.quant.tokens import mask_of, real_tokens, token_mask

#: the attribute (not state: a rebuilt model has the corrected bias only) holding a layer's bias shift
_SHIFT = "_torchslim_bias_shift"
#: set while :func:`uncorrected` has taken the shift out (nested blocks take it out once)
_OFF = "_torchslim_bias_uncorrected"


@contextmanager
def quantizers_off(model: nn.Module) -> Iterator[None]:
    """Inside the block every :class:`FakeQuantize` of ``model`` is off (the float model); restored after.

    Example:
        >>> from torchslim.quant.affine import QuantSpec
        >>> fq = FakeQuantize(QuantSpec())
        >>> with quantizers_off(fq):
        ...     fq.enabled
        False
        >>> fq.enabled
        True
    """
    saved = [(fq, fq.enabled) for fq in model.modules() if isinstance(fq, FakeQuantize)]
    try:
        for fq, _ in saved:
            fq.enabled = False
        yield
    finally:
        for fq, enabled in saved:
            fq.enabled = enabled


@contextmanager
def uncorrected(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Inside the block ``modules`` have the biases they had before :func:`correct_biases` (restored after).

    Blocks nest: a module already uncorrected by an enclosing block is left to that block.

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> with uncorrected([layer]):                   # never corrected: nothing to take out
        ...     pass
    """
    shifted = [(m, m.__dict__[_SHIFT]) for m in dict.fromkeys(modules)
               if m.__dict__.get(_SHIFT) is not None and not m.__dict__.get(_OFF)]
    try:
        for m, delta in shifted:
            m.bias.data -= delta
            m.__dict__[_OFF] = True
        yield
    finally:
        for m, delta in shifted:
            m.bias.data += delta
            m.__dict__[_OFF] = False


def channel_means(y: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Mean of ``y`` per channel over every other dimension (real tokens only under a token mask).

    Example:
        >>> channel_means(torch.arange(6.0).reshape(1, 2, 3), 1).tolist()
        [1.0, 4.0]
    """
    if channel_dim == -1 or channel_dim == y.dim() - 1:
        y = real_tokens(y)
        return y.reshape(-1, y.shape[-1]).float().mean(0)
    return y.detach().transpose(0, channel_dim).reshape(y.shape[channel_dim], -1).float().mean(1)


def _channel_dim(module: nn.Module) -> int:
    return -1 if isinstance(module, nn.Linear) else 1


def _broadcast(c: torch.Tensor, y: torch.Tensor, channel_dim: int) -> torch.Tensor:
    if channel_dim == -1:
        return c
    shape = [1] * y.dim()
    shape[channel_dim] = -1
    return c.reshape(shape)


@torch.no_grad()
def correct_biases(
    model: nn.Module, layers: Sequence[tuple[str, nn.Module]], batches: Sequence[Any], mask_key: str | None = None
) -> dict[str, Any]:
    """Shift the bias of each of ``layers`` (quantized Linear/Conv of ``model``) by its mean output error.

    Args:
        model: the quantized, calibrated model (eval-mode statistics are used).
        layers: ``(name, module)`` of the layers to correct, in any order.
        batches: calibration batches (``(x, y)`` pairs, tensors or dicts).
        mask_key: the token-mask key of dict batches (:mod:`torchslim.quant.tokens`).

    Returns:
        ``{"layers": n, "batches": n, "max_shift": largest |shift| of any channel, "added_bias": [...]}``.
    """
    mods = [(name, module, _channel_dim(module)) for name, module in layers]
    total: dict[str, torch.Tensor] = {}
    with eval_mode(model):
        for batch in batches:
            inputs = batch_inputs(batch, model)
            with token_mask(mask_of(inputs, mask_key)):
                ref = _float_means(model, mods, inputs)
                _corrected_pass(model, mods, inputs, ref, total)
    added: list[str] = []
    shift = 0.0
    for name, module, _ in mods:
        if name not in total:  # the layer never ran (a branch the batches do not take)
            continue
        delta = (total[name] / len(batches)).to(module.get_parameter("weight").dtype)
        if module.bias is None:
            module.bias = nn.Parameter(torch.zeros_like(delta))
            added.append(name)
        module.get_parameter("bias").data += delta
        module.__dict__[_SHIFT] = delta  # what :func:`uncorrected` takes back out
        shift = max(shift, float(delta.abs().max()))
    return {"layers": len(total), "batches": len(batches), "max_shift": shift, "added_bias": added}


def _float_means(model: nn.Module, mods: list[tuple[str, nn.Module, int]], inputs: Any) -> dict[str, torch.Tensor]:
    """Per-channel output means of every layer in ``mods`` with every quantizer off."""
    means: dict[str, torch.Tensor] = {}

    def record(name: str, dim: int) -> Any:
        return lambda _m, _i, y: means.__setitem__(name, channel_means(y, dim)) if name not in means else None

    handles = [module.register_forward_hook(record(name, dim)) for name, module, dim in mods]
    try:
        with quantizers_off(model):
            call_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return means


def _corrected_pass(model: nn.Module, mods: list[tuple[str, nn.Module, int]], inputs: Any,
                    ref: dict[str, torch.Tensor], total: dict[str, torch.Tensor]) -> None:
    """The quantized forward with each layer's output shifted to its float mean as it runs."""
    seen: set[str] = set()

    def shift(name: str, dim: int) -> Any:
        def hook(_m: nn.Module, _i: Any, y: torch.Tensor) -> torch.Tensor | None:
            if name in seen or name not in ref:  # a layer called twice is corrected on its first call only
                return None
            seen.add(name)
            c = ref[name] - channel_means(y, dim)
            total[name] = total.get(name, torch.zeros_like(c)) + c
            return y + _broadcast(c, y, dim).to(y.dtype)
        return hook

    handles = [module.register_forward_hook(shift(name, dim)) for name, module, dim in mods]
    try:
        call_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
