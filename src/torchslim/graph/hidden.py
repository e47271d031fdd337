"""The model-wide hidden width of a Hugging Face encoder (BERT/RoBERTa-style, ViT) as one channel group.

torch.fx cannot trace these models, so the hidden width (``config.hidden_size``, the residual
stream) is found by a module-level rule instead, on top of the heads and feed-forward blocks of
:mod:`torchslim.graph.blocks`. Channel ``c`` of the stream is, everywhere at once:

- column ``c`` of every embedding table of width ``hidden_size`` (word, position, token type),
  of every parameter the model holds directly with that last dimension (ViT's ``cls_token`` and
  ``position_embeddings``) and output ``c`` of a patch projection;
- input column ``c`` of every query/key/value projection and output row ``c`` of every attention
  output projection (heads keep their ``head_dim``: the width inside the heads does not change);
- input column ``c`` of every feed-forward block's projection(s) up and output row ``c`` of its
  projection down;
- feature ``c`` of every LayerNorm of that width;
- input column ``c`` of every other layer that reads the stream itself (BERT's ``pooler.dense``,
  ViT's ``classifier``): a layer of input width ``hidden_size`` is one when noise added to features
  ``C`` of the last LayerNorm's output reaches only features ``C`` of its input (on the example input).

Only the attention kinds ``hf`` and ``bert`` of :mod:`torchslim.graph.attention` (separate
projections, self-attention) and ``nn.LayerNorm`` are followed: a model with another norm over the
hidden width (Llama's RMSNorm) is left to the other rules. The group is frozen when a model output
has the hidden width (``BertModel``'s ``last_hidden_state``, a sentence embedding pooled from the
hidden state: that width is the model's interface; a head of as many outputs freezes it too).

A LayerNorm over fewer channels is *not* the same function as the LayerNorm over all of them with
the removed ones zeroed (its mean and variance are taken over the channels kept): pruning the hidden
width is exact up to that renormalisation, as in Torch-Pruning. :func:`sync_hidden` writes the new
width into ``config.hidden_size``.

Example:
    >>> import transformers
    >>> cfg = transformers.ViTConfig(image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=1,
    ...                              num_attention_heads=2, intermediate_size=32, num_labels=3)
    >>> model = transformers.ViTForImageClassification(cfg).eval()
    >>> width, members, why = hidden_members(model, torch.randn(1, 3, 8, 8), [])
    >>> width, why, sorted({m.role for m in members})
    (16, None, ['in', 'ln', 'out', 'param'])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from torchslim.graph.attention import attention_specs
from torchslim.graph.spaces import Member
from torchslim.graph.surgery import get_module, linear_width
from torchslim.measure.macs import call_model, eval_mode

#: modules whose own parameters are sliced by their module's rule, never as parameters the model holds directly
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.LayerNorm, nn.Embedding, nn.MultiheadAttention, nn.RNNBase)


def _qual(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _local(prefix: str, name: str) -> str:
    """``name`` (of the model) relative to the module called ``prefix``."""
    return name[len(prefix) + 1 :] if prefix else name


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    values = out.values() if isinstance(out, Mapping) else out if isinstance(out, (tuple, list)) else []
    return [t for v in values for t in _tensors(v)]


def hf_configs(model: nn.Module) -> list[tuple[str, nn.Module, Any]]:
    """``(name, module, config)`` of the outermost modules holding a Hugging Face config, one per config object."""
    seen: set[int] = set()
    out: list[tuple[str, nn.Module, Any]] = []
    for name, module in model.named_modules():
        cfg = module.__dict__.get("config")
        if cfg is None or not hasattr(cfg, "model_type") or not hasattr(cfg, "to_dict") or id(cfg) in seen:
            continue
        seen.add(id(cfg))
        out.append((name, module, cfg))
    return out


def _stream(root: nn.Module, prefix: str, width: int, blocks: list[Any]) -> list[Member] | None:
    """The members of the stream inside ``root`` (``None``: not a model this rule knows)."""
    specs = attention_specs(root)
    if not specs or any(s.kind not in ("hf", "bert") or s.blocked for s in specs):
        return None
    out: list[Member] = []  # module order first: the embeddings lead (the group is named after them)
    for name, m in root.named_modules():
        if isinstance(m, nn.LayerNorm) and tuple(m.normalized_shape) == (width,):
            out.append(Member(_qual(prefix, name), "ln"))
        elif isinstance(m, nn.Embedding) and m.embedding_dim == width:
            out.append(Member(_qual(prefix, name), "emb"))
        elif isinstance(m, (nn.Conv2d, nn.Conv1d)) and m.out_channels == width and m.groups == 1:
            out.append(Member(_qual(prefix, name), "out"))
        elif not isinstance(m, _LAYERS):
            for pname, p in m._parameters.items():
                if p is not None and p.dim() == 1 and p.shape[0] == width:  # a norm the rule does not know (RMSNorm)
                    return None
                if p is not None and p.dim() >= 2 and p.shape[-1] == width:
                    out.append(Member(_qual(prefix, name), "param", param=pname))
    for s in specs:
        for role, proj in s.projections.items():
            mod = root.get_submodule(_qual(s.name, proj.path))
            if proj.param or not isinstance(mod, nn.Linear):
                return None
            if (mod.out_features if role == "o" else mod.in_features) != width:  # stages of other widths (Swin)
                return None
            out.append(Member(_qual(prefix, _qual(s.name, proj.path)), "out" if role == "o" else "in"))
    for b in blocks:
        if b.name == prefix or b.name.startswith(prefix + ".") or not prefix:
            out += [Member(up, "in") for up in b.ups] + [Member(b.down, "out")]
    return out


def _reads(model: nn.Module, x: Any, source: str, reader: str, width: int) -> bool | None:
    """Does ``reader`` read the output of ``source`` feature by feature? (noise on some features of
    ``source``'s output reaches only those of ``reader``'s input; ``None``: it does not reach it at all)."""
    cols = list(range(0, width, 3))
    seen: list[torch.Tensor] = []

    def capture(_m: nn.Module, args: tuple[Any, ...]) -> None:
        seen.append(args[0].detach().clone())

    def perturb(_m: nn.Module, _a: Any, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[..., cols] += 10.0 * (1.0 + out.detach().abs().max())
        return out

    hooks = [get_module(model, reader).register_forward_pre_hook(capture)]
    with torch.no_grad(), eval_mode(model):
        try:
            call_model(model, x)
            hooks.append(get_module(model, source).register_forward_hook(perturb))
            call_model(model, x)
        finally:
            for h in hooks:
                h.remove()
    if len(seen) < 2 or seen[0].shape != seen[1].shape or seen[0].shape[-1] != width:
        return None
    diff = (seen[1] - seen[0]).abs().reshape(-1, width).amax(0)
    changed = set(torch.nonzero(diff > 1e-4 * (1.0 + float(seen[0].abs().max()))).flatten().tolist())
    return None if not changed else changed <= set(cols)


def hidden_members(model: nn.Module, x: Any, blocks: list[Any]) -> tuple[int, list[Member], str | None]:
    """The hidden width of ``model``, the members of its group and why it is frozen (``None``: prunable);
    no members when the model is not one the rule knows. ``blocks``: its feed-forward blocks
    (:func:`torchslim.graph.blocks.ffn_blocks`)."""
    found = [(p, r, c) for p, r, c in hf_configs(model) if isinstance(getattr(c, "hidden_size", None), int)]
    if len(found) != 1:
        return 0, [], None
    prefix, root, cfg = found[0]
    width = int(cfg.hidden_size)
    members = _stream(root, prefix, width, blocks)
    if members is None:
        return width, [], None
    taken = {m.module for m in members}
    norms = [m.module for m in members if m.role == "ln"]
    for name, m in model.named_modules():
        if name not in taken and linear_width(m, "in") == width and norms:
            if _reads(model, x, norms[-1], name, width):  # else it reads something another layer made of the stream
                members.append(Member(name, "in"))
    with torch.no_grad(), eval_mode(model):
        outs = _tensors(call_model(model, x))
    if any(t.dim() >= 2 and t.shape[-1] == width for t in outs):  # the hidden state, or a pooling of it
        return width, members, "the hidden state reaches the model output"
    return width, members, None


def sync_hidden(root: nn.Module, cfg: Any) -> None:
    """``config.hidden_size`` = the width of ``root``'s LayerNorms when they all have one and it differs.

    The head size stays: ``config.head_dim`` is written where the attention reads it (``hf`` kind,
    ViT/Llama: a stock config again); BERT derives it from ``hidden_size / num_attention_heads``, so
    the width its layers are built with is kept as ``config.hidden_size_built``
    (:func:`torchslim.prune.hf.from_pretrained` rebuilds such a model).
    """
    widths = {m.normalized_shape[0] for m in root.modules() if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1}
    old = getattr(cfg, "hidden_size", None)
    if len(widths) != 1 or not isinstance(old, int) or old in widths:
        return
    specs = attention_specs(root)
    if specs and all(s.kind == "hf" for s in specs) and getattr(cfg, "head_dim", None) is None:
        cfg.head_dim = specs[0].head_dim
    if any(s.kind == "bert" for s in specs) and getattr(cfg, "hidden_size_built", None) is None:
        cfg.hidden_size_built = old
    cfg.hidden_size = widths.pop()
