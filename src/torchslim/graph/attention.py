"""Attention modules whose heads torchslim prunes: how each kind stores its heads, and how to remove some.

Five kinds are recognised by their structure (module-level rules, no trace):

==============  ==========================================================================================
``torchslim``   ``q_proj``/``k_proj``/``v_proj``/``out_proj`` Linear layers and ``head_dim`` (the zoo's)
``hf``          ``q_proj``/``k_proj``/``v_proj``/``o_proj`` and ``head_dim`` (Llama, Mistral, Qwen, ViT in
                transformers 5): grouped-query attention when ``k_proj`` is narrower than ``q_proj``
``bert``        a module with a self-attention child (``query``/``key``/``value``, ``attention_head_size``)
                and ``output.dense`` (BERT, RoBERTa and their kin); the module's name is the unit
``gpt2``        ``c_attn`` (one ``Conv1D`` holding q, k and v side by side, its weight transposed) and
                ``c_proj`` (GPT-2)
``mha``         ``nn.MultiheadAttention`` (``in_proj_weight`` packs q, k and v; becomes a
                :class:`~torchslim.graph.mha.PrunedMultiheadAttention` once pruned)
==============  ==========================================================================================

A head is ``head_dim`` consecutive rows of the query (key, value) projection and
as many columns of the output projection; heads are removed whole, never inside
``head_dim`` (so rotary position embeddings, which rotate pairs inside a head, stay
right). Under grouped-query attention query head ``h`` reads key/value head
``h // (heads // kv_heads)``: the prunable *units* are whole groups (a key/value
head and its query heads); with a single key/value head (multi-query attention)
they are the query heads. The attributes each kind's forward reads
(``num_key_value_groups``, ``num_attention_heads``/``all_head_size``,
``num_heads``/``split_size``) are updated by :func:`torchslim.graph.slicing.slice_attention`.

Example:
    >>> mha = nn.MultiheadAttention(8, 4, batch_first=True)
    >>> spec = attention_spec(mha, "attn")
    >>> spec.kind, spec.heads, spec.head_dim, spec.units()[:2]
    ('mha', 4, 2, [[0], [1]])
    >>> spec.weights(mha)["k"].shape                       # the key rows of the packed in_proj_weight
    torch.Size([8, 8])
    >>> class GQA(nn.Module):                              # 4 query heads, 2 key/value heads
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.head_dim = 2
    ...         self.q_proj, self.o_proj = nn.Linear(8, 8), nn.Linear(8, 8)
    ...         self.k_proj, self.v_proj = nn.Linear(8, 4), nn.Linear(8, 4)
    >>> spec = attention_spec(GQA(), "attn")
    >>> spec.kind, spec.heads, spec.kv_heads, spec.units()
    ('hf', 4, 2, [[0, 1], [2, 3]])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.graph.surgery import is_conv1d

ROLES = ("q", "k", "v", "o")


def is_attention(module: nn.Module) -> bool:
    """An attention block torchslim can prune heads of: q/k/v/out Linear projections and ``head_dim``."""
    return all(isinstance(getattr(module, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj", "out_proj")) and isinstance(
        getattr(module, "head_dim", None), int
    )


@dataclass(frozen=True)
class Proj:
    """Where a projection's head features are: module ``path`` (relative to the attention module), its first
    feature ``offset``; ``transposed`` for a ``Conv1D`` (weight ``(in, out)``); ``param`` for a bare parameter."""

    path: str
    offset: int = 0
    transposed: bool = False
    param: bool = False


@dataclass
class AttentionSpec:
    """One attention module torchslim can prune heads of (see the module docstring)."""

    name: str
    kind: str
    heads: int
    kv_heads: int
    head_dim: int
    projections: dict[str, Proj]
    blocked: str | None = None

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.heads // self.kv_heads

    def units(self) -> list[list[int]]:
        """The query heads of each prunable unit (a head; a group under grouped-query attention)."""
        if 1 < self.kv_heads < self.heads:
            g = self.group_size
            return [list(range(u * g, (u + 1) * g)) for u in range(self.kv_heads)]
        return [[h] for h in range(self.heads)]

    def weights(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The q/k/v/o weights as ``(out, in)`` matrices, each cut to its own projection's features."""
        out: dict[str, torch.Tensor] = {}
        for role, proj in self.projections.items():
            w = _weight(module, proj)
            width = (self.kv_heads if role in ("k", "v") else self.heads) * self.head_dim
            out[role] = w[:, proj.offset : proj.offset + width] if role == "o" else w[proj.offset : proj.offset + width]
        return out


def _weight(module: nn.Module, proj: Proj) -> torch.Tensor:
    """The ``(out, in)`` weight behind ``proj`` (a packed in_proj_weight whole)."""
    owner: Any = module if proj.param else module.get_submodule(proj.path)
    w = (getattr(owner, proj.path) if proj.param else owner.weight).detach()
    return w.t() if proj.transposed else w


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _bert_child(module: Any) -> str | None:
    """The name of a BERT-style self-attention child of ``module`` whose output is ``module.output.dense``."""
    dense = getattr(getattr(module, "output", None), "dense", None)
    if not isinstance(dense, nn.Linear):
        return None
    child: Any
    for child_name, child in module.named_children():
        if all(isinstance(getattr(child, p, None), nn.Linear) for p in ("query", "key", "value")) and _int(
            getattr(child, "attention_head_size", None)
        ):
            if child.query.out_features == dense.in_features:
                return child_name
    return None


def _spec(name: str, kind: str, q: Any, k: Any, head_dim: int, projections: dict[str, Proj]) -> AttentionSpec | None:
    qw = q.nf if is_conv1d(q) else getattr(q, "out_features", 0)
    kw = k.nf if is_conv1d(k) else getattr(k, "out_features", 0)
    if head_dim <= 0 or qw % head_dim or kw % head_dim or not qw or not kw:
        return None
    heads, kv = qw // head_dim, kw // head_dim
    blocked = None if heads % kv == 0 else f"attention {name}: {heads} query heads do not split into {kv} key/value groups"
    return AttentionSpec(name, kind, heads, kv, head_dim, projections, blocked)


def _mha_spec(module: nn.MultiheadAttention, name: str) -> AttentionSpec:
    projections = {r: Proj(p, o, param=True) for r, p, o in _mha_projections(module)} | {"o": Proj("out_proj")}
    spec = AttentionSpec(name, "mha", module.num_heads, module.num_heads, module.head_dim, projections)
    if module.bias_k is not None or module.add_zero_attn:
        spec.blocked = f"nn.MultiheadAttention {name} has add_bias_kv/add_zero_attn (not supported)"
    return spec


def attention_spec(module: nn.Module, name: str) -> AttentionSpec | None:
    """The :class:`AttentionSpec` of ``module`` (called ``name``), or ``None`` when it is no attention torchslim knows."""
    if isinstance(module, nn.MultiheadAttention):
        return _mha_spec(module, name)
    m: Any = module  # the kinds below are recognised by their attributes
    head_dim = _int(getattr(m, "head_dim", None))
    if is_attention(m) and head_dim:
        spec = _spec(name, "torchslim", m.q_proj, m.k_proj, head_dim,
                     {r: Proj(p) for r, p in zip(ROLES, ("q_proj", "k_proj", "v_proj", "out_proj"))})
        if spec is not None and spec.kv_heads != spec.heads:
            spec.blocked = f"attention {name} has unequal q/k/v/out widths"
        return spec
    if head_dim and all(isinstance(getattr(m, p, None), nn.Linear) for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
        return _spec(name, "hf", m.q_proj, m.k_proj, head_dim,
                     {r: Proj(p) for r, p in zip(ROLES, ("q_proj", "k_proj", "v_proj", "o_proj"))})
    child = _bert_child(m)
    if child is not None:
        sa: Any = m.get_submodule(child)
        return _spec(name, "bert", sa.query, sa.key, int(sa.attention_head_size), {
            "q": Proj(f"{child}.query"), "k": Proj(f"{child}.key"), "v": Proj(f"{child}.value"), "o": Proj("output.dense")})
    split = _int(getattr(m, "split_size", None))
    if head_dim and split and is_conv1d(getattr(m, "c_attn", None)) and is_conv1d(getattr(m, "c_proj", None)):
        if getattr(m, "is_cross_attention", False) or m.c_attn.nf != 3 * split:
            return None
        projections = {"q": Proj("c_attn", 0, True), "k": Proj("c_attn", split, True), "v": Proj("c_attn", 2 * split, True),
                       "o": Proj("c_proj", 0, True)}
        return AttentionSpec(name, "gpt2", split // head_dim, split // head_dim, head_dim, projections)
    return None


def _mha_projections(module: nn.MultiheadAttention) -> list[tuple[str, str, int]]:
    if module.in_proj_weight is not None:
        inner = module.num_heads * module.head_dim
        return [("q", "in_proj_weight", 0), ("k", "in_proj_weight", inner), ("v", "in_proj_weight", 2 * inner)]
    return [("q", "q_proj_weight", 0), ("k", "k_proj_weight", 0), ("v", "v_proj_weight", 0)]


def attention_specs(model: nn.Module) -> list[AttentionSpec]:
    """Every attention module of ``model`` torchslim knows, in module order (a module inside another one
    already recognised is not looked at again)."""
    specs: list[AttentionSpec] = []
    for name, module in model.named_modules():
        if any(name.startswith(s.name + ".") for s in specs if s.name):
            continue
        spec = attention_spec(module, name)
        if spec is not None:
            specs.append(spec)
    return specs


def head_rows(heads: list[int], head_dim: int, offset: int = 0) -> list[int]:
    """The features of ``heads`` (``head_dim`` each) of a projection starting at ``offset``.

    Example:
        >>> head_rows([0, 2], 2)
        [0, 1, 4, 5]
    """
    return [offset + h * head_dim + i for h in heads for i in range(head_dim)]


def kept_kv_heads(spec: AttentionSpec, kept: list[int]) -> list[int]:
    """The key/value heads the kept query heads read; every kept group must keep as many query heads.

    Raises:
        TorchslimError: the kept query heads leave groups of different sizes.
    """
    if spec.kv_heads == spec.heads:
        return kept
    g = spec.group_size
    counts: dict[int, int] = {}
    for h in kept:
        counts[h // g] = counts.get(h // g, 0) + 1
    if len(set(counts.values())) > 1:
        raise TorchslimError(f"{spec.name}: kept query heads {kept} leave key/value groups of different sizes {counts}")
    return sorted(counts)


def check_kept(spec: AttentionSpec, kept: list[int]) -> list[int]:
    """``kept`` sorted, once checked: at least one head, each a head of ``spec``, none twice."""
    kept = sorted(kept)
    if not kept:
        raise TorchslimError(f"{spec.name}: cannot remove every head")
    if len(set(kept)) != len(kept) or kept[0] < 0 or kept[-1] >= spec.heads:
        raise TorchslimError(f"{spec.name}: kept heads {kept} out of range for {spec.heads} heads")
    return kept
