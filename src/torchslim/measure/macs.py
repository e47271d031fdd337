"""Multiply-accumulate counts from torch's own FLOP counter.

Also home of the small helpers that turn an *example input* into one sample or a
batch and call a model with it, shared by :mod:`~torchslim.measure.latency` and
:mod:`~torchslim.measure.memory`. An example input is a tensor (batch first), a
tuple/list of tensors (positional arguments) or a dict of tensors (keyword
arguments, e.g. a Hugging Face tokenizer output).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from torchslim.data.batches import inputs_pair
from torchslim.errors import TorchslimError

ExampleInput = torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor] | Mapping[str, torch.Tensor]


def _map_tensors(example: Any, fn: Any) -> Any:
    if isinstance(example, torch.Tensor):
        if example.dim() == 0:
            raise TorchslimError("example_input must have a batch dimension (got a 0-d tensor)")
        return fn(example)
    if isinstance(example, Mapping):
        return {k: _map_tensors(v, fn) for k, v in example.items()}
    if isinstance(example, (tuple, list)) and example:
        return type(example)(_map_tensors(v, fn) for v in example)
    raise TorchslimError(
        "example_input must be a tensor, a non-empty tuple/list of tensors or a dict of tensors, "
        f"got {type(example).__name__}"
    )


def first_sample(example: ExampleInput) -> Any:
    """Return the first sample of ``example`` with its batch dimension kept (``x[:1]``).

    Example:
        >>> first_sample(torch.zeros(8, 3)).shape
        torch.Size([1, 3])
    """

    def take(t: torch.Tensor) -> torch.Tensor:
        if t.shape[0] < 1:
            raise TorchslimError("example_input has an empty batch dimension")
        return t[:1]

    return _map_tensors(example, take)


def repeat_sample(example: ExampleInput, batch_size: int) -> Any:
    """Return a contiguous batch of ``batch_size`` copies of the first sample of ``example``.

    Raises:
        ValueError: ``batch_size`` is not a positive integer.

    Example:
        >>> repeat_sample(torch.arange(6.0).view(3, 2), 4).shape
        torch.Size([4, 2])
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    one = first_sample(example)
    return _map_tensors(one, lambda t: t.repeat(batch_size, *([1] * (t.dim() - 1))).contiguous())


def input_bytes(example: ExampleInput) -> int:
    """Bytes held by the tensors of an example input.

    Example:
        >>> input_bytes(torch.zeros(2, 3))
        24
    """
    total = 0

    def add(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    _map_tensors(example, add)
    return total


def batch_inputs(batch: Any, model: nn.Module | None = None) -> Any:
    """The model input of a data batch: ``x`` of an ``(x, y)`` pair, else the batch itself (tensor, dict, tuple).

    A pair of tensors given for a ``model`` whose forward requires two positional arguments or more
    (``forward(self, src, tgt)``) is that model's input, not an ``(x, y)`` pair; such a model's batches
    with labels are ``((src, tgt), y)``, without them ``((src, tgt),)`` (the form for ``forward(x, mask=None)``
    called with a mask: ``((x, mask),)``).

    Example:
        >>> batch_inputs((torch.ones(2), torch.zeros(2))).tolist()
        [1.0, 1.0]
        >>> len(batch_inputs((torch.ones(1, 2), torch.zeros(1, 2)), nn.Bilinear(2, 2, 1)))
        2
        >>> len(batch_inputs(((torch.ones(1, 2), torch.zeros(1, 2)),)))
        2
    """
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        if inputs_pair(batch, model):
            return batch
        return batch[0]
    if isinstance(batch, (tuple, list)) and len(batch) == 1:  # (inputs,): inputs without labels, as split_batch reads it
        return batch[0]
    return batch


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Call ``model`` with a tensor, positional tensors (tuple/list) or keyword tensors (dict).

    Example:
        >>> call_model(nn.Linear(3, 2), torch.zeros(1, 3)).shape
        torch.Size([1, 2])
    """
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def input_device(inputs: Any) -> torch.device:
    """Device of the first tensor of an example input."""
    found: list[torch.device] = []
    _map_tensors(inputs, lambda t: found.append(t.device) or t)
    return found[0]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` and every submodule in eval mode, restoring each one's mode after.

    Example:
        >>> m = nn.Dropout().train()
        >>> with eval_mode(m):
        ...     m.training
        False
        >>> m.training
        True
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


def _sdpa_flops(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of a scaled dot-product attention from its shapes: ``Q @ K^T`` then ``scores @ V`` (2 per MAC).

    Key/value heads may be fewer than the query's (grouped-query attention: they are broadcast).
    Causal masks are not discounted, as torch's own formula for the GPU kernels.
    """
    *lead, s_q, d_qk = query
    s_k, d_v = key[-2], value[-1]
    n = 1
    for size in lead:  # batch x query heads
        n *= int(size)
    return 2 * n * s_q * s_k * (d_qk + d_v)


def _rnn_layer_flops(inputs: Any, w_ih: Any, w_hh: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of one oneDNN recurrent layer (one direction): every step multiplies the input by ``w_ih`` and the
    hidden state by ``w_hh`` (all gates stacked in their rows)."""
    steps = 1
    for size in inputs[:-1]:  # sequence x batch
        steps *= int(size)
    return 2 * steps * (w_ih[0] * w_ih[1] + w_hh[0] * w_hh[1])


# CPU kernels torch's FLOP counter has no formula for: F.scaled_dot_product_attention's (it knows the CUDA
# flash/efficient/cudnn ones), without which attention scores of every sdpa model count 0 MACs on the CPU, and
# oneDNN's recurrent layer, which nn.LSTM runs on the CPU (0 MACs for the whole LSTM otherwise).
_EXTRA_FORMULAS = {
    op: formula
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", _sdpa_flops), ("mkldnn_rnn_layer", _rnn_layer_flops))
    if (op := getattr(torch.ops.aten, name, None)) is not None
}


@contextmanager
def mha_slow_path() -> Iterator[None]:
    """Keep ``nn.MultiheadAttention`` (and ``nn.TransformerEncoderLayer``) off their fused fast path inside the block.

    Under ``no_grad`` in eval mode PyTorch runs them through ``aten::_native_multi_head_attention``,
    which the ONNX exporter cannot export and torch's FLOP counter does not see into (0 MACs); a
    pruned attention no longer takes it either. The slow path computes the same function with plain
    operators. The previous setting is restored afterwards.

    Example:
        >>> with mha_slow_path():
        ...     torch.backends.mha.get_fastpath_enabled()
        False
        >>> torch.backends.mha.get_fastpath_enabled()
        True
    """
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def count_macs(model: nn.Module, example_input: ExampleInput) -> int:
    """Dense multiply-accumulates of one forward of ONE sample (``flops // 2``).

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` under ``torch.no_grad()``
    in eval mode on ``example_input[:1]``; the model's training mode is restored.
    Zeros in weights are not skipped (this is the dense count); bias additions,
    activations and pooling are not counted by torch's counter. Attention is counted
    in full: ``nn.MultiheadAttention``'s fused fast path is turned off while counting
    (its kernel hides the projections from the counter), the CPU kernel of
    ``F.scaled_dot_product_attention`` counts ``Q @ K^T`` and ``scores @ V``, and
    ``nn.LSTM``'s oneDNN kernel counts its input and recurrent products at every step.

    Args:
        model: The model.
        example_input: An example batch (only the first sample is used).

    Returns:
        The MAC count for one sample.

    Example:
        >>> mlp = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100),
        ...                     nn.ReLU(), nn.Linear(100, 10))
        >>> count_macs(mlp, torch.randn(5, 784))
        266200
    """
    sample = first_sample(example_input)
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
    with eval_mode(model), torch.no_grad(), mha_slow_path(), counter:
        call_model(model, sample)
    return int(counter.get_total_flops()) // 2
