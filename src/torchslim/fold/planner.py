"""The one fold planner: which BatchNorms fold into which layers, which linear maps merge, and why not.

Both :func:`torchslim.fold.fold_` and the BatchNorm folding quantization runs
(:func:`~torchslim.fold.batchnorm.find_conv_bn_pairs`) decide here, with one set of
rules, on the graphs of :func:`~torchslim.graph.trace.trace_parts`:

* **BatchNorm → into its producer** when the BatchNorm is in eval mode, keeps
  running statistics and is called once, and its input (skipping ``nn.Identity``)
  is a Conv/Linear called once whose output nothing else reads.
* **Linear → Linear**, **Conv → 1×1 Conv** (after the BatchNorm folds) when
  :func:`~torchslim.fold.linear.merge_reason` allows it, nothing else reads the
  first output, both are called once and (``linear="if_smaller"``) the merged
  layer is smaller than the pair.

Nothing here changes the model: folded and merged layers are new modules, listed
in :attr:`Planned.replacements` for the caller to swap in.

Example:
    >>> from torchslim.graph.trace import trace_parts
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
    >>> parts, _ = trace_parts(model)
    >>> planned = plan_parts(model, parts, linear="never")
    >>> [(f.name, f.absorbed, f.pattern) for f in planned.folds], sorted(planned.replacements)
    ([('0', '1', 'batchnorm')], ['0', '1'])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from torchslim.fold.bnmath import BATCHNORMS, FOLDABLE, check_fold, fold_bn
from torchslim.fold.linear import CONVS, merge_linear, merge_reason, merged_params
from torchslim.graph.surgery import get_module
from torchslim.graph.trace import TracedPart
from torchslim.report import LayerReport, SkippedLayer

#: Element-wise non-linearities named in "could not fold" reasons.
NONLINEAR_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.Hardswish,
    nn.Hardsigmoid, nn.Mish, nn.Softmax, nn.PReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
)
NONLINEAR_FUNCTIONS = {
    torch.relu, F.relu, F.relu6, F.gelu, F.silu, torch.sigmoid, torch.tanh, F.leaky_relu, F.elu,
    F.hardswish, torch.softmax, F.softmax, F.max_pool2d,
}
LINEAR_MAPS = (nn.Linear, *CONVS)
LinearMode = Literal["never", "if_smaller", "always"]


@dataclass
class Fold:
    """One planned fold: ``name`` is the layer that remains (``module``), ``absorbed`` the layer folded into it.

    ``pattern`` is ``"batchnorm"`` (``absorbed`` is the BatchNorm) or ``"linear_merge"``
    (``absorbed`` is the first layer of the pair; ``name`` the second).
    """

    name: str
    absorbed: str
    pattern: str
    module: nn.Module

    def report(self) -> LayerReport:
        """The ``folded`` layer report of this fold."""
        return LayerReport.of(self.name, self.module, "folded", {"pattern": self.pattern, "absorbed": self.absorbed})


@dataclass
class Planned:
    """The planner's result: the folds in order, the module swaps they need, the patterns that cannot fold.

    ``pairs`` lists every BatchNorm fold as ``(layer, bn)``; with ``build=False``
    it is the only record of them (no folded module is made, ``folds`` stays empty
    and ``replacements`` holds only the BatchNorms' ``nn.Identity``).
    """

    folds: list[Fold] = field(default_factory=list)
    replacements: dict[str, nn.Module] = field(default_factory=dict)
    skipped: list[SkippedLayer] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)


def _qual(prefix: str, target: str) -> str:
    return f"{prefix}.{target}" if prefix else target


@dataclass
class _Part:
    """One traced part as the planner walks it: its nodes, its modules and how often each is called."""

    prefix: str
    nodes: list[fx.Node]
    mods: dict[str, nn.Module]
    calls: Counter[str]

    @classmethod
    def of(cls, part: TracedPart) -> _Part:
        nodes = list(part.gm.graph.nodes)
        calls = Counter(str(n.target) for n in nodes if n.op == "call_module")
        return cls(part.prefix, nodes, dict(part.gm.named_modules()), calls)

    def name(self, node: fx.Node) -> str:
        return _qual(self.prefix, str(node.target))

    def module(self, node: Any) -> nn.Module | None:
        """The module ``node`` calls, or ``None`` (not a node, not a module call)."""
        if isinstance(node, fx.Node) and node.op == "call_module":
            return self.mods.get(str(node.target))
        return None

    def describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"{self.name(node)} ({type(self.mods[str(node.target)]).__name__})"
        if node.op in ("call_function", "call_method"):
            return getattr(node.target, "__name__", str(node.target))
        return node.op

    def is_nonlinear(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(self.mods[str(node.target)], NONLINEAR_MODULES)
        if node.op == "call_function":
            return node.target in NONLINEAR_FUNCTIONS
        return node.op == "call_method" and node.target in ("relu", "sigmoid", "tanh", "softmax")


def _batchnorm_reason(bn: nn.Module, calls: int) -> str | None:
    """Why the BatchNorm itself cannot fold (mode, statistics, reuse), or ``None``."""
    if bn.training:
        return "BatchNorm in training mode (it normalises with batch statistics); call model.eval() first"
    if bn.running_mean is None:
        return "BatchNorm keeps no running statistics (track_running_stats=False)"
    if calls > 1:
        return f"BatchNorm module is called {calls} times"
    return None


class _Planner:
    """Walks the traced parts; ``excluded`` maps layer names the user excluded (targets, filter_fn) to why."""

    def __init__(
        self, model: nn.Module, batchnorm: bool, linear: LinearMode, excluded: Mapping[str, str], build: bool
    ) -> None:
        self.model, self.batchnorm, self.linear, self.excluded, self.build = model, batchnorm, linear, excluded, build
        self.out = Planned()

    def current(self, name: str) -> nn.Module:
        """The module at ``name`` once the planned swaps so far are made."""
        repl = self.out.replacements
        return repl[name] if name in repl else get_module(self.model, name)

    def skip(self, name: str, reason: str) -> None:
        self.out.skipped.append(SkippedLayer(name, reason))

    def source(self, part: _Part, node: fx.Node) -> tuple[Any, list[fx.Node]]:
        """The node feeding ``node``'s first input, skipping identities; plus the identity nodes walked."""
        walked: list[fx.Node] = []
        arg = node.args[0] if node.args else None
        while isinstance(arg, fx.Node) and arg.op == "call_module" and isinstance(self.current(part.name(arg)), nn.Identity):
            walked.append(arg)
            arg = arg.args[0] if arg.args else None
        return arg, walked

    def walk(self, part: _Part) -> None:
        """Plan the part: every BatchNorm fold first, then (unless ``linear="never"``) every merge."""
        for node in part.nodes:
            if isinstance(part.module(node), BATCHNORMS):
                self.fold_batchnorm(part, node)
        if self.linear == "never":
            return
        for node in part.nodes:
            if isinstance(part.module(node), LINEAR_MAPS):
                self.merge(part, node)

    # -- pass 1: BatchNorm folds ------------------------------------------------------------------
    def producer_reason(self, part: _Part, prod: Any, walked: list[fx.Node], bn_node: fx.Node) -> str | None:
        """Why the BatchNorm's input cannot take the fold (not a Conv/Linear, read elsewhere, shared), or ``None``."""
        if not isinstance(part.module(prod), FOLDABLE):
            what = part.describe(prod) if isinstance(prod, fx.Node) else "nothing"
            return f"input comes from {what}, not a Conv/Linear"
        chain = [prod, *walked]
        if any(len(n.users) != 1 for n in chain):
            others = [u for n in chain for u in n.users if u is not bn_node and u not in chain]
            used_by = part.describe(others[0]) if others else "another node"
            return f"the output of {part.name(prod)} is also used by {used_by}"
        if part.calls[str(prod.target)] > 1:
            return f"{part.name(prod)} is called {part.calls[str(prod.target)]} times (shared weights)"
        return None

    def fold_batchnorm(self, part: _Part, node: fx.Node) -> None:
        bn_name, bn = part.name(node), part.mods[str(node.target)]
        if not self.batchnorm:
            self.skip(bn_name, "BatchNorm folding disabled (batchnorm: false)")
            return
        prod, walked = self.source(part, node)
        reason = (
            self.excluded.get(bn_name)
            or _batchnorm_reason(bn, part.calls[str(node.target)])
            or self.producer_reason(part, prod, walked, node)
        )
        if reason is not None:
            self.skip(bn_name, reason)
            return
        prod_name = part.name(prod)
        new: nn.Module | None = None
        try:
            # building the folded layer draws its initial weights from the global RNG (as fold_ always has);
            # without build only the checks run, so BatchNorm folding for quantization leaves the RNG alone
            if self.build:
                new = fold_bn(self.current(prod_name), bn)
            else:
                check_fold(self.current(prod_name), bn)
        except Exception as exc:  # noqa: BLE001 - TorchslimError or a shape mismatch: reported as the reason
            self.skip(bn_name, str(exc))
            return
        if new is not None:
            self.out.replacements[prod_name] = new
            self.out.folds.append(Fold(prod_name, bn_name, "batchnorm", new))
        self.out.replacements[bn_name] = nn.Identity()
        self.out.pairs.append((prod_name, bn_name))

    # -- pass 2: linear merges --------------------------------------------------------------------
    def report_nonlinear(self, part: _Part, node: fx.Node, act: fx.Node) -> None:
        """A non-linearity ``act`` (after BatchNorms) between two mergeable layers: report, do not merge."""
        inner, _ = self.source(part, act)
        while isinstance(part.module(inner), BATCHNORMS):
            inner, _ = self.source(part, inner)
        if isinstance(part.module(inner), LINEAR_MAPS) and merge_reason(self.current(part.name(inner)), self.current(part.name(node))) is None:
            self.skip(part.name(inner), f"not merged with {part.name(node)}: non-linearity {part.describe(act)} between")

    def merge_reason(self, part: _Part, node: fx.Node, prod: fx.Node, walked: list[fx.Node]) -> str | None:
        """Why ``prod`` → ``node`` cannot merge (user exclusion, shapes, reuse, size), or ``None``."""
        prod_name, name = part.name(prod), part.name(node)
        excluded = self.excluded.get(prod_name)
        if excluded is not None:
            return excluded
        first, second = self.current(prod_name), self.current(name)
        reason = merge_reason(first, second)
        if reason is not None:
            return f"not merged with {name}: {reason}"
        if len(prod.users) != 1 or any(len(w.users) != 1 for w in walked):
            return f"not merged with {name}: its output is also used elsewhere"
        if part.calls[str(prod.target)] > 1 or part.calls[str(node.target)] > 1:
            return f"not merged with {name}: a module is called more than once"
        if self.linear == "if_smaller":
            pair = sum(p.numel() for p in first.parameters()) + sum(p.numel() for p in second.parameters())
            merged = merged_params(first, second)
            if merged >= pair:
                return f"not merged with {name}: merged layer ({merged} params) not smaller than the pair ({pair}); linear: always merges anyway"
        return None

    def merge(self, part: _Part, node: fx.Node) -> None:
        name = part.name(node)
        if isinstance(self.current(name), nn.Identity):
            return  # already merged into its consumer
        prod, walked = self.source(part, node)
        if not isinstance(prod, fx.Node):
            return
        if part.is_nonlinear(prod):
            self.report_nonlinear(part, node, prod)
            return
        if not isinstance(part.module(prod), LINEAR_MAPS):
            return
        prod_name = part.name(prod)
        reason = self.merge_reason(part, node, prod, walked)
        if reason is not None:
            self.skip(prod_name, reason)
            return
        merged = merge_linear(self.current(prod_name), self.current(name))
        self.out.replacements[name] = merged
        self.out.replacements[prod_name] = nn.Identity()
        self.out.folds.append(Fold(name, prod_name, "linear_merge", merged))


def candidate_layers(parts: list[TracedPart]) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` BatchNorms and Conv/Linear layers the traced parts call, once each, in graph order.

    These are the layers ``targets`` and ``filter_fn`` choose among (a fold is
    chosen through its absorbed layer: the BatchNorm, or the first of a merged pair).
    """
    out: dict[str, nn.Module] = {}
    for part in parts:
        mods = dict(part.gm.named_modules())
        for node in part.gm.graph.nodes:
            if node.op == "call_module" and isinstance(mods[str(node.target)], (*BATCHNORMS, *FOLDABLE)):
                out.setdefault(_qual(part.prefix, str(node.target)), mods[str(node.target)])
    return list(out.items())


@torch.no_grad()
def plan_parts(
    model: nn.Module,
    parts: list[TracedPart],
    *,
    batchnorm: bool = True,
    linear: LinearMode = "if_smaller",
    excluded: Mapping[str, str] | None = None,
    build: bool = True,
) -> Planned:
    """Plan every fold in the traced ``parts`` of ``model`` (which is not changed).

    Args:
        model: the model the parts were traced from (their prefixes are names in it).
        parts: from :func:`~torchslim.graph.trace.trace_parts`.
        batchnorm: fold BatchNorms (``False``: each is reported as disabled).
        linear: merge adjacent linear maps: ``never``, ``if_smaller`` or ``always``.
        excluded: absorbed-layer names the caller's selection excluded, with the reason
            reported when such a layer would otherwise fold.
        build: make the folded and merged layers (``False``: only decide, recording the
            BatchNorm folds in ``pairs``; needs ``linear="never"``, since merges are made
            from the folded layers).

    Raises:
        ValueError: ``build=False`` with linear merges on.
    """
    if not build and linear != "never":
        raise ValueError(f"plan_parts(build=False) decides BatchNorm folds only; got linear={linear!r}, expected 'never'")
    planner = _Planner(model, batchnorm, linear, excluded or {}, build)
    for part in parts:
        planner.walk(_Part.of(part))
    return planner.out
