"""Top-1 accuracy and mean cross-entropy over any iterable of labelled batches.

A batch is an ``(inputs, labels)`` pair or a dict of tensors with a ``labels`` key
(see :mod:`torchslim.data.batches`); a torch ``DataLoader`` works as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.data.batches import BATCH_FORMS, move, split_batch
from torchslim.errors import TorchslimError
from torchslim.measure.macs import call_model, eval_mode


def logits_of(output: Any) -> torch.Tensor:
    """Extract the logits tensor from a model output.

    Accepts a tensor, an object with a ``logits`` attribute (Hugging Face outputs),
    a mapping with a ``"logits"`` key, or a tuple/list whose first item is the logits.

    Raises:
        TorchslimError: No logits tensor can be found.

    Example:
        >>> logits_of((torch.zeros(2, 3), "aux")).shape
        torch.Size([2, 3])
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TorchslimError(f"cannot find logits in a model output of type {type(output).__name__}")


def _model_device(model: nn.Module) -> torch.device | None:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


def _batches(model: nn.Module, loader: Iterable[Any]) -> Any:
    device = _model_device(model)
    for i, batch in enumerate(loader):
        if isinstance(batch, (tuple, list)) and len(batch) == 2 and batch[1] is not None and not isinstance(batch[1], torch.Tensor):
            raise TorchslimError(f"loader batch {i}: targets must be a tensor, got {type(batch[1]).__name__}")
        x, y = split_batch(batch, i) if isinstance(batch, (Mapping, tuple, list)) else (batch, None)
        if y is None:
            raise TorchslimError(f"loader batch {i} has no targets: accuracy needs labelled batches, {BATCH_FORMS.split(', ', 1)[1]}")
        x, y = move(x, device), move(y, device)
        logits = logits_of(call_model(model, x))
        if logits.dim() != 2 or logits.shape[0] != y.shape[0]:
            raise TorchslimError(
                f"loader batch {i}: expected logits of shape (batch, classes) matching {tuple(y.shape)} targets, "
                f"got {tuple(logits.shape)}"
            )
        yield logits, y


def evaluate_loss_and_accuracy(model: nn.Module, loader: Iterable[Any]) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy of ``model`` over ``loader``.

    The model runs in eval mode under ``torch.no_grad()``; its previous training
    mode (of every submodule) is restored afterwards. Inputs and targets are moved
    to the model's device.

    Args:
        model: A classifier returning logits ``(batch, classes)``.
        loader: Any iterable of ``(inputs, targets)`` batches (targets: class indices).

    Returns:
        ``(mean cross-entropy per sample, accuracy in [0, 1])``.

    Raises:
        TorchslimError: The loader is empty or yields malformed batches.

    Example:
        >>> model = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.eye(2)), model.bias.zero_()
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
        >>> test_loader = [(x[:2], torch.tensor([0, 1])), (x[2:], torch.tensor([1, 1]))]
        >>> loss, acc = evaluate_loss_and_accuracy(model, test_loader)
        >>> round(loss, 4), acc
        (0.4971, 0.75)
    """
    total_loss = 0.0
    correct = 0
    seen = 0
    with eval_mode(model), torch.no_grad():
        for logits, y in _batches(model, loader):
            total_loss += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
            seen += int(y.shape[0])
    if seen == 0:
        raise TorchslimError("cannot evaluate on an empty loader")
    return total_loss / seen, correct / seen


def evaluate_accuracy(model: nn.Module, loader: Iterable[Any]) -> float:
    """Top-1 accuracy (fraction in ``[0, 1]``) of ``model`` over ``loader``.

    The model runs in eval mode under ``torch.no_grad()``; its previous training
    mode is restored afterwards.

    Args:
        model: A classifier returning logits ``(batch, classes)``.
        loader: Any iterable of ``(inputs, targets)`` batches.

    Returns:
        Correct predictions divided by samples.

    Raises:
        TorchslimError: The loader is empty or yields malformed batches.

    Example:
        >>> model = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.eye(2)), model.bias.zero_()
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])   # predicts 0, 1, 0, 1
        >>> y = torch.tensor([0, 1, 1, 1])
        >>> evaluate_accuracy(model, [(x, y)])
        0.75
    """
    correct = 0
    seen = 0
    with eval_mode(model), torch.no_grad():
        for logits, y in _batches(model, loader):
            correct += int((logits.argmax(dim=1) == y).sum())
            seen += int(y.shape[0])
    if seen == 0:
        raise TorchslimError("cannot evaluate on an empty loader")
    return correct / seen
