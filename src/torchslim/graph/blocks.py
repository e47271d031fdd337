"""Module-level rules: the blocks torchslim knows without a trace, checked on the model with hooks.

torch.fx cannot trace most Hugging Face models (``**kwargs`` forwards, cache
objects, data-dependent masks). Their prunable structure sits inside blocks whose
shape is known from the modules alone: a feed-forward block is one or two
projections up (``intermediate.dense``; ``fc1``; ``c_fc``; ``gate_proj`` and
``up_proj``; ...), an element-wise activation (and gate) and one projection down,
and its hidden channels are coupled to nothing else; attention heads are in
:mod:`torchslim.graph.attention`. :func:`ffn_blocks` finds them by name patterns
(:data:`FFN_PATTERNS`) and in ``nn.Sequential`` runs ``Linear → parameter-free
modules → Linear``.

A rule is only used once the model confirms it (:func:`check_coupling`): noise
added to some hidden channels of the projection(s) up must change exactly those
channels of the input of the projection down (one check per block class, on the
example input, with the model in eval mode and restored after). A block that fails
the check is frozen, with the reason.

When torch.fx fails, :func:`rule_groups` is the dependency engine: the checked
feed-forward blocks and, in a BERT/ViT-style encoder, the model-wide hidden width
(:mod:`torchslim.graph.hidden`) are the prunable groups, every other layer is a frozen group
that says why (so it is reported, and naming it in ``targets`` is a refusal with
the reason). :func:`sync_config` writes the new sizes into a Hugging Face
``model.config`` after structured pruning.

Example:
    >>> model = nn.Sequential(nn.Linear(4, 16), nn.GELU(), nn.Linear(16, 4))
    >>> [(b.ups, b.down, b.width) for b in ffn_blocks(model)]
    [(['0'], '2', 16)]
    >>> check_coupling(model, torch.randn(2, 4), ffn_blocks(model)[0]) is None
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchslim.graph.attention import AttentionSpec, attention_specs, head_rows
from torchslim.graph.hidden import hf_configs, hidden_members, sync_hidden
from torchslim.graph.spaces import Group, Member, Spaces
from torchslim.graph.surgery import get_module, linear_width
from torchslim.measure.macs import call_model, eval_mode

#: ``(projections up, projection down, the config field of their width)`` relative to a block module
FFN_PATTERNS: tuple[tuple[tuple[str, ...], str, str | None], ...] = (
    (("intermediate.dense",), "output.dense", "intermediate_size"),  # BERT, RoBERTa, ViT (transformers 4)
    (("gate_proj", "up_proj"), "down_proj", "intermediate_size"),  # Llama, Mistral, Qwen
    (("fc1",), "fc2", "intermediate_size"),  # ViT (transformers 5), CLIP, OPT
    (("c_fc",), "c_proj", "n_inner"),  # GPT-2
    (("lin1",), "lin2", "hidden_dim"),  # DistilBERT
    (("dense_h_to_4h",), "dense_4h_to_h", "intermediate_size"),  # GPT-NeoX, Falcon
    (("wi",), "wo", "d_ff"),  # T5
    (("wi_0", "wi_1"), "wo", "d_ff"),  # T5 v1.1 (gated)
    (("w1", "w3"), "w2", None),  # SwiGLU blocks
    (("linear1",), "linear2", None),  # nn.TransformerEncoderLayer / DecoderLayer
    (("fc_in",), "fc_out", "n_inner"),  # GPT-J, CodeGen
)


@dataclass
class FFN:
    """A feed-forward block: ``ups`` produce ``width`` hidden channels that only ``down`` reads."""

    name: str
    ups: list[str]
    down: str
    width: int
    config_key: str | None = None
    pattern: str = "sequential"


def _qual(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _sub(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def _pattern_block(name: str, module: nn.Module) -> FFN | None:
    for ups, down, key in FFN_PATTERNS:
        widths = [linear_width(_sub(module, u), "out") for u in ups]
        w_in = linear_width(_sub(module, down), "in")
        if w_in is not None and all(w == w_in for w in widths):
            return FFN(name, [_qual(name, u) for u in ups], _qual(name, down), w_in, key, "+".join(ups))
    return None


def _sequential_blocks(name: str, module: nn.Sequential) -> list[FFN]:
    found: list[FFN] = []
    children = list(module.named_children())
    for i, (up_name, up) in enumerate(children):
        width = linear_width(up, "out")
        if width is None:
            continue
        for down_name, down in children[i + 1 :]:
            if linear_width(down, "in") is not None:
                if linear_width(down, "in") == width:
                    found.append(FFN(name, [_qual(name, up_name)], _qual(name, down_name), width))
                break
            if any(True for _ in down.parameters()):
                break
    return found


def ffn_blocks(model: nn.Module) -> list[FFN]:
    """The feed-forward blocks of ``model`` (by :data:`FFN_PATTERNS`, then ``nn.Sequential`` runs); each layer in one at most."""
    taken: set[str] = set()
    blocks: list[FFN] = []
    for name, module in model.named_modules():
        found = _sequential_blocks(name, module) if isinstance(module, nn.Sequential) else []
        block = _pattern_block(name, module)
        for b in ([block] if block else []) + found:
            if not taken & {*b.ups, b.down}:
                taken |= {*b.ups, b.down}
                blocks.append(b)
    return blocks


# ---------------------------------------------------------------------------- the check by hooks
class _Stop(Exception):
    """Ends a forward pass once the consumer's input is captured."""


def _consumer_input(model: nn.Module, x: Any, consumer: str, noise: dict[str, list[int]]) -> torch.Tensor | None:
    """The input of ``consumer`` on ``x``, with seeded noise added to features ``noise[producer]`` of each producer's output."""
    captured: list[torch.Tensor] = []
    gen = torch.Generator().manual_seed(0)

    def capture(mod: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor):
            captured.append(args[0].detach().clone())
        raise _Stop

    def perturb(cols: list[int]) -> Any:
        def hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
            if not isinstance(out, torch.Tensor):
                return out
            out = out.clone()
            scale = 1.0 + float(out.detach().abs().max())
            out[..., cols] += scale * torch.randn(out[..., cols].shape, generator=gen).to(out)
            return out

        return hook

    handles = [get_module(model, consumer).register_forward_pre_hook(capture)]
    handles += [get_module(model, p).register_forward_hook(perturb(cols)) for p, cols in noise.items()]
    try:
        with torch.no_grad(), eval_mode(model):
            call_model(model, x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return captured[0] if captured else None


def _changed(model: nn.Module, x: Any, consumer: str, noise: dict[str, list[int]], base: torch.Tensor) -> set[int] | None:
    out = _consumer_input(model, x, consumer, noise)
    if out is None or out.shape != base.shape:
        return None
    diff = (out - base).abs().reshape(-1, base.shape[-1]).amax(0)
    return set(torch.nonzero(diff > 1e-5 * (1.0 + float(base.abs().max()))).flatten().tolist())


def _probe(model: nn.Module, x: Any, consumer: str, trials: list[tuple[dict[str, list[int]], set[int]]]) -> str | None:
    """``None`` when each trial's noise changes exactly (a non-empty part of) its expected features of ``consumer``'s input."""
    base = _consumer_input(model, x, consumer, {})
    if base is None:
        return f"{consumer} is not reached with one tensor input on the example input"
    for noise, expected in trials:
        changed = _changed(model, x, consumer, noise, base)
        if changed is None or not changed or not changed <= expected:
            where = ", ".join(noise)
            return f"noise on features of {where} reaches features {sorted(changed or [])[:8]} of {consumer}'s input, expected {sorted(expected)[:8]}"
    return None


def check_coupling(model: nn.Module, x: Any, block: FFN) -> str | None:
    """``None`` when ``block``'s hidden channel ``c`` is channel ``c`` of its down projection's input, else why not."""
    k = max(1, block.width // 4)
    cols = sorted(torch.randperm(block.width, generator=torch.Generator().manual_seed(1))[:k].tolist())
    return _probe(model, x, block.down, [({up: cols}, set(cols)) for up in block.ups])


def check_heads(model: nn.Module, x: Any, spec: AttentionSpec) -> str | None:
    """``None`` when the last head's query (and key/value) features reach only that head's (group's) features
    of the output projection's input, else why not."""
    d, h = spec.head_dim, spec.heads - 1
    module = _qual(spec.name, spec.projections["o"].path)
    q = spec.projections["q"]
    heads_of_kv = [q_head for q_head in range(spec.heads) if q_head // spec.group_size == h // spec.group_size]
    trials = [({_qual(spec.name, q.path): head_rows([h], d, q.offset)}, set(head_rows([h], d)))]
    if spec.kv_heads != spec.heads:
        k = spec.projections["k"]
        trials.append(({_qual(spec.name, k.path): head_rows([h // spec.group_size], d, k.offset)}, set(head_rows(heads_of_kv, d))))
    return _probe(model, x, module, trials)


# ---------------------------------------------------------------------------- the engine without a trace
def _layers(model: nn.Module) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for name, m in model.named_modules():
        width = linear_width(m, "out")
        if width is None and isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            width = int(m.out_channels)
        if name and width is not None:
            out.append((name, width))
    return out


def add_ffn_groups(s: Spaces, model: nn.Module, x: Any, blocks: list[FFN]) -> None:
    """A space in ``s`` for the hidden channels of each block, frozen when its check fails.

    One check per block class and pattern: its result holds for every block of that class.
    """
    verdicts: dict[tuple[type, str], str | None] = {}
    for block in blocks:
        key = (type(get_module(model, block.name)), block.pattern)
        if key not in verdicts:
            verdicts[key] = check_coupling(model, x, block)
        failed = verdicts[key]
        space = s.new(block.width, None if failed is None else f"feed-forward block {block.name} failed its check: {failed}")
        s.members[space] += [Member(up, "out") for up in block.ups] + [Member(block.down, "in")]


def ffn_inside(model: nn.Module, modules: list[str]) -> list[FFN]:
    """The feed-forward blocks inside ``modules`` (modules the torch.fx walk could only treat as opaque)."""
    return [b for b in ffn_blocks(model) if any(n and (b.name == n or b.name.startswith(n + ".")) for n in modules)]


def rule_groups(model: nn.Module, x: Any, why: str) -> list[Group]:
    """The channel groups of ``model`` by module-level rules (see the module docstring); ``why`` says why no trace."""
    s = Spaces()
    blocks = ffn_blocks(model)
    add_ffn_groups(s, model, x, blocks)
    covered: dict[str, str] = {}
    for block in blocks:
        covered.update({up: "" for up in block.ups})
        covered[block.down] = f"the output of feed-forward block {block.name} (module-level rules prune hidden channels only)"
    width, members, frozen = hidden_members(model, x, blocks)  # the hidden width: one group (graph/hidden.py)
    if members:
        s.members[s.new(width, frozen)] += members
        covered.update({m.module: "" for m in members if m.role == "out"})
    for spec in attention_specs(model):
        for proj in spec.projections.values():
            if not proj.param:
                covered.setdefault(_qual(spec.name, proj.path), f"a projection of attention {spec.name}: prune its heads with granularity 'head'")
    for name, width in _layers(model):
        if covered.get(name) != "":
            reason = covered.get(name) or f"not in a block the module-level rules know ({why})"
            s.members[s.new(width, reason)].append(Member(name, "out"))
    return s.groups()


# ---------------------------------------------------------------------------- Hugging Face configs
def _sync_heads(root: nn.Module, cfg: Any) -> None:
    specs = [s for s in attention_specs(root) if s.kind in ("hf", "bert", "gpt2")]
    if not specs:
        return
    shapes = {(s.heads, s.kv_heads, s.head_dim) for s in specs}
    stock = isinstance(getattr(cfg, "num_attention_heads", None), int)  # not one count per stage (SegFormer's list)
    if stock and all(s.kind == "hf" for s in specs) and len(shapes) == 1 and cfg.num_attention_heads != specs[0].heads:
        heads, kv, d = shapes.pop()
        cfg.num_attention_heads, cfg.head_dim = heads, d
        if hasattr(cfg, "num_key_value_heads"):
            cfg.num_key_value_heads = kv
        for s in specs:
            attn: Any = root.get_submodule(s.name)
            attn.pruned_heads = set()
    pruned = {}
    for i, s in enumerate(specs):
        gone = getattr(root.get_submodule(s.name), "pruned_heads", None)
        if gone:
            pruned[i] = sorted(gone)
    if pruned or getattr(cfg, "pruned_heads", None):
        cfg.pruned_heads = pruned


def sync_config(model: nn.Module, step: dict[str, Any] | None = None) -> None:
    """Write the sizes of a pruned Hugging Face model into its ``config`` where the config can say them.

    - every feed-forward block as wide: ``intermediate_size`` (GPT-2: ``n_inner``; ...);
    - the hidden width, where a step cut the LayerNorms: ``hidden_size`` (:func:`torchslim.graph.hidden.sync_hidden`);
    - ``hf`` attention (Llama, ViT) with as many heads in every block: ``num_attention_heads``,
      ``num_key_value_heads``, ``head_dim`` (a stock config again);
    - heads removed otherwise (and always for BERT and GPT-2, whose configs derive the head size
      from ``hidden_size / num_attention_heads``): ``config.pruned_heads``, ``{layer: [heads removed]}``
      with heads numbered as the layer was built, the meaning transformers 4 gave it
      (:func:`torchslim.prune.hf.from_pretrained` rebuilds such a model).

    With ``step`` (a structure step), only what it changed is written. A model without a
    Hugging Face config is left alone.
    """
    sliced = set((step or {}).get("modules", {}))
    for prefix, root, cfg in hf_configs(model):
        if step is None or step.get("heads"):
            _sync_heads(root, cfg)
        if step is None or any(_qual(prefix, n) in sliced for n, m in root.named_modules() if isinstance(m, nn.LayerNorm)):
            sync_hidden(root, cfg)
        found = ffn_blocks(root)
        if step is not None and not any(_qual(prefix, b.down) in sliced for b in found):
            continue
        blocks = [(b.config_key, b.width) for b in found if b.config_key and hasattr(cfg, b.config_key)]
        if len(set(blocks)) == 1:
            key, width = blocks[0]
            if getattr(cfg, key) != width:
                setattr(cfg, key, width)
