"""ONNX Runtime sessions of exported causal LMs called like models, and their prefill and decode speed.

:class:`OrtCausalLM` runs either graph :func:`~torchslim.llm.export_onnx.export_int4_onnx`
writes (with the cache, an empty one is fed), so
:func:`torchslim.measure.perplexity.perplexity` scores it like the torch model;
:func:`time_prefill` and :func:`time_decode` time it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch

from torchslim.deploy.runtime import ort_session
from torchslim.errors import TorchslimError
from torchslim.measure.latency import LatencyResult, latency_result

__all__ = ["DecodeResult", "OrtCausalLM", "time_decode", "time_prefill"]


def _session(source: Any, threads: int) -> Any:
    if hasattr(source, "run") and hasattr(source, "get_inputs"):
        return source
    if isinstance(source, onnx.ModelProto):
        source = source.SerializeToString()
    if isinstance(getattr(source, "proto", None), onnx.ModelProto):  # an Int4Onnx
        source = source.proto.SerializeToString()
    return ort_session(source, threads=threads)


class OrtCausalLM:
    """An ONNX Runtime session of a causal LM called like a model: ``ids [batch, sequence] -> logits`` (a torch tensor).

    Works on both graphs :func:`~torchslim.llm.export_onnx.export_int4_onnx` writes (with the cache: an empty one is fed),
    so :func:`torchslim.measure.perplexity.perplexity` scores it like the torch model.
    """

    def __init__(self, source: Any, threads: int = 2) -> None:
        self.session = _session(source, threads)
        self.inputs = {i.name: i for i in self.session.get_inputs()}

    def feed(self, ids: torch.Tensor | np.ndarray, past: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The session's inputs for ``ids`` after the cache ``past`` (``None``: empty)."""
        x = np.asarray(ids.cpu().numpy() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64)
        feed: dict[str, np.ndarray] = {"input_ids": x}
        cache = [n for n in self.inputs if n.startswith("past_key_values.")]
        if not cache:
            return feed
        if past is None:
            past = [np.zeros((x.shape[0], self.inputs[n].shape[1], 0, self.inputs[n].shape[3]), np.float32) for n in cache]
        feed.update(zip(cache, past))
        feed["attention_mask"] = np.ones((x.shape[0], past[0].shape[2] + x.shape[1]), dtype=np.int64)
        return feed

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(["logits"], self.feed(ids))[0])


@dataclass(frozen=True)
class DecodeResult:
    """Greedy decoding speed: ``new_tokens`` steps of one token after a ``prompt``-token prefill."""

    tokens_per_s: float
    ms_per_token: float
    prompt: int
    new_tokens: int
    batch: int
    threads: int


def _threads(model: OrtCausalLM, asked: int) -> int:
    """The intra-op threads ``model``'s session runs with (a session passed in keeps its own)."""
    try:
        used = int(model.session.get_session_options().intra_op_num_threads)
    except (AttributeError, TypeError, ValueError):
        return asked
    return used if used > 0 else asked


def time_prefill(session: Any, tokens: int = 128, batch: int = 1, threads: int = 2, runs: int = 10, warmup: int = 2) -> LatencyResult:
    """Median time of one prefill (a forward pass over ``tokens`` tokens, ``batch`` sequences) in ONNX Runtime.

    ``session`` is an ``InferenceSession`` (it keeps its own thread count), an :class:`Int4Onnx`,
    an ``onnx.ModelProto``, bytes or a path (a session with ``threads`` intra-op threads is
    built). The token ids are fixed random ones.
    """
    if min(tokens, batch, threads, runs) < 1 or warmup < 0:
        raise TorchslimError(f"tokens, batch, threads and runs must be >= 1 and warmup >= 0; got {tokens}, {batch}, {threads}, {runs}, {warmup}")
    model = OrtCausalLM(session, threads)
    ids = torch.randint(0, _vocab_of(model), (batch, tokens), generator=torch.Generator().manual_seed(0))
    feed = model.feed(ids)
    times = []
    for i in range(warmup + runs):
        began = time.perf_counter()
        model.session.run(["logits"], feed)
        if i >= warmup:
            times.append((time.perf_counter() - began) * 1000.0)
    return latency_result(times, batch, _threads(model, threads))


def time_decode(session: Any, prompt: int = 128, new_tokens: int = 32, batch: int = 1, threads: int = 2) -> DecodeResult:
    """Greedy decoding speed in ONNX Runtime with the cache graph (``export_int4_onnx(..., kv_cache=True)``).

    A ``prompt``-token prefill, then ``new_tokens`` steps each feeding one token and the
    cache; only the steps are timed.
    """
    if min(prompt, new_tokens, batch, threads) < 1:
        raise TorchslimError(f"prompt, new_tokens, batch and threads must be >= 1; got {prompt}, {new_tokens}, {batch}, {threads}")
    model = OrtCausalLM(session, threads)
    if "attention_mask" not in model.inputs:
        raise TorchslimError("time_decode needs the graph with the attention cache: export_int4_onnx(model, kv_cache=True)")
    ids = torch.randint(0, _vocab_of(model), (batch, prompt), generator=torch.Generator().manual_seed(0))
    out = model.session.run(None, model.feed(ids))
    began = time.perf_counter()
    for _ in range(new_tokens):
        step = out[0][:, -1:].argmax(-1)
        out = model.session.run(None, model.feed(step, out[1:]))
    seconds = time.perf_counter() - began
    rate = batch * new_tokens / seconds
    return DecodeResult(rate, 1000.0 * seconds / new_tokens, prompt, new_tokens, batch, _threads(model, threads))


def _vocab_of(model: OrtCausalLM) -> int:
    declared = model.session.get_outputs()[0].shape[-1]
    if isinstance(declared, int):
        return declared
    probe = model.session.run(["logits"], model.feed(np.zeros((1, 1), dtype=np.int64)))[0]
    return int(probe.shape[-1])
