"""Build students from a teacher: shallower (keep some layers, initialised from the teacher's) or thinner.

Example:
    A tiny 6-layer BERT stands in for MiniLM (same layer stack, ``encoder.layer``):

    >>> import transformers
    >>> teacher = transformers.BertModel(transformers.BertConfig(
    ...     vocab_size=100, hidden_size=32, num_hidden_layers=6, num_attention_heads=4, intermediate_size=64))
    >>> student = keep_layers(teacher, "every_other")   # 6 layers -> layers 0, 2, 4
    >>> len(student.encoder.layer), len(teacher.encoder.layer)
    (3, 6)
    >>> thin = thinner("resnet_cifar", 0.7, depth=20, in_channels=1)
    >>> thin.conv1.out_channels                         # 16 * 0.7, rounded
    11
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any, Literal, cast

from torch import nn

from torchslim.errors import TorchslimError
from torchslim.graph import get_module, replace_module
from torchslim.zoo import MODELS, create_model

#: where stacks of transformer layers live in common architectures (BERT, GPT-2, Llama, DistilBERT...)
LAYER_STACKS: tuple[str, ...] = ("encoder.layer", "transformer.layer", "transformer.h", "model.layers", "layers", "h", "encoder.layers")


def find_layer_stack(model: nn.Module) -> str:
    """Qualified name of the model's stack of repeated layers (an ``nn.ModuleList``/``nn.Sequential``).

    Raises:
        TorchslimError: none of :data:`LAYER_STACKS` is found (name it with ``stack=``).

    Example:
        >>> import transformers
        >>> bert = transformers.BertModel(transformers.BertConfig(
        ...     vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64))
        >>> find_layer_stack(bert)                      # MiniLM (a BERT) gives the same
        'encoder.layer'
    """
    names = dict(model.named_modules())
    for suffix in LAYER_STACKS:
        found = [n for n, m in names.items() if (n == suffix or n.endswith("." + suffix)) and isinstance(m, (nn.ModuleList, nn.Sequential))]
        if found:
            return min(found, key=len)
    raise TorchslimError(f"no layer stack found (looked for {', '.join(LAYER_STACKS)}); pass stack='qualified.name'")


def keep_layers(
    teacher: nn.Module,
    keep: Sequence[int] | Literal["every_other"] = "every_other",
    *,
    stack: str | None = None,
) -> nn.Module:
    """A shallower copy of ``teacher`` keeping only layers ``keep`` of its layer stack, with the teacher's weights.

    The teacher is not modified. ``every_other`` keeps layers 0, 2, 4...
    (DistilBERT's initialisation). A Hugging Face ``config.num_hidden_layers``
    found on any submodule is updated.

    Raises:
        TorchslimError: an index is out of range, repeated, or nothing is kept.

    Example:
        >>> import transformers
        >>> teacher = transformers.BertModel(transformers.BertConfig(
        ...     vocab_size=100, hidden_size=32, num_hidden_layers=6, num_attention_heads=4, intermediate_size=64))
        >>> student = keep_layers(teacher, [0, 2, 4])
        >>> student.config.num_hidden_layers, teacher.config.num_hidden_layers
        (3, 6)
    """
    name = stack or find_layer_stack(teacher)
    layers = get_module(teacher, name)
    if not isinstance(layers, (nn.ModuleList, nn.Sequential)):
        raise TorchslimError(f"{name!r} is a {type(layers).__name__}, not a ModuleList/Sequential of layers")
    n = len(layers)
    idx = list(range(0, n, 2)) if keep == "every_other" else [int(i) for i in keep]
    if not idx or len(set(idx)) != len(idx) or any(not 0 <= i < n for i in idx):
        raise TorchslimError(f"keep must be distinct layer indices in [0, {n}), got {idx}")
    if not name:
        raise TorchslimError("the layer stack cannot be the model itself; wrap it or name a sub-stack")
    student = copy.deepcopy(teacher)
    old = cast("nn.ModuleList | nn.Sequential", get_module(student, name))  # the copy of the checked stack
    kept = [old[i] for i in idx]
    replace_module(student, name, nn.ModuleList(kept) if isinstance(old, nn.ModuleList) else nn.Sequential(*kept))
    for module in student.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "num_hidden_layers"):
            cfg.num_hidden_layers = len(idx)
    for i, layer in enumerate(kept):  # HF attention layers carry their index (caches); renumber
        for m in layer.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                cast(Any, m).layer_idx = i
    return student


def thinner(name: str, factor: float, **kwargs: Any) -> nn.Module:
    """A thinner zoo model: widths multiplied by ``factor`` (``width`` of ``resnet_cifar``, ``hidden`` of ``mlp``).

    MACs of convolutional and hidden-to-hidden layers scale roughly with
    ``factor²``: ``factor ≈ 0.7`` halves them.

    Raises:
        TorchslimError: the zoo model has no width argument, or ``factor`` is not in (0, 1].

    Example:
        >>> thinner("mlp", 0.5, hidden=[1200, 1200]).fc1.out_features
        600
    """
    if not 0 < factor <= 1:
        raise TorchslimError(f"factor must be in (0, 1], got {factor}")
    params = inspect.signature(MODELS.get(name)).parameters
    args = dict(kwargs)
    if "width" in params:
        args["width"] = max(1, round(int(args.get("width", params["width"].default)) * factor))
    elif "hidden" in params:
        args["hidden"] = [max(1, round(int(h) * factor)) for h in args.get("hidden", params["hidden"].default)]
    else:
        raise TorchslimError(f"zoo model {name!r} has no width argument ('width' or 'hidden') to make it thinner")
    return create_model(name, **args)
