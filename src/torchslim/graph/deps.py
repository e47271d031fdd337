"""Channel dependency groups for structured pruning: found on a torch.fx trace, else by module-level rules.

Every tensor in the traced graph carries a *layout*: which channel spaces its
channel dimension is made of (one per segment; concatenation makes several) and
how many consecutive features each channel occupies (``inner``: a flatten of a
C×H×W map into a Linear gives ``inner = H*W``). A Conv/Linear output opens a new
space; element-wise ops, BatchNorm, pooling and depthwise convs carry it through;
residual adds *unite* spaces (they must be pruned together; runs of different
spaces are first cut so that they line up, as for a residual across a
concatenation); concatenation stacks them; a Linear or Conv that reads a space is
one of its consumers. A gate that is one value per channel (squeeze-excite's
``x * sigmoid(fc(pool(x)))``) is united with the tensor it scales.

``torch.chunk`` along the channel dimension cuts a space where a part's
boundary falls inside it (each member keeps each part at the right offset) and
unites the parts, since the pruned tensor is chunked evenly again: for a gate
``a, b = conv(x).chunk(2, 1); a * sigmoid(b)`` channel ``c`` of the group is
channel ``c`` of each half of ``conv``'s output. ``torch.split`` by one size
into equal parts covering the channel dimension (``split(n // 2)``) is taken as
``chunk`` (a size that was hard-coded fails the post-surgery forward check, and
the model is left unchanged); a ``split`` by a list of sizes along it has them
fixed in the code: its input is frozen. ``expand``/``expand_as``/``broadcast_to``
keeping the channel dimension's size and indexing that takes it whole (``x[:, 0]``)
let the layout through; a parameter of rank 2 or more that a module holds and uses
directly (a class token, positions) joins the group it meets (through ``cat`` or
``+``), cut along its last dimension (structure step ``params``). A grouped
convolution keeps its groups: position ``c`` of every group of its input (of its
output) is one channel, pruned from every group at once.

A space that reaches the model's output, comes from its input, or meets an op
the engine does not understand is *frozen*, with the reason recorded: it is never
pruned, and naming its layer explicitly raises an error that says why. The
model is traced with :func:`torchslim.graph.trace.fx_trace` (:mod:`torchslim.graph.fxwalk`
walks the graph). A model torch.fx cannot trace (most Hugging Face models) falls
back on module-level rules (:mod:`torchslim.graph.blocks`): its feed-forward
blocks, checked on the example input by hooks, are the groups, and every other
layer is a frozen group whose reason names torch.fx's failure. The hidden channels
of a feed-forward block inside a module the walk can only treat as opaque are found
by the same rules. A layer with parameters that the forward calls more than once (one
conv applied to its own output) freezes its groups: its weights serve several inputs.
Arguments of ``forward`` the example input does not give are traced at their defaults.

Example:
    >>> model = ts.create_model("resnet_cifar", depth=20)
    >>> deps = dependency_groups(model, torch.randn(1, 3, 32, 32))
    >>> g = next(g for g in deps.groups if g.prunable and "layer1.0.conv1" in g.producers)
    >>> g.channels, [m.module for m in g.members]          # inside a residual block
    (16, ['layer1.0.conv1', 'layer1.0.bn1', 'layer1.0.conv2'])
    >>> residual = next(g for g in deps.groups if "conv1" in g.producers)
    >>> sorted(residual.producers)                         # united by the residual adds
    ['conv1', 'layer1.0.conv2', 'layer1.1.conv2', 'layer1.2.conv2']
    >>> [g.frozen for g in deps.groups if not g.prunable]
    ['model input', 'reaches the model output']

    A GLU-style gate: the two halves of ``conv``'s output are one group with ``mix``'s input.

    >>> class Gated(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv, self.mix, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 4, 1), nn.Linear(4, 2)
    ...     def forward(self, x):
    ...         a, b = torch.chunk(self.conv(x), 2, dim=1)
    ...         return self.head(self.mix(a * torch.sigmoid(b)).mean((2, 3)))
    >>> deps = dependency_groups(Gated(), torch.randn(1, 3, 4, 4))
    >>> g = next(g for g in deps.groups if "mix" in [m.module for m in g.members if m.role == "in"])
    >>> g.channels, [(m.module, m.role, m.offset) for m in g.members]
    (4, [('conv', 'out', 0), ('conv', 'out', 4), ('mix', 'in', 0)])
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, cast

import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from torchslim.graph.attention import is_attention
from torchslim.graph.blocks import add_ffn_groups, ffn_inside, rule_groups
from torchslim.graph.fxwalk import FxWalk
from torchslim.graph.spaces import Group, HeadGroup, Member
from torchslim.graph.trace import TraceError

__all__ = ["Dependencies", "Group", "HeadGroup", "Member", "dependency_groups", "is_attention", "parametrized_reason"]


@dataclass
class Dependencies:
    """The result of :func:`dependency_groups`.

    Attributes:
        groups: the channel groups (frozen ones say why).
        heads: the attention modules the trace met (zoo-style ``q_proj``/``k_proj``/``v_proj``/``out_proj``).
        blocked: layers that cannot be pruned structurally, with why.
        engine: ``fx`` (the trace) or ``rules`` (module-level rules, torch.fx having failed).
        note: why the rules were used (torch.fx's failure), else empty.
    """

    groups: list[Group]
    heads: list[HeadGroup]
    blocked: dict[str, str]
    engine: str = "fx"
    note: str = ""

    def groups_of(self, module: str) -> list[Group]:
        return [g for g in self.groups if any(m.module == module for m in g.members)]


def dependency_groups(model: nn.Module, example_input: Any) -> Dependencies:
    """Trace ``model`` and return its channel groups, attention head groups and blocked layers.

    A model torch.fx cannot trace gets its groups from module-level rules
    (:func:`torchslim.graph.blocks.rule_groups`, ``engine="rules"``). A wrapper (``torch.compile``'s
    ``OptimizedModule``, ``nn.DataParallel``, ``DistributedDataParallel``) is looked through: the model it
    wraps is analysed and every name keeps the wrapper's prefix (``_orig_mod.``, ``module.``).
    """
    inner, prefix = unwrapped(model)
    if inner is not model:
        return _prefixed(dependency_groups(inner, example_input), prefix)
    try:
        walk = FxWalk(model, example_input)
    except TraceError as exc:
        return _parametrized_frozen(model, Dependencies(rule_groups(model, example_input, str(exc)), [], {}, "rules", str(exc)))
    walk.run()
    add_ffn_groups(walk.s, model, example_input, ffn_inside(model, list(walk.blocked)))
    deps = _parametrized_frozen(model, Dependencies(walk.s.groups(), walk.heads, walk.blocked))
    calls = Counter(str(n.target) for n in walk.gm.graph.nodes if n.op == "call_module")
    norms = [n for n in walk.gm.graph.nodes if n.op == "call_function" and n.target is F.layer_norm]  # subclasses' calls
    weights = [n.args[2] if len(n.args) > 2 else n.kwargs.get("weight") for n in norms]
    calls.update(str(w.target).rpartition(".")[0] for w in weights if isinstance(w, fx.Node) and w.op == "get_attr")
    shared = {t: f"called {c} times in the forward (one set of weights read by several inputs)" for t, c in calls.items()
              if c > 1 and any(True for _ in model.get_submodule(t).parameters(recurse=False))}
    return _frozen_with(deps, shared)


def unwrapped(model: nn.Module) -> tuple[nn.Module, str]:
    """``(the model a wrapper holds, the prefix of its names in the wrapper)``; ``(model, "")`` for anything else.

    Example:
        >>> inner, prefix = unwrapped(nn.DataParallel(nn.Linear(2, 2)))
        >>> type(inner).__name__, prefix
        ('Linear', 'module.')
    """
    prefix = ""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if type(model).__name__ == "OptimizedModule" and isinstance(inner, nn.Module):
            model, prefix = inner, prefix + "_orig_mod."
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model, prefix = model.module, prefix + "module."
        else:
            return model, prefix


def _prefixed(deps: Dependencies, prefix: str) -> Dependencies:
    def named(name: str) -> str:  # the wrapped model itself (a parameter it holds) is the prefix without its dot
        return prefix + name if name else prefix[:-1]

    groups = [Group(g.id, g.channels, [replace(m, module=named(m.module)) for m in g.members], g.frozen) for g in deps.groups]
    heads = [replace(h, module=named(h.module)) for h in deps.heads]
    blocked = {named(name): why for name, why in deps.blocked.items()}
    return Dependencies(groups, heads, blocked, deps.engine, deps.note)


def parametrized_reason(module: nn.Module) -> str | None:
    """Why a module whose tensors are computed by ``torch.nn.utils.parametrize`` (``weight_norm``, ``orthogonal``,
    ``spectral_norm`` of ``parametrizations``) is left whole, or ``None`` when it has none.

    Example:
        >>> from torch.nn.utils.parametrizations import weight_norm
        >>> parametrized_reason(weight_norm(nn.Linear(2, 2)))
        'its weight is computed by a parametrization (_WeightNorm); remove it first (torch.nn.utils.parametrize.remove_parametrizations)'
    """
    if not parametrize.is_parametrized(module):
        return None
    plists = cast(nn.ModuleDict, module.parametrizations)
    held = ", ".join(f"its {name} is computed by a parametrization ({', '.join(type(p).__name__ for p in plist.children())})"
                     for name, plist in plists.items())
    return f"{held}; remove it first (torch.nn.utils.parametrize.remove_parametrizations)"


def _parametrized_frozen(model: nn.Module, deps: Dependencies) -> Dependencies:
    """Freeze the groups and drop the head groups that would slice a parametrized module (its tensors are not
    parameters that can be cut: they are recomputed from the parametrization's own)."""
    return _frozen_with(deps, {n: r for n, m in model.named_modules() if (r := parametrized_reason(m)) is not None})


def _frozen_with(deps: Dependencies, held: dict[str, str]) -> Dependencies:
    """Freeze the groups and drop the head groups that would slice a module of ``held`` (module -> why), in place."""
    for group in deps.groups:
        name = next((m.module for m in group.members if m.module in held), None)
        if name is not None and group.frozen is None:
            group.frozen = f"{name}: {held[name]}"
    for head in list(deps.heads):
        inside = next((n for n in held if n.startswith(head.module + ".")), None)
        if inside is not None:
            deps.heads.remove(head)
            deps.blocked[head.module] = f"{inside}: {held[inside]}"
    deps.blocked.update(held)
    return deps
