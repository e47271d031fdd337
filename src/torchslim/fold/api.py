"""The ``fold_`` verb: find every foldable pattern with torch.fx and fold it exactly.

Patterns, found on the traced graph (or, when the whole model does not trace, on
every largest sub-module that does):

* **Conv/Linear → BatchNorm** (eval mode): the BatchNorm is absorbed into the
  layer (:func:`~torchslim.fold.batchnorm.fold_bn`) and replaced by ``nn.Identity``.
* **Linear → Linear** and **Conv → 1×1 Conv** with nothing between (after the
  BatchNorm folds, so Conv → BN → 1×1 Conv merges too): one layer
  (:func:`~torchslim.fold.linear.merge_linear`); by default only when the merged
  layer has fewer parameters than the pair.

What cannot fold is reported with the reason: a non-linearity between, a
producer whose output is also used elsewhere, a BatchNorm in training mode or
without running statistics, a module called more than once, a BatchNorm whose
input is not a conv/linear output.

Example:
    >>> model = ts.create_model("mobilenet_v2", width_mult=0.5, num_classes=10)
    >>> report = ts.fold_(model.eval(), {})
    >>> [(l.name, l.details["absorbed"]) for l in report.layers][:2]
    [('features.0.0', 'features.0.1'), ('features.1.conv.0.0', 'features.1.conv.0.1')]
"""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.fx as fx
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from torchslim.config import Config
from torchslim.fold.batchnorm import BATCHNORMS, FOLDABLE, fold_bn
from torchslim.fold.linear import CONVS, merge_linear, merge_reason, merged_params
from torchslim.graph.surgery import get_module, replace_module
from torchslim.report import LayerReport, Report, SkippedLayer
from torchslim.targets import resolve_targets

FilterFn = Callable[[nn.Module, str], bool]

#: Element-wise non-linearities named in "could not fold" reasons.
NONLINEAR_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.Hardswish,
    nn.Hardsigmoid, nn.Mish, nn.Softmax, nn.PReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
)
NONLINEAR_FUNCTIONS = {
    torch.relu, F.relu, F.relu6, F.gelu, F.silu, torch.sigmoid, torch.tanh, F.leaky_relu, F.elu,
    F.hardswish, torch.softmax, F.softmax, F.max_pool2d,
}


class FoldConfig(Config):
    """What ``fold_`` folds.

    Attributes:
        batchnorm: fold eval-mode BatchNorms into the preceding Conv/Linear.
        linear: merge adjacent linear maps: ``never``, ``if_smaller`` (only when the
            merged layer has fewer parameters than the pair) or ``always``.
        targets: optional ordered map (exact name or ``re:`` pattern → ``{}`` or
            ``null``) over the *absorbed* layers (the BatchNorm, or the first layer of
            a merged pair); ``null`` keeps that pattern unfolded. Unmatched layers
            are skipped when ``targets`` is given.
    """

    batchnorm: bool = True
    linear: Literal["never", "if_smaller", "always"] = "if_smaller"
    targets: dict[str, dict[str, Any] | None] | None = None


@dataclass
class _Graph:
    prefix: str
    gm: fx.GraphModule


def _qual(prefix: str, target: str) -> str:
    return f"{prefix}.{target}" if prefix else target


def _traced(model: nn.Module, prefix: str = "") -> list[_Graph]:
    """fx graphs of the largest sub-modules of ``model`` that trace (the whole model when it does)."""
    try:
        return [_Graph(prefix, fx.symbolic_trace(model))]
    except Exception:  # noqa: BLE001 - any tracing failure: descend into the children
        out: list[_Graph] = []
        for name, child in model.named_children():
            if any(True for _ in child.children()):
                out += _traced(child, _qual(prefix, name))
        return out


@dataclass
class _Plan:
    layers: list[LayerReport]
    skipped: list[SkippedLayer]
    replacements: dict[str, nn.Module]
    tracer: list[str]


def _describe(node: fx.Node, modules: dict[str, nn.Module], prefix: str) -> str:
    if node.op == "call_module":
        return f"{_qual(prefix, str(node.target))} ({type(modules[str(node.target)]).__name__})"
    if node.op in ("call_function", "call_method"):
        return getattr(node.target, "__name__", str(node.target))
    return node.op


def _is_nonlinear(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], NONLINEAR_MODULES)
    if node.op == "call_function":
        return node.target in NONLINEAR_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "sigmoid", "tanh", "softmax")


def plan_folds(model: nn.Module, config: FoldConfig | dict[str, Any], *, filter_fn: FilterFn | None = None) -> _Plan:
    """Everything ``fold_`` would do, computed without touching ``model``.

    Example:
        >>> model = ts.create_model("mobilenet_v2", width_mult=0.5, num_classes=10)
        >>> plan = plan_folds(model.eval(), {})
        >>> sorted(plan.replacements)[:2]                # the folded conv, the BatchNorm's Identity
        ['features.0.0', 'features.0.1']
        >>> type(model.features[0][1]).__name__          # the model itself is untouched
        'BatchNorm2d'
    """
    cfg = FoldConfig.parse(config)
    graphs = _traced(model)
    layers: list[LayerReport] = []
    skipped: list[SkippedLayer] = []
    repl: dict[str, nn.Module] = {}
    candidates: list[str] = []
    for g in graphs:
        mods = dict(g.gm.named_modules())
        for node in g.gm.graph.nodes:
            if node.op == "call_module" and isinstance(mods[str(node.target)], (*BATCHNORMS, *FOLDABLE)):
                candidates.append(_qual(g.prefix, str(node.target)))
    matches = resolve_targets(candidates, cfg.targets) if cfg.targets is not None else {}

    def current(name: str) -> nn.Module:
        return repl.get(name) or get_module(model, name)

    def targeted(name: str) -> str | None:
        """None when ``name`` may fold, else the reason it may not."""
        if filter_fn is not None and not filter_fn(get_module(model, name), name):
            return "rejected by filter_fn"
        if cfg.targets is not None:
            m = matches.get(name)
            if m is None:
                return "not matched by any targets key"
            if m.skip:
                return f"excluded by targets[{m.key!r}] = null"
        return None

    for g in graphs:
        mods = dict(g.gm.named_modules())
        calls = Counter(str(n.target) for n in g.gm.graph.nodes if n.op == "call_module")
        nodes = list(g.gm.graph.nodes)

        def is_identity(node: fx.Node) -> bool:
            if node.op != "call_module":
                return False
            name = _qual(g.prefix, str(node.target))
            return isinstance(current(name), nn.Identity)

        def source(node: fx.Node) -> tuple[fx.Node, list[fx.Node]]:
            """The node feeding ``node``'s first input, skipping identities; plus the nodes walked."""
            walked: list[fx.Node] = []
            arg = node.args[0] if node.args else None
            while isinstance(arg, fx.Node) and is_identity(arg):
                walked.append(arg)
                arg = arg.args[0] if arg.args else None
            return arg, walked  # type: ignore[return-value]

        # pass 1: BatchNorm folds
        for node in nodes:
            if node.op != "call_module" or not isinstance(mods[str(node.target)], BATCHNORMS):
                continue
            bn_name = _qual(g.prefix, str(node.target))
            bn = mods[str(node.target)]
            if not cfg.batchnorm:
                skipped.append(SkippedLayer(bn_name, "BatchNorm folding disabled (batchnorm: false)"))
                continue
            reason = targeted(bn_name)
            prod, walked = source(node)
            prod_mod = mods.get(str(prod.target)) if isinstance(prod, fx.Node) and prod.op == "call_module" else None
            if reason is None and bn.training:
                reason = "BatchNorm in training mode (it normalises with batch statistics); call model.eval() first"
            if reason is None and bn.running_mean is None:
                reason = "BatchNorm keeps no running statistics (track_running_stats=False)"
            if reason is None and calls[str(node.target)] > 1:
                reason = f"BatchNorm module is called {calls[str(node.target)]} times"
            if reason is None and not isinstance(prod_mod, FOLDABLE):
                what = _describe(prod, mods, g.prefix) if isinstance(prod, fx.Node) else "nothing"
                reason = f"input comes from {what}, not a Conv/Linear"
            if reason is None and isinstance(prod, fx.Node):
                prod_name = _qual(g.prefix, str(prod.target))
                chain = [prod, *walked]
                if any(len(n.users) != 1 for n in chain):
                    others = [u for n in chain for u in n.users if u is not node and u not in chain]
                    used_by = _describe(others[0], mods, g.prefix) if others else "another node"
                    reason = f"the output of {prod_name} is also used by {used_by}"
                elif calls[str(prod.target)] > 1:
                    reason = f"{prod_name} is called {calls[str(prod.target)]} times (shared weights)"
            if reason is not None:
                skipped.append(SkippedLayer(bn_name, reason))
                continue
            prod_name = _qual(g.prefix, str(prod.target))
            try:
                repl[prod_name] = fold_bn(current(prod_name), bn)
            except Exception as exc:  # noqa: BLE001 - TransformRefusedError or shape mismatch
                skipped.append(SkippedLayer(bn_name, str(exc)))
                continue
            repl[bn_name] = nn.Identity()
            new = repl[prod_name]
            layers.append(
                LayerReport(prod_name, type(new).__name__, tuple(new.weight.shape), new.weight.numel(),
                            int((new.weight != 0).sum()), "folded",
                            {"pattern": "batchnorm", "absorbed": bn_name})
            )

        # pass 2: linear merges
        if cfg.linear == "never":
            continue
        for node in nodes:
            if node.op != "call_module" or not isinstance(mods[str(node.target)], (nn.Linear, *CONVS)):
                continue
            name = _qual(g.prefix, str(node.target))
            if isinstance(current(name), nn.Identity):
                continue  # already merged into its consumer
            prod, walked = source(node)
            if not isinstance(prod, fx.Node):
                continue
            # a non-linearity between two linear layers: report, do not merge
            if _is_nonlinear(prod, mods):
                inner, _ = source(prod)
                while isinstance(inner, fx.Node) and inner.op == "call_module" and isinstance(mods[str(inner.target)], BATCHNORMS):
                    inner, _ = source(inner)
                if (
                    isinstance(inner, fx.Node)
                    and inner.op == "call_module"
                    and isinstance(mods[str(inner.target)], (nn.Linear, *CONVS))
                    and merge_reason(current(_qual(g.prefix, str(inner.target))), current(name)) is None
                ):
                    skipped.append(SkippedLayer(
                        _qual(g.prefix, str(inner.target)),
                        f"not merged with {name}: non-linearity {_describe(prod, mods, g.prefix)} between",
                    ))
                continue
            if prod.op != "call_module" or not isinstance(mods.get(str(prod.target)), (nn.Linear, *CONVS)):
                continue
            prod_name = _qual(g.prefix, str(prod.target))
            first, second = current(prod_name), current(name)
            reason = targeted(prod_name)
            if reason is None:
                reason = merge_reason(first, second)
                reason = None if reason is None else f"not merged with {name}: {reason}"
            if reason is None and (len(prod.users) != 1 or any(len(w.users) != 1 for w in walked)):
                reason = f"not merged with {name}: its output is also used elsewhere"
            if reason is None and (calls[str(prod.target)] > 1 or calls[str(node.target)] > 1):
                reason = f"not merged with {name}: a module is called more than once"
            if reason is None and cfg.linear == "if_smaller":
                pair = sum(p.numel() for p in first.parameters()) + sum(p.numel() for p in second.parameters())
                if merged_params(first, second) >= pair:
                    reason = f"not merged with {name}: merged layer ({merged_params(first, second)} params) not smaller than the pair ({pair}); linear: always merges anyway"
            if reason is not None:
                skipped.append(SkippedLayer(prod_name, reason))
                continue
            merged = merge_linear(first, second)
            repl[name] = merged
            repl[prod_name] = nn.Identity()
            layers.append(
                LayerReport(name, type(merged).__name__, tuple(merged.weight.shape), merged.weight.numel(),
                            int((merged.weight != 0).sum()), "folded",
                            {"pattern": "linear_merge", "absorbed": prod_name})
            )
    return _Plan(layers, skipped, repl, [g.prefix or "<root>" for g in graphs])


@torch.no_grad()
def fold_(
    model: nn.Module, config: FoldConfig | dict[str, Any] | None = None, *, filter_fn: FilterFn | None = None
) -> Report:
    """Fold BatchNorms and merge adjacent linear maps in ``model``, in place, exactly.

    Everything is planned first (on a torch.fx trace), then applied; folded
    BatchNorms and absorbed first layers become ``nn.Identity``. Put the model in
    eval mode first: a BatchNorm in training mode is reported and left alone.

    Args:
        model: the model (modified in place).
        config: a :class:`FoldConfig` or a mapping validated into one (``None``: defaults).
        filter_fn: optional ``(module, name) -> bool`` over the absorbed layers.

    Returns:
        A :class:`Report`: one ``folded`` layer per fold (``details["absorbed"]`` names what
        went into it) and every pattern that could not fold with the reason.

    Example:
        >>> model = ts.create_model("mobilenet_v2", pretrained=True).eval()
        >>> report = ts.fold_(model)
        >>> len(report.layers)
        52
    """
    plan = plan_folds(model, config if config is not None else {}, filter_fn=filter_fn)
    for name, new in plan.replacements.items():
        replace_module(model, name, new)
    return Report(
        title="fold",
        technique="fold",
        layers=plan.layers,
        skipped=plan.skipped,
        meta={"traced": plan.tracer, "folded": len(plan.layers)},
    )
