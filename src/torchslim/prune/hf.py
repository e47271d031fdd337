"""Hugging Face models after structured pruning: rebuild them from a saved directory.

A Hugging Face config can say how many heads every layer has only where it has
a ``head_dim`` (Llama, ViT): a uniform head pruning of such a model is a stock
config again and ``from_pretrained`` loads it as it is. BERT and GPT-2 derive the
head size from ``hidden_size / num_attention_heads``, so their pruned heads are
written, as transformers 4 did, into ``config.pruned_heads`` (``{layer: [heads
removed]}``, heads numbered as the layer was built; :func:`torchslim.graph.blocks.sync_config`).
transformers 5 no longer applies that field when it builds a model, and its
``from_pretrained`` refuses the narrower weights: :func:`from_pretrained` builds
the model from its config, removes the heads the config names
(:func:`restore_pruned_heads`) and loads the saved weights.

Example:
    >>> import tempfile, transformers
    >>> config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
    ...                                  num_attention_heads=4, intermediate_size=32)
    >>> model = transformers.BertModel(config).eval()
    >>> ids = torch.tensor([[1, 5, 7, 2]])
    >>> _ = ts.prune_(model, {"granularity": "head", "sparsity": 0.5, "uniform": True}, example_input={"input_ids": ids})
    >>> model.config.pruned_heads                                       # doctest: +SKIP
    {0: [1, 3], 1: [0, 2]}
    >>> path = tempfile.mkdtemp()
    >>> model.save_pretrained(path)
    >>> loaded = from_pretrained(transformers.BertModel, path)
    >>> torch.equal(loaded(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state)
    True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.graph.attention import attention_specs
from torchslim.graph.blocks import hf_configs
from torchslim.graph.slicing import slice_attention, slice_module
from torchslim.graph.surgery import is_conv1d

__all__ = ["from_pretrained", "restore_pruned_heads"]


def restore_pruned_heads(model: nn.Module) -> None:
    """Remove from a freshly built Hugging Face ``model`` the heads its ``config.pruned_heads`` names, in place.

    Layers are the model's attention modules of the ``hf``/``bert``/``gpt2`` kinds
    (:mod:`torchslim.graph.attention`) in module order, keys as integers or strings.

    Raises:
        TorchslimError: a layer or head the config names does not exist.
    """
    for prefix, root, cfg in hf_configs(model):
        pruned = getattr(cfg, "pruned_heads", None) or {}
        specs = [s for s in attention_specs(root) if s.kind in ("hf", "bert", "gpt2")]
        for layer, heads in sorted(pruned.items(), key=lambda kv: int(kv[0])):
            i = int(layer)
            if not 0 <= i < len(specs):
                raise TorchslimError(f"config.pruned_heads names layer {layer}; the model has {len(specs)} attention layers")
            spec = specs[i]
            module = root.get_submodule(spec.name)
            gone = set(int(h) for h in heads) - set(getattr(module, "pruned_heads", None) or set())
            if not gone <= set(range(spec.heads)):
                raise TorchslimError(f"config.pruned_heads[{layer}] = {heads}: {spec.name} has {spec.heads} heads")
            if gone:
                name = f"{prefix}.{spec.name}" if prefix else spec.name
                slice_attention(module, name, [h for h in range(spec.heads) if h not in gone])


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _per_group(groups: int, per: int, keep: int) -> list[int]:
    """The first ``keep`` positions of each of ``groups`` groups of ``per``."""
    return [g * per + j for g in range(groups) for j in range(keep)]


def _fit_widths(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Narrow every layer of ``model`` to the shape its saved weight has (first channels kept, as many in every
    group of a grouped convolution or a GroupNorm: the saved weights replace them all), and every parameter a
    module holds directly (a layer scale) to its saved shape."""
    for name, m in model.named_modules():
        saved = state.get(f"{name}.weight")
        if saved is None or getattr(m, "weight", None) is None or saved.shape == m.weight.shape:
            continue
        dims = [list(range(n)) if n != c else None for n, c in zip(saved.shape, m.weight.shape)]
        if isinstance(m, nn.Linear):
            slice_module(m, name, out=dims[0], inp=dims[1])
        elif is_conv1d(m):  # GPT-2's Conv1D: weight (in, out)
            slice_module(m, name, out=dims[1], inp=dims[0])
        elif isinstance(m, (nn.LayerNorm, nn.Embedding)):
            slice_module(m, name, out=dims[-1])
        elif isinstance(m, _NORMS):
            slice_module(m, name, out=dims[0])
        elif isinstance(m, nn.GroupNorm):
            slice_module(m, name, out=_per_group(m.num_groups, m.num_channels // m.num_groups, saved.shape[0] // m.num_groups))
        elif isinstance(m, _CONVS):
            g = int(m.groups)
            if g > 1 and g == m.in_channels == m.out_channels:  # depthwise: its channels are its groups
                slice_module(m, name, out=dims[0])
                continue
            out = None if dims[0] is None else _per_group(g, m.out_channels // g, saved.shape[0] // g)
            inp = None if dims[1] is None else _per_group(g, m.in_channels // g, saved.shape[1])
            slice_module(m, name, out=out, inp=inp)
    layers = (nn.Linear, nn.LayerNorm, nn.Embedding, nn.GroupNorm, *_NORMS, *_CONVS)
    for name, m in model.named_modules():
        if isinstance(m, layers) or is_conv1d(m):
            continue
        for pname, p in list(m._parameters.items()):
            saved = state.get(f"{name}.{pname}" if name else pname)
            if p is not None and saved is not None and saved.dim() == p.dim() and saved.shape != p.shape:
                narrowed = p.detach()[tuple(slice(0, n) for n in saved.shape)].clone()
                setattr(m, pname, nn.Parameter(narrowed, requires_grad=p.requires_grad))


def _files(path: Path) -> list[str]:
    """The safetensors files of a saved directory (none: it has none)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    return ["model.safetensors"] if (path / "model.safetensors").is_file() else []


def _fits(model_class: Any, config: Any, path: Path) -> bool:
    """Does ``model_class(config)`` (built on the meta device) have every saved weight's shape? Read from the
    safetensors headers (no tensor loaded); a directory without safetensors files is taken as fitting
    (``pytorch_model.bin``: ``from_pretrained`` reads it as it always has)."""
    files = _files(path)
    if not files:
        return True
    with torch.device("meta"):
        own = model_class(config).state_dict()
    for name in files:
        with safe_open(str(path / name), framework="pt") as f:
            for key in f.keys():
                if key in own and tuple(own[key].shape) != tuple(f.get_slice(key).get_shape()):
                    return False
    return True


def _state(path: Path) -> dict[str, torch.Tensor]:
    files = _files(path)
    if not files:
        raise TorchslimError(f"{path}: no model.safetensors (or its index) to load")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(path / name)))
    return state


def from_pretrained(model_class: Any, path: str | Path) -> nn.Module:
    """``model_class.from_pretrained(path)``, also for a model saved with heads pruned (``config.pruned_heads``),
    for BERT its hidden width pruned (``config.hidden_size_built``: the width its attention was built with,
    since BERT derives the head size from ``hidden_size``; :func:`torchslim.graph.hidden.sync_hidden`), and for
    layers pruned to widths no config field can say (a ResNet's or ConvNeXt's channels, layer by layer): the
    model is built from its config and each layer narrowed to its saved weight's shape before loading.

    Args:
        model_class: a Hugging Face model class (``transformers.BertForSequenceClassification``, ...).
        path: the directory ``save_pretrained`` wrote.

    Returns:
        The model in eval mode.

    Raises:
        TorchslimError: the saved weights do not fit the rebuilt model (named keys).
    """
    path = Path(path)
    config = model_class.config_class.from_pretrained(str(path))
    built = getattr(config, "hidden_size_built", None)
    if not getattr(config, "pruned_heads", None) and built is None and _fits(model_class, config, path):
        return model_class.from_pretrained(str(path)).eval()
    state = _state(path)
    width = getattr(config, "hidden_size", None)
    if built is not None:  # BERT with its hidden width pruned: built as it was, then narrowed to the saved shapes
        config.hidden_size = built
    model = model_class(config)
    if built is not None:
        config.hidden_size = width
    restore_pruned_heads(model)
    _fit_widths(model, state)  # channels pruned to widths no config field says (a CNN's layers, one by one)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise TorchslimError(f"{path}: the saved weights do not fit the rebuilt model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    if tied and hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()
