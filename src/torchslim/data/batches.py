"""Batches of any shape, from any iterable: what training, calibration and measurement read.

A batch is one of:

* a tensor (inputs only: enough for calibration, not for training or accuracy);
* an ``(inputs, labels)`` pair (a tuple or list of two; ``inputs`` a tensor, a tuple of
  tensors or a dict of tensors) or a one-item ``(inputs,)``;
* a dict of tensors (a tokenizer's output, a Hugging Face ``datasets`` row batch) whose
  ``labels`` (or ``label``) key holds the labels; every other key is a model input.

:func:`split_batch` turns each into ``(inputs, labels)`` (``labels`` is ``None`` when
there are none) and :class:`BatchLoader` serves any re-iterable source (a list, a torch
``DataLoader``, a generator function's result...) as such pairs, optionally moved to a
device.

Example:
    >>> inputs, labels = split_batch({"input_ids": torch.ones(2, 4), "labels": torch.tensor([0, 1])})
    >>> sorted(inputs), labels.tolist()
    (['input_ids'], [0, 1])
    >>> loader = BatchLoader([torch.zeros(3, 2), (torch.ones(1, 2), torch.tensor([1]))])
    >>> [(tuple(x.shape), y if y is None else y.tolist()) for x, y in loader]
    [((3, 2), None), ((1, 2), [1])]
    >>> len(loader), loader.num_samples
    (2, 4)
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from torchslim.errors import TorchslimError

#: the keys of a dict batch that hold its labels (the first one present is used)
LABEL_KEYS = ("labels", "label")
#: the forms a batch may take, for error messages
BATCH_FORMS = "a tensor, an (inputs, labels) pair or a dict of tensors with a 'labels' key"


def required_positional(model: Any) -> int:
    """How many positional arguments ``model``'s forward requires (those without a default).

    Example:
        >>> from torch import nn
        >>> required_positional(nn.Linear(2, 2)), required_positional(nn.Bilinear(2, 2, 1))
        (1, 2)
    """
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (AttributeError, TypeError, ValueError):  # no forward with a signature: one input
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in kinds and p.default is inspect.Parameter.empty for p in params)


def inputs_pair(batch: Any, model: Any) -> bool:
    """Is ``batch`` a pair of tensors that ``model`` takes as its two inputs (its forward requires two positional
    arguments or more), rather than an ``(x, y)`` pair?

    Example:
        >>> from torch import nn
        >>> pair = (torch.ones(1, 2), torch.zeros(1, 2))
        >>> inputs_pair(pair, nn.Bilinear(2, 2, 1)), inputs_pair(pair, nn.Linear(2, 2)), inputs_pair(pair, None)
        (True, False, False)
    """
    return (model is not None and isinstance(batch, (tuple, list)) and len(batch) == 2
            and all(isinstance(t, torch.Tensor) for t in batch) and required_positional(model) >= 2)


def split_batch(batch: Any, index: int = 0, model: Any = None) -> tuple[Any, torch.Tensor | None]:
    """``(inputs, labels)`` of one batch (see the module docstring); ``labels`` is ``None`` when absent.

    A pair of tensors for a ``model`` whose forward requires two positional arguments or more
    (``forward(self, src, tgt)``) is that model's input, without labels (with labels: ``((src, tgt), y)``).

    Raises:
        TorchslimError: the batch is none of the allowed forms (``index`` names it).

    Example:
        >>> split_batch(torch.zeros(2, 3))[1] is None
        True
        >>> split_batch("text", 4)
        Traceback (most recent call last):
            ...
        torchslim.errors.TorchslimError: batch 4 is a str; a batch must be a tensor, an (inputs, labels) pair or a dict of tensors with a 'labels' key
    """
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, Mapping):
        key = next((k for k in LABEL_KEYS if k in batch), None)
        inputs = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
        if not inputs:
            raise TorchslimError(f"batch {index} is a dict with no input tensors (keys: {', '.join(map(str, batch))})")
        labels = batch[key] if key is not None else None
        return inputs, _labels(labels, index)
    if isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
        if inputs_pair(batch, model):
            return tuple(batch), None
        return batch[0], _labels(batch[1] if len(batch) == 2 else None, index)
    raise TorchslimError(f"batch {index} is a {type(batch).__name__}; a batch must be {BATCH_FORMS}")


def _labels(labels: Any, index: int) -> torch.Tensor | None:
    if labels is None or isinstance(labels, torch.Tensor):
        return labels
    if isinstance(labels, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
        return torch.tensor(labels, dtype=torch.long)
    raise TorchslimError(f"batch {index}: labels must be a tensor (or a list of integers), got {type(labels).__name__}")


def map_tensors(obj: Any, fn: Any) -> Any:
    """``obj`` with ``fn`` applied to every tensor in it (in dicts, tuples and lists); anything else kept as it is.

    Example:
        >>> map_tensors({"a": torch.zeros(1), "b": [torch.ones(1), None]}, lambda t: t + 1)["b"]
        [tensor([2.]), None]
    """
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def move(obj: Any, device: torch.device | str | None) -> Any:
    """``obj`` with every tensor in it (in dicts, tuples and lists) moved to ``device`` (``None``: unchanged).

    Copies to an accelerator are asynchronous; copies to the CPU are not (the caller reads them at once).

    Example:
        >>> move({"a": torch.zeros(1), "b": [torch.ones(1)]}, "cpu")["b"][0].device.type
        'cpu'
    """
    if device is None:
        return obj
    return map_tensors(obj, lambda t: t.to(device, non_blocking=torch.device(device).type != "cpu"))


def batch_size_of(inputs: Any) -> int:
    """Samples in a batch's inputs: the first dimension of its first tensor (0 when it holds none).

    Example:
        >>> batch_size_of({"input_ids": torch.zeros(5, 7)})
        5
    """
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0]) if inputs.dim() else 1
    values = inputs.values() if isinstance(inputs, Mapping) else inputs if isinstance(inputs, (tuple, list)) else ()
    for v in values:
        n = batch_size_of(v)
        if n:
            return n
    return 0


class BatchLoader:
    """Any re-iterable source of batches, served as ``(inputs, labels)`` pairs (optionally on ``device``).

    ``len()`` is the source's ``len()`` when it has one, else the batches counted in one
    pass (done once); a one-shot iterator (a generator) is read into a list first, so every
    epoch sees the same batches. :meth:`set_epoch` reaches the source's ``set_epoch`` or its
    sampler's (a ``DistributedSampler``); its shuffling is the source's own.
    """

    def __init__(self, source: Iterable[Any], *, device: torch.device | str | None = None) -> None:
        kept: Iterable[Any] = source
        if isinstance(source, BatchLoader):
            kept = source.source
        elif iter(source) is source:  # a one-shot iterator: keep its batches
            kept = list(source)
        self.source: Iterable[Any] = kept
        self.device = device
        self._count: int | None = None
        self._samples: int | None = None

    def set_epoch(self, epoch: int) -> None:
        for owner in (self.source, getattr(self.source, "sampler", None), getattr(self.source, "batch_sampler", None)):
            fn = getattr(owner, "set_epoch", None)
            if callable(fn):
                fn(epoch)
                return

    def __iter__(self) -> Iterator[tuple[Any, torch.Tensor | None]]:
        for i, batch in enumerate(self.source):
            inputs, labels = split_batch(batch, i)
            yield move(inputs, self.device), move(labels, self.device)

    def _scan(self) -> None:
        count = samples = 0
        for i, batch in enumerate(self.source):
            count, samples = count + 1, samples + batch_size_of(split_batch(batch, i)[0])
        self._count, self._samples = count, samples

    def __len__(self) -> int:
        try:
            return len(self.source)  # type: ignore[arg-type]
        except TypeError:
            if self._count is None:
                self._scan()
            return int(self._count or 0)

    @property
    def num_samples(self) -> int:
        """Samples over one pass (counted once, by iterating)."""
        if self._samples is None:
            self._scan()
        return int(self._samples or 0)
