"""Perplexity of a causal language model on a token stream: one protocol for torch models, ONNX Runtime and peers.

The protocol (see ``docs/llm.md``):

* the tokens are one 1-D stream (for the evaluation set, the first 20,480 tokens of the
  Devil's Dictionary: :func:`torchslim.data.corpora.evaluation_tokens`), with no BOS
  token inserted;
* windows of ``window`` tokens start at ``0, stride, 2 * stride, ...``; only whole windows
  are run: the tokens after the last whole window are not scored (20,480 tokens in
  windows of 1,024 leave none);
* each window is run on its own (no state carried between windows); the token at position
  ``t`` of the window is scored from the logits at ``t - 1``, so the window's first token is
  never scored. With ``stride < window`` (overlapping windows) a token is scored once, in
  the first window that scores it: each later window scores only its last ``stride``
  tokens, with the ``window - stride`` before them as context;
* logits are cast to float32 before ``log_softmax``; the negative log-likelihoods are
  summed in float64. ``nll`` is their mean per scored token (nats) and ``ppl = exp(nll)``.

``model`` is a Hugging Face causal LM (called as ``model(input_ids=ids, use_cache=False)``
and read at ``.logits``), any ``nn.Module`` returning logits, or any callable taking an
int64 ``[batch, window]`` tensor and returning ``[batch, window, vocab]`` logits (a torch
tensor, a NumPy array, or an object with ``.logits``): an ONNX Runtime session wrapper
or a peer's model scores with the same function.

Example:
    A model whose logits are all equal gives the vocabulary size (to float32 precision):

    >>> uniform = lambda ids: torch.zeros(*ids.shape, 50)
    >>> r = perplexity(uniform, torch.arange(100) % 50, window=10, progress=False)
    >>> round(r.ppl, 4), r.windows, r.tokens_scored
    (50.0, 10, 90)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torchslim._progress import progress_bar
from torchslim.errors import TorchslimError

__all__ = ["PerplexityResult", "perplexity", "scored_spans"]

#: the largest window (tokens) and batch accepted
MAX_WINDOW = 131_072
MAX_BATCH = 4096


@dataclass(frozen=True)
class PerplexityResult:
    """One perplexity measurement.

    Attributes:
        ppl: ``exp(nll)``.
        nll: mean negative log-likelihood per scored token, in nats.
        tokens_scored: tokens whose likelihood was counted.
        windows: windows run.
        seconds: wall time of the forward passes and scoring.
    """

    ppl: float
    nll: float
    tokens_scored: int
    windows: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


def scored_spans(n_tokens: int, window: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """``[(start, first_scored, stop), ...]``: each window ``tokens[start:stop]`` and the first position it scores.

    A window scores positions ``first_scored .. stop - 1`` of the stream (it predicts each
    from the tokens before it in the window).

    Example:
        >>> scored_spans(10, 4)                # 2 whole windows; tokens 8, 9 are not scored
        [(0, 1, 4), (4, 5, 8)]
        >>> scored_spans(10, 4, stride=2)      # overlapping: later windows score their last 2
        [(0, 1, 4), (2, 4, 6), (4, 6, 8), (6, 8, 10)]
    """
    stride = window if stride is None else stride
    if not 2 <= window <= MAX_WINDOW:
        raise TorchslimError(f"window must be in 2..{MAX_WINDOW} tokens, got {window}")
    if not 1 <= stride <= MAX_WINDOW:
        raise TorchslimError(f"stride must be in 1..{MAX_WINDOW} tokens, got {stride}")
    if n_tokens < window:
        raise TorchslimError(f"{n_tokens} tokens are fewer than one window of {window}: give more tokens or a smaller window")
    spans = []
    scored_to = 0
    for start in range(0, n_tokens - window + 1, stride):
        stop = start + window
        first = max(start + 1, scored_to)
        spans.append((start, first, stop))
        scored_to = stop
    return spans


def _as_stream(tokens: Any) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(tokens) if not isinstance(tokens, torch.Tensor) else tokens)
    if t.dim() == 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 1:
        raise TorchslimError(f"tokens must be one 1-D stream (or [1, n]), got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TorchslimError(f"tokens must be integer ids, got {t.dtype}")
    return t.to(torch.int64).cpu()


def _caller(model: Any) -> tuple[Callable[[torch.Tensor], Any], torch.device]:
    """How to run ``model`` on an id batch, and the device to put the ids on."""
    if isinstance(model, nn.Module):
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        if getattr(model, "config", None) is not None and callable(getattr(model, "generate", None)):
            return (lambda ids: model(input_ids=ids, use_cache=False)), device
        return model, device
    if callable(model):
        return model, torch.device("cpu")
    raise TorchslimError(f"model must be an nn.Module or a callable returning logits, got {type(model).__name__}")


def _logits(out: Any, batch: torch.Tensor) -> torch.Tensor:
    logits = getattr(out, "logits", out)
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if isinstance(logits, np.ndarray):
        logits = torch.from_numpy(logits)
    if not isinstance(logits, torch.Tensor):
        raise TorchslimError(f"the model returned {type(out).__name__}, not logits (a tensor, an array or .logits)")
    if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(batch.shape):
        raise TorchslimError(f"logits must be [batch, window, vocab] = {tuple(batch.shape)} x vocab, got {tuple(logits.shape)}")
    return logits


def _batches(spans: list[tuple[int, int, int]], batch_size: int) -> Iterator[list[tuple[int, int, int]]]:
    for i in range(0, len(spans), batch_size):
        yield spans[i : i + batch_size]


def perplexity(
    model: Any,
    tokens: Any,
    window: int = 1024,
    stride: int | None = None,
    batch_size: int = 1,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of ``model`` on the token stream ``tokens``, by the protocol in the module docstring.

    Args:
        model: a Hugging Face causal LM, an ``nn.Module`` returning logits, or a callable
            ``ids [batch, window] -> logits [batch, window, vocab]`` (tensor or array).
        tokens: a 1-D stream of token ids (tensor, array or list; ``[1, n]`` is accepted).
        window: tokens per window (2 to 131,072).
        stride: tokens between window starts (default ``window``: no overlap).
        batch_size: windows per forward pass (1 to 4,096).
        progress: show a progress bar on a terminal.

    Raises:
        TorchslimError: fewer tokens than one window, a bad window/stride/batch, an id
            outside the vocabulary, or output that is not ``[batch, window, vocab]`` logits.

    Example:
        >>> model = nn.Sequential(nn.Embedding(20, 8), nn.Linear(8, 20))
        >>> r = perplexity(model, torch.randint(20, (64,)), window=16, stride=8, progress=False)
        >>> r.windows, r.tokens_scored, r.ppl > 1
        (7, 63, True)
    """
    if not 1 <= batch_size <= MAX_BATCH:
        raise TorchslimError(f"batch_size must be in 1..{MAX_BATCH}, got {batch_size}")
    stream = _as_stream(tokens)
    spans = scored_spans(int(stream.numel()), window, stride)
    call, device = _caller(model)
    training = model.training if isinstance(model, nn.Module) else None
    if isinstance(model, nn.Module):
        model.eval()
    total, count = 0.0, 0
    began = time.perf_counter()
    try:
        with torch.no_grad(), progress_bar("perplexity", enabled=progress) as bar:  # not inference_mode: a layer may cache what it computes
            task = bar.add_task("perplexity", total=len(spans))
            for group in _batches(spans, batch_size):
                batch = torch.stack([stream[a:b] for a, _, b in group])
                logits = _logits(call(batch.to(device)), batch)
                nll, n = _score(logits, batch, group)
                total, count = total + nll, count + n
                bar.advance(task, len(group))
    finally:
        if training is not None and isinstance(model, nn.Module):
            model.train(training)
    seconds = time.perf_counter() - began
    mean = total / count
    return PerplexityResult(ppl=math.exp(mean), nll=mean, tokens_scored=count, windows=len(spans), seconds=round(seconds, 6))


def _score(logits: torch.Tensor, batch: torch.Tensor, group: list[tuple[int, int, int]]) -> tuple[float, int]:
    """Summed NLL (float64) and count of the scored positions of one batch of windows."""
    vocab = logits.shape[-1]
    if int(batch.max()) >= vocab or int(batch.min()) < 0:
        raise TorchslimError(f"token ids must be in 0..{vocab - 1} (the logits' vocabulary), got {int(batch.min())}..{int(batch.max())}")
    total, count = 0.0, 0
    for row, (start, first, stop) in enumerate(group):
        skip = first - start  # positions first..stop-1 are predicted by logits at first-1-start..stop-2-start
        pred = logits[row, skip - 1 : stop - start - 1].float()
        target = batch[row, skip:].to(pred.device)
        nll = F.cross_entropy(pred, target, reduction="none")
        total += float(nll.double().sum())
        count += int(target.numel())
    return total, count
