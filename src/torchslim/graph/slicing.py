"""Physically shrink modules: keep given indices of their output/input dimension or heads.

A *structure step* is JSON data, so what structured pruning did can be saved
with a checkpoint and replayed on a fresh instance of the architecture::

    {"modules": {"layer1.0.conv1": {"out": [0, 2, 5, ...]}, "layer1.0.conv2": {"in": [0, 2, 5, ...]}},
     "heads": {"blocks.0.attn": [0, 2]},
     "params": {"cls_token": [0, 2, 5, ...]},
     "blocks": ["layer2.1"]}

Index lists are the positions *kept*, relative to the module as it is when the
step is applied (an ``nn.MultiheadAttention`` may also have ``"inner"``: the features
kept inside its heads, the same ones in every head; ``"params"`` are parameters the model
uses directly, such as a class token or positions, cut along their last dimension). Constraint buffers (pruning masks ``<param>_mask``) are sliced with their parameter.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.graph import constraints, provenance
from torchslim.graph.attention import AttentionSpec, attention_spec, check_kept, head_rows, is_attention, kept_kv_heads
from torchslim.graph.blocks import sync_config
from torchslim.graph.mha import to_pruned
from torchslim.graph.surgery import get_module, is_conv1d, replace_module

#: layers whose parameters are never per-head tables (a projection, an embedding, a norm)
_LAYERS = (nn.Linear, nn.Embedding, nn.LayerNorm, nn.GroupNorm, nn.Conv1d, nn.Conv2d, nn.MultiheadAttention)

#: the provenance kind of structure steps
STRUCTURE = "structure"


def _slice_param(module: nn.Module, pname: str, dim: int, idx: torch.Tensor) -> None:
    p = getattr(module, pname, None)
    if p is None:
        return
    new = nn.Parameter(p.detach().index_select(dim, idx.to(p.device)).clone(), requires_grad=p.requires_grad)
    setattr(module, pname, new)
    for c in constraints.ordered():  # a pruning mask (or other per-parameter state) is sliced with its parameter
        buf = module._buffers.get(pname + c.suffix)
        if buf is not None and buf.shape == p.shape:
            module._buffers[pname + c.suffix] = buf.index_select(dim, idx.to(buf.device)).clone()


def _slice_buffer(module: nn.Module, bname: str, idx: torch.Tensor) -> None:
    b = module._buffers.get(bname)
    if b is not None:
        module._buffers[bname] = b.index_select(0, idx.to(b.device)).clone()


def _idx(kept: list[int], size: int, what: str) -> torch.Tensor:
    if not kept:
        raise TorchslimError(f"{what}: cannot remove every channel")
    if len(set(kept)) != len(kept) or min(kept) < 0 or max(kept) >= size:
        raise TorchslimError(f"{what}: kept indices out of range for size {size}")
    return torch.tensor(sorted(kept), dtype=torch.long)


def _slice_conv(module: nn.Conv1d | nn.Conv2d | nn.Conv3d, name: str, out: list[int] | None, inp: list[int] | None) -> None:
    """A convolution; a grouped one keeps its groups (every group keeps as many channels, the same input positions)."""
    groups = int(module.groups)
    depthwise = groups == module.in_channels == module.out_channels and groups > 1
    if out is not None:
        idx = _idx(out, module.out_channels, name)
        if groups > 1 and not depthwise:
            _same_in_every_group(idx, module.out_channels // groups, groups, name, "output")
        _slice_param(module, "weight", 0, idx)
        _slice_param(module, "bias", 0, idx)
        module.out_channels = len(idx)
        if depthwise:
            module.in_channels = module.groups = len(idx)
    if inp is not None:
        if depthwise:
            raise TorchslimError(f"{name}: a depthwise convolution is sliced through its output channels only")
        idx = _idx(inp, module.in_channels, name)
        if groups > 1:
            idx = _same_in_every_group(idx, module.in_channels // groups, groups, name, "input")
        _slice_param(module, "weight", 1, idx)
        module.in_channels = len(idx) * groups if groups > 1 else len(idx)


def _slice_conv1d(module: Any, name: str, out: list[int] | None, inp: list[int] | None) -> None:
    """A Hugging Face ``Conv1D``: its weight is ``(in, out)``, its widths ``nx`` (in) and ``nf`` (out)."""
    if out is not None:
        idx = _idx(out, int(module.nf), name)
        _slice_param(module, "weight", 1, idx)
        _slice_param(module, "bias", 0, idx)
        module.nf = len(idx)
    if inp is not None:
        idx = _idx(inp, int(module.nx), name)
        _slice_param(module, "weight", 0, idx)
        module.nx = len(idx)


def _same_in_every_group(idx: torch.Tensor, per_group: int, groups: int, name: str, side: str) -> torch.Tensor:
    """The positions kept inside one group, when every group keeps the same ones (outputs: as many)."""
    local = [sorted(int(i) - g * per_group for i in idx if g * per_group <= int(i) < (g + 1) * per_group) for g in range(groups)]
    if side == "output" and len({len(part) for part in local}) > 1:
        raise TorchslimError(f"{name}: every one of the {groups} groups must keep as many output channels")
    if side == "input" and any(part != local[0] for part in local):
        raise TorchslimError(f"{name}: every one of the {groups} groups (heads) must keep the same positions")
    return torch.tensor(local[0], dtype=torch.long) if side == "input" else idx


def slice_module(
    module: nn.Module, name: str, out: list[int] | None = None, inp: list[int] | None = None, inner: list[int] | None = None
) -> None:
    """Keep ``out`` positions of the output dimension and ``inp`` of the input dimension of ``module``
    (``inner``: the features inside the heads of an ``nn.MultiheadAttention``, as many in every head)."""
    if inner is not None:
        if not isinstance(module, nn.MultiheadAttention):
            raise TorchslimError(f"{name}: only an nn.MultiheadAttention has inner (head) features to slice, not a {type(module).__name__}")
        _slice_mha_inner(module, name, inner)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        _slice_conv(module, name, out, inp)
    elif isinstance(module, nn.Linear):
        if out is not None:
            idx = _idx(out, module.out_features, name)
            _slice_param(module, "weight", 0, idx)
            _slice_param(module, "bias", 0, idx)
            module.out_features = len(idx)
        if inp is not None:
            idx = _idx(inp, module.in_features, name)
            _slice_param(module, "weight", 1, idx)
            module.in_features = len(idx)
    elif is_conv1d(module):  # Hugging Face Conv1D: weight (in, out)
        _slice_conv1d(module, name, out, inp)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        if out is not None:
            idx = _idx(out, module.num_features, name)
            _slice_param(module, "weight", 0, idx)
            _slice_param(module, "bias", 0, idx)
            _slice_buffer(module, "running_mean", idx)
            _slice_buffer(module, "running_var", idx)
            module.num_features = len(idx)
    elif isinstance(module, nn.GroupNorm):  # as many channels kept in every group
        if out is not None:
            idx = _same_in_every_group(_idx(out, module.num_channels, name), module.num_channels // module.num_groups,
                                       module.num_groups, name, "output")
            _slice_param(module, "weight", 0, idx)
            _slice_param(module, "bias", 0, idx)
            module.num_channels = len(idx)
    elif isinstance(module, nn.LayerNorm):
        if out is not None:
            idx = _idx(out, module.normalized_shape[0], name)
            _slice_param(module, "weight", 0, idx)
            _slice_param(module, "bias", 0, idx)
            module.normalized_shape = (len(idx),)
    elif isinstance(module, nn.Embedding):  # its width: the columns of the table
        if out is not None:
            idx = _idx(out, module.embedding_dim, name)
            _slice_param(module, "weight", 1, idx)
            module.embedding_dim = len(idx)
    elif isinstance(module, nn.MultiheadAttention):
        _slice_mha_width(module, name, out, inp)
    elif is_attention(module):
        if inp is not None:
            for proj in ("q_proj", "k_proj", "v_proj"):
                slice_module(module.get_submodule(proj), f"{name}.{proj}", inp=inp)
        if out is not None:
            slice_module(module.get_submodule("out_proj"), f"{name}.out_proj", out=out)
    else:
        raise TorchslimError(f"{name}: cannot slice a {type(module).__name__}")


def slice_heads(module: nn.Module, name: str, kept_heads: list[int]) -> None:
    """Keep heads ``kept_heads`` of an attention module (:mod:`torchslim.graph.attention` says which kinds)."""
    slice_attention(module, name, kept_heads)


def slice_attention(module: nn.Module, name: str, kept: list[int]) -> None:
    """Keep query heads ``kept`` of attention ``module`` (and the key/value heads they read), in place.

    The projections lose the heads' rows (columns of the output projection) and the
    attributes the module's forward reads are updated; an ``nn.MultiheadAttention``
    becomes a :class:`~torchslim.graph.mha.PrunedMultiheadAttention`. Hugging Face
    modules (``hf``, ``bert``, ``gpt2``) remember the heads removed, as indices of the
    heads they were built with, in ``module.pruned_heads``.

    Example:
        >>> mha = nn.MultiheadAttention(8, 4, batch_first=True)
        >>> slice_attention(mha, "attn", [0, 3])
        >>> mha.num_heads, tuple(mha.q_proj_weight.shape), mha(*[torch.randn(1, 5, 8)] * 3)[0].shape
        (2, (4, 8), torch.Size([1, 5, 8]))
    """
    spec = attention_spec(module, name)
    if spec is None:
        raise TorchslimError(f"{name}: {type(module).__name__} is not an attention module torchslim can prune heads of")
    if spec.blocked:
        raise TorchslimError(spec.blocked)
    kept = check_kept(spec, kept)
    kv = kept_kv_heads(spec, kept)
    d = spec.head_dim
    if spec.kind == "mha" and isinstance(module, nn.MultiheadAttention):
        _slice_mha(module, kept, d)
    elif spec.kind == "gpt2":
        split = spec.heads * d
        slice_module(module.get_submodule("c_attn"), f"{name}.c_attn", out=[r for k in range(3) for r in head_rows(kept, d, k * split)])
        slice_module(module.get_submodule("c_proj"), f"{name}.c_proj", inp=head_rows(kept, d))
    else:
        for role in ("q", "k", "v"):
            path = spec.projections[role].path
            slice_module(module.get_submodule(path), f"{name}.{path}", out=head_rows(kept if role == "q" else kv, d))
        path = spec.projections["o"].path
        slice_module(module.get_submodule(path), f"{name}.{path}", inp=head_rows(kept, d))
    if spec.kind in ("hf", "bert", "torchslim"):
        _slice_head_tables(module, spec, kept)
    _update_attributes(module, spec, len(kept), len(kv))
    if spec.kind in ("hf", "bert", "gpt2"):
        _record_pruned(module, spec, kept)


def head_tables(module: nn.Module, spec: AttentionSpec) -> list[tuple[str, str, int]]:
    """``(module path, parameter, dim)`` of the per-head tables inside an attention module, outside its projections.

    A table is a parameter of at least two dimensions held by a module that is not a layer (no Linear,
    Embedding or norm): its last dimension has one entry per query head (Swin's
    ``relative_position_bias_table``, ``(positions, heads)``), or its first has and the others are 1 (a
    per-head scale, ``(heads, 1, 1)``). Removing heads removes their entries.

    Example:
        >>> import types
        >>> attn = nn.Module(); attn.head_dim = 2
        >>> for p in ("q_proj", "k_proj", "v_proj", "o_proj"): setattr(attn, p, nn.Linear(8, 8))
        >>> attn.bias = nn.Module(); attn.bias.table = nn.Parameter(torch.zeros(9, 4))
        >>> head_tables(attn, attention_spec(attn, "attn"))
        [('bias', 'table', 1)]
    """
    projections = {p.path.split(".")[0] for p in spec.projections.values()}
    found: list[tuple[str, str, int]] = []
    for path, sub in module.named_modules():
        if path.split(".")[0] in projections or isinstance(sub, _LAYERS):
            continue
        for pname, p in sub._parameters.items():
            if p is None or p.dim() < 2:
                continue
            if p.shape[-1] == spec.heads and spec.heads not in p.shape[:-1]:
                found.append((path, pname, p.dim() - 1))
            elif p.shape[0] == spec.heads and all(n == 1 for n in p.shape[1:]):
                found.append((path, pname, 0))
    return found


def _slice_head_tables(module: nn.Module, spec: AttentionSpec, kept: list[int]) -> None:
    idx = torch.tensor(kept, dtype=torch.long)
    for path, pname, dim in head_tables(module, spec):
        _slice_param(module.get_submodule(path) if path else module, pname, dim, idx)


def _slice_mha(module: nn.MultiheadAttention, kept: list[int], d: int) -> None:
    inner = module.num_heads * d
    mha = to_pruned(module)
    rows = torch.tensor(head_rows(kept, d), dtype=torch.long)
    for pname in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
        _slice_param(mha, pname, 0, rows)
    if mha.in_proj_bias is not None:
        _slice_param(mha, "in_proj_bias", 0, torch.cat([rows + k * inner for k in range(3)]))
    slice_module(mha.out_proj, "out_proj", inp=rows.tolist())


def _slice_mha_width(module: nn.MultiheadAttention, name: str, out: list[int] | None, inp: list[int] | None) -> None:
    """The model width through a self-attention: its q/k/v input columns, its output rows (heads stay whole)."""
    mha = to_pruned(module)
    if inp is not None:
        idx = _idx(inp, mha.q_proj_weight.shape[1], name)
        for pname in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
            _slice_param(mha, pname, 1, idx)
        mha.kdim = mha.vdim = len(idx)
    if out is not None:
        slice_module(mha.out_proj, f"{name}.out_proj", out=out)
        mha.embed_dim = len(out)


def _slice_mha_inner(module: nn.MultiheadAttention, name: str, inner: list[int]) -> None:
    """Keep features ``inner`` of the heads (the same positions of every head): ``head_dim`` shrinks."""
    heads, d = int(module.num_heads), int(module.head_dim)
    local = _same_in_every_group(_idx(inner, heads * d, name), d, heads, name, "input")
    mha = to_pruned(module)
    rows = torch.tensor([h * d + int(i) for h in range(heads) for i in local], dtype=torch.long)
    for pname in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
        _slice_param(mha, pname, 0, rows)
    if mha.in_proj_bias is not None:
        _slice_param(mha, "in_proj_bias", 0, torch.cat([rows + k * heads * d for k in range(3)]))
    slice_module(mha.out_proj, f"{name}.out_proj", inp=rows.tolist())
    mha.head_dim = len(local)


def _update_attributes(module: nn.Module, spec: AttentionSpec, heads: int, kv: int) -> None:
    """Set the head counts the module's forward reads (instance attributes only; properties are left alone)."""

    def put(owner: nn.Module, attr: str, value: int) -> None:
        old = owner.__dict__.get(attr)
        if isinstance(old, int) and not isinstance(old, bool):
            setattr(owner, attr, value)

    if spec.kind == "torchslim":  # the zoo's; GPT-J's (the same projections) counts num_attention_heads
        put(module, "num_heads", heads)
        put(module, "num_attention_heads", heads)
    elif spec.kind == "hf":
        put(module, "num_key_value_groups", heads // kv)
        for attr, value in (("num_heads", heads), ("num_attention_heads", heads), ("num_key_value_heads", kv)):
            put(module, attr, value)
    elif spec.kind == "bert":
        sa = module.get_submodule(spec.projections["q"].path.rpartition(".")[0])
        put(sa, "num_attention_heads", heads)
        put(sa, "all_head_size", heads * spec.head_dim)
    elif spec.kind == "gpt2":
        put(module, "num_heads", heads)
        put(module, "split_size", heads * spec.head_dim)
    else:
        put(module, "num_heads", heads)


def _record_pruned(module: Any, spec: AttentionSpec, kept: list[int]) -> None:
    """``module.pruned_heads``: the heads removed so far, as indices of the heads the module was built with."""
    before = set(getattr(module, "pruned_heads", None) or set())
    alive = [h for h in range(spec.heads + len(before)) if h not in before]
    module.pruned_heads = before | {h for i, h in enumerate(alive) if i not in set(kept)}


class SkippedBlock(nn.Identity):
    """A removed block: its hidden state (the first input) passes through unchanged.

    The arguments a block's container hands every block besides it (a transformer layer's
    attention mask, cache and flags) are accepted and not used, which ``nn.Identity`` refuses.

    Example:
        >>> x = torch.ones(2, 3)
        >>> SkippedBlock()(x, None, attention_mask=None) is x
        True
    """

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if args:
            return args[0]
        hidden = kwargs.get("hidden_states", next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None))
        if hidden is None:
            raise TorchslimError("a removed block was called without a hidden state to pass on")
        return hidden


def apply_structure(model: nn.Module, step: dict[str, Any], *, record: bool = True) -> None:
    """Apply one structure step to ``model`` in place (and append it to the model's recorded structure)."""
    for name, dims in step.get("modules", {}).items():
        slice_module(get_module(model, name), name, out=dims.get("out"), inp=dims.get("in"), inner=dims.get("inner"))
    for name, kept in step.get("heads", {}).items():
        slice_heads(get_module(model, name), name, kept)
    for name, kept in step.get("params", {}).items():
        owner, _, attr = name.rpartition(".")
        module = get_module(model, owner)
        if not isinstance(module._parameters.get(attr), nn.Parameter):
            raise TorchslimError(f"the model has no parameter {name!r}")
        _slice_param(module, attr, -1, _idx(kept, module._parameters[attr].shape[-1], name))  # type: ignore[union-attr]
    for name in step.get("blocks", []):
        replace_module(model, name, SkippedBlock())
    sync_config(model, step)
    if record:
        provenance.record(model, STRUCTURE, step)


def check_step(step: Any) -> dict[str, Any]:
    """``step`` if it is a well-formed structure step (the keys and value types above), else ``TorchslimError``.

    Example:
        >>> check_step({"modules": {"fc1": {"out": [0, 2]}}, "blocks": []})["modules"]
        {'fc1': {'out': [0, 2]}}
        >>> check_step({"modules": {}, "surprise": 1})
        Traceback (most recent call last):
            ...
        torchslim.errors.TorchslimError: a structure step has unknown keys ['surprise']; allowed: blocks, heads, modules, params
    """
    if not isinstance(step, dict):
        raise TorchslimError(f"a structure step must be a mapping, got {type(step).__name__}")
    unknown = sorted(set(step) - _STEP_KEYS, key=str)
    if unknown:
        raise TorchslimError(f"a structure step has unknown keys {unknown}; allowed: {', '.join(sorted(_STEP_KEYS))}")
    if not step:
        raise TorchslimError("a structure step is empty")
    modules, heads, blocks, params = step.get("modules", {}), step.get("heads", {}), step.get("blocks", []), step.get("params", {})

    def index_list(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)

    ok = (
        isinstance(modules, dict)
        and all(isinstance(n, str) and isinstance(d, dict) and set(d) <= {"out", "in", "inner"}
                and all(index_list(v) or (k == "inner" and isinstance(v, int)) for k, v in d.items())
                for n, d in modules.items())
        and all(isinstance(d, dict) and all(isinstance(n, str) and index_list(v) for n, v in d.items()) for d in (heads, params))
        and isinstance(blocks, list) and all(isinstance(b, str) for b in blocks)
    )
    if not ok:
        raise TorchslimError("a structure step's modules, heads or blocks have the wrong types")
    return step


_STEP_KEYS = {"modules", "heads", "blocks", "params"}


@provenance.register_rebuilder(STRUCTURE)
def _rebuild_structure(model: nn.Module, step: Any, state: dict[str, torch.Tensor]) -> None:
    apply_structure(model, check_step(step), record=False)


def recorded_structure(model: nn.Module) -> list[dict[str, Any]]:
    """The structure steps applied to ``model`` so far (JSON data)."""
    return provenance.of_kind(model, STRUCTURE)


def replay_structure(model: nn.Module, steps: list[dict[str, Any]]) -> None:
    """Bring a model to the recorded structure ``steps``: applies the steps it does not have yet.

    Raises:
        TorchslimError: when the model already carries a different structure.
    """
    current = recorded_structure(model)
    if steps[: len(current)] != current:
        raise TorchslimError("the model's structure differs from the checkpoint's recorded structure")
    for step in steps[len(current) :]:
        apply_structure(model, step)
