"""Layer-by-layer calibration of a causal language model: one decoder block at a time.

A Hugging Face causal LM (``LlamaForCausalLM`` and similar) keeps its decoder blocks in a
list (``model.model.layers``). :func:`capture_inputs` runs the model on each calibration
batch until the first block is called, and keeps what the block got: the hidden states
and the keyword arguments it needs (attention mask, position ids, rotary position
embeddings); a forward pre-hook raises to stop the forward there. Then the blocks are
processed in order: :meth:`BlockInputs.collect` runs a block's calibration inputs through
it with forward pre-hooks on its linear layers accumulating what a method needs (the
Hessian ``H = 2/N sum x x^T`` in float64, per-input-channel sums of ``x^2`` and ``|x|``,
a sample of input rows), the method transforms the block, and :meth:`BlockInputs.advance`
recomputes the block's outputs *with the transformed block*: the next block's inputs.
Peak memory is about one block plus the cached activations; :class:`PeakRss` samples the
resident memory while a method runs, :func:`peak_rss_mb` reads the process's peak so far.

Linear layers that receive the same input tensor (q/k/v, gate/up) share one set of
statistics; :meth:`BlockInputs.order` finds these groups in the order the block runs them.

Example:
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                   num_key_value_heads=1, vocab_size=50)
    >>> model = LlamaForCausalLM(cfg).eval()
    >>> blocks = decoder_blocks(model)
    >>> cache = capture_inputs(model, [torch.randint(50, (2, 6))], blocks)
    >>> cache.tokens, [g for g in cache.order(blocks.layers[0], ["mlp.down_proj", "self_attn.q_proj", "self_attn.v_proj"])]
    (12, [['self_attn.q_proj', 'self_attn.v_proj'], ['mlp.down_proj']])
    >>> stats = cache.collect(blocks.layers[0], ["self_attn.q_proj"], {"hessian"})
    >>> stats["self_attn.q_proj"].hessian().shape
    torch.Size([16, 16])
"""

from __future__ import annotations

import ctypes
import functools
import math
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchslim.errors import TransformRefusedError
from torchslim.measure.memory import PeakRss, peak_rss_mb, rss_mb

__all__ = ["BlockInputs", "DecoderBlocks", "LayerStats", "PeakRss", "calibration_batches", "capture_inputs",
           "decoder_blocks", "peak_rss_mb", "release_freed_memory", "rss_mb"]

#: where causal LMs keep their decoder blocks, and their final norm (tried in order)
BLOCK_PATHS = (("model.layers", "model.norm"), ("transformer.h", "transformer.ln_f"), ("gpt_neox.layers", "gpt_neox.final_layer_norm"))


class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


def release_freed_memory() -> bool:
    """Hand the heap's free memory back to the operating system (glibc ``malloc_trim``); ``False`` where unavailable.

    Block by block, a method frees a block's activations and Hessians and allocates the next
    block's; glibc keeps freed chunks of up to 32 MiB in its heap, so the resident memory climbs
    with every block although the live memory does not. Called after each block.
    """
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc, where it is the C library and has ``malloc_trim``; else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - musl and others lack it
    except (OSError, AttributeError):
        return None
    return libc


@dataclass
class DecoderBlocks:
    """A causal LM's decoder blocks (``prefix`` is their qualified name, ``model.layers``) and final norm."""

    prefix: str
    layers: nn.ModuleList
    norm: nn.Module | None
    norm_name: str | None


def decoder_blocks(model: nn.Module) -> DecoderBlocks:
    """The decoder blocks of a causal LM (``model.model.layers`` and the like).

    Raises:
        TransformRefusedError: the model has no list of decoder blocks where causal LMs keep it.
    """
    for path, norm_path in BLOCK_PATHS:
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList) and len(layers):
            try:
                return DecoderBlocks(path, layers, model.get_submodule(norm_path), norm_path)
            except AttributeError:
                return DecoderBlocks(path, layers, None, None)
    raise TransformRefusedError(
        f"{type(model).__name__} has no decoder blocks where causal language models keep them "
        f"({', '.join(p for p, _ in BLOCK_PATHS)}); layer-by-layer calibration needs a Hugging Face causal LM"
    )


def calibration_batches(calibration: Any, batch_size: int) -> list[torch.Tensor]:
    """Token-id batches ``[B, T]`` from ``calibration``.

    ``calibration`` is a LongTensor ``[N, T]`` (split into batches of ``batch_size``), or an
    iterable of ``[B, T]`` LongTensors, ``{"input_ids": ...}`` mappings or ``(input_ids, labels)`` pairs.

    Raises:
        TransformRefusedError: no calibration, or a batch that is not 2-D integer token ids.

    Example:
        >>> [tuple(b.shape) for b in calibration_batches(torch.zeros(5, 3, dtype=torch.long), 2)]
        [(2, 3), (2, 3), (1, 3)]
    """
    if calibration is None:
        raise TransformRefusedError("this method needs calibration: token ids, a LongTensor [N, T] or batches of [B, T]")
    items: Iterable[Any] = calibration.split(batch_size) if isinstance(calibration, torch.Tensor) else calibration
    out = []
    for i, item in enumerate(items):
        x = item["input_ids"] if isinstance(item, dict) else item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.dtype.is_floating_point or x.dtype == torch.bool:
            what = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise TransformRefusedError(f"calibration batch {i} must be token ids, an integer tensor [B, T]; got a {what}")
        out.append(x.long())
    if not out:
        raise TransformRefusedError("calibration is empty: give at least one batch of token ids")
    return out


@dataclass
class LayerStats:
    """What the pre-hooks accumulated for one input (shared by the linear layers that read it)."""

    tokens: int = 0
    xtx: torch.Tensor | None = None  # float64 [in, in]: sum of x x^T
    sq: torch.Tensor | None = None  # float64 [in]: sum of x^2
    abs: torch.Tensor | None = None  # float64 [in]: sum of |x|
    rows: list[torch.Tensor] = field(default_factory=list)  # float32 samples of input rows

    def hessian(self) -> torch.Tensor:
        """``H = 2/N sum x x^T`` (float64)."""
        if self.xtx is None:
            raise RuntimeError("the Hessian was not collected")
        return self.xtx * (2.0 / max(self.tokens, 1))

    def norms(self) -> torch.Tensor:
        """Per-input-channel L2 norms of the calibration inputs (float32)."""
        sq = self.sq if self.sq is not None else (self.xtx.diagonal() if self.xtx is not None else None)
        if sq is None:
            raise RuntimeError("the input norms were not collected")
        return sq.sqrt().float()

    def mean_abs(self) -> torch.Tensor:
        """Per-input-channel mean magnitude of the calibration inputs (float32)."""
        if self.abs is None:
            raise RuntimeError("the mean magnitudes were not collected")
        return (self.abs / max(self.tokens, 1)).float()

    def samples(self) -> torch.Tensor:
        """The sampled input rows ``[n, in]`` (float32)."""
        return torch.cat(self.rows) if self.rows else torch.zeros(0)

    def add(self, x: torch.Tensor, needs: set[str], stride: int) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        self.tokens += x.shape[0]
        if "hessian" in needs:
            part = (x.t() @ x).double()
            self.xtx = part if self.xtx is None else self.xtx.add_(part)
        if "norms" in needs:
            part = x.square().sum(0).double()
            self.sq = part if self.sq is None else self.sq.add_(part)
        if "mean_abs" in needs:
            part = x.abs().sum(0).double()
            self.abs = part if self.abs is None else self.abs.add_(part)
        if "samples" in needs:
            self.rows.append(x[::stride].clone())


def _output(out: Any) -> torch.Tensor:
    """A block's hidden states from what it returned (a tensor, or a tuple starting with one)."""
    return out[0] if isinstance(out, (tuple, list)) else out


class BlockInputs:
    """The calibration inputs of the block being processed: per batch, its hidden states and keyword arguments."""

    def __init__(self, hidden: list[torch.Tensor], kwargs: list[dict[str, Any]]) -> None:
        self.hidden, self.kwargs = hidden, kwargs
        self.tokens = sum(int(h.shape[0] * h.shape[1]) for h in hidden)

    def run(self, block: nn.Module, batch: int) -> torch.Tensor:
        """``block``'s output on calibration batch ``batch``."""
        return _output(block(self.hidden[batch], **self.kwargs[batch]))

    def order(self, block: nn.Module, names: list[str]) -> list[list[str]]:
        """``names`` (linear layers of ``block``) grouped by shared input, in the order the block runs them."""
        seen: list[tuple[torch.Tensor, list[str]]] = []

        def hook(name: str) -> Any:  # a forward pre-hook for layer `name`
            def pre(_m: nn.Module, args: tuple[Any, ...]) -> None:
                x = args[0]
                group = next((g for t, g in seen if t is x), None)
                if group is None:
                    seen.append((x, [name]))
                elif name not in group:
                    group.append(name)
                if sum(len(g) for _, g in seen) == len(names):
                    raise _Stop
            return pre

        with _hooks(block, names, hook):
            try:
                self.run(block, 0)
            except _Stop:
                pass
        missing = [n for n in names if not any(n in g for _, g in seen)]
        if missing:
            raise TransformRefusedError(f"layer {missing[0]} of this block is not called by the block's forward")
        return [g for _, g in seen]

    def collect(self, block: nn.Module, names: list[str], needs: set[str], sample_rows: int = 0) -> dict[str, LayerStats]:
        """Run every calibration batch through ``block``, accumulating ``needs`` for each of ``names``.

        ``needs``: ``hessian``, ``norms``, ``mean_abs``, ``samples`` (about ``sample_rows`` input rows,
        evenly strided over all the calibration tokens). Layers that read the same input share one
        :class:`LayerStats`. The forward stops once every layer has been called.
        """
        stride = max(1, math.ceil(self.tokens / sample_rows)) if sample_rows else 1
        stats: dict[str, LayerStats] = {}
        live: list[tuple[torch.Tensor, LayerStats]] = []  # this batch's inputs seen so far (strong references)
        called: set[str] = set()

        def hook(name: str) -> Any:  # a forward pre-hook for layer `name`
            def pre(_m: nn.Module, args: tuple[Any, ...]) -> None:
                x = args[0]
                found = next((s for t, s in live if t is x), None)
                if found is None:
                    found = stats.get(name) or LayerStats()
                    found.add(x, needs, stride)
                    live.append((x, found))
                stats[name] = found
                called.add(name)
                if len(called) == len(names):
                    raise _Stop
            return pre

        with _hooks(block, names, hook):
            for b in range(len(self.hidden)):
                live.clear()
                called.clear()
                try:
                    self.run(block, b)
                except _Stop:
                    pass
        live.clear()
        return stats

    @torch.no_grad()
    def advance(self, block: nn.Module) -> None:
        """Replace the cached inputs by ``block``'s outputs: the next block's inputs."""
        for b in range(len(self.hidden)):
            self.hidden[b] = self.run(block, b)


@contextmanager
def _hooks(block: nn.Module, names: list[str], make: Any) -> Iterator[None]:
    handles = [block.get_submodule(n).register_forward_pre_hook(make(n)) for n in names]
    try:
        with torch.no_grad():
            yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def capture_inputs(model: nn.Module, batches: list[torch.Tensor], blocks: DecoderBlocks) -> BlockInputs:
    """The first decoder block's inputs (hidden states, keyword arguments) on each calibration batch.

    The model runs on each batch (moved to the model's device) until the first block is
    called; a forward pre-hook keeps the block's arguments and stops the forward there.
    """
    device = next(model.parameters()).device
    hidden: list[torch.Tensor] = []
    kwargs: list[dict[str, Any]] = []

    def pre(_m: nn.Module, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
        h = args[0] if args else kw.pop("hidden_states")
        hidden.append(h)
        kwargs.append({**{k: v for k, v in kw.items() if k != "hidden_states"}, "use_cache": False, "past_key_values": None})
        raise _Stop

    handle = blocks.layers[0].register_forward_pre_hook(pre, with_kwargs=True)
    try:
        for batch in batches:
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _Stop:
                continue
            raise TransformRefusedError(f"the model's forward never called its first decoder block {blocks.prefix}.0")
    finally:
        handle.remove()
    return BlockInputs(hidden, kwargs)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode (dropout off) for the duration, each module's training flag put back after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, t in flags:
            m.training = t
