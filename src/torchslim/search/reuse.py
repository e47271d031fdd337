"""Re-running only what a change touches: the unchanged model's activations, kept, and partial forwards.

A sensitivity analysis changes one layer at a time and measures the whole model on
the same batches each time. Everything computed before the changed layers is the
same every time, so it is computed once: the model is traced with
:func:`torch.fx` (:func:`torchslim.graph.trace.fx_trace`), run once per batch, and
the values the later parts of the graph read are kept. Measuring a changed copy then
runs only the graph nodes downstream of the modules that differ from the original
(found by comparing the two models, not assumed), with the copy's modules, from the
kept values. A change whose modules the graph does not show, a model that does not
trace or whose trace does not give the model's own output, batches that are not
tensors, or kept values over :data:`MAX_CACHE_BYTES` fall back on the full forward:
the figures are the same either way, only slower.

Example:
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    >>> batches = [torch.randn(5, 4)]
    >>> cache = ActivationCache.build(model, batches, [{"2"}])
    >>> work = copy.deepcopy(model)
    >>> _ = work[2].weight.data.mul_(2)
    >>> changed_modules(model, work)
    {'2'}
    >>> torch.equal(cache.forward(work, 0, {"2"}), work(batches[0]))
    True
"""

from __future__ import annotations

import copy  # noqa: F401 - used by the docstring example
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from torchslim.graph.trace import TraceError, fx_trace
from torchslim.measure.macs import eval_mode

__all__ = ["MAX_CACHE_BYTES", "ActivationCache", "changed_modules"]

#: the most bytes of kept activations (over all batches); above it every option runs the full forward
MAX_CACHE_BYTES = 512 * 2**20


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    """Same class, same own parameters and buffers (names, shapes, values), same settings and hooks."""
    if type(a) is not type(b) or a.extra_repr() != b.extra_repr():
        return False
    if len(a._forward_hooks) != len(b._forward_hooks) or len(a._forward_pre_hooks) != len(b._forward_pre_hooks):
        return False
    for mine, theirs in ((a._parameters, b._parameters), (a._buffers, b._buffers)):
        if mine.keys() != theirs.keys():
            return False
        for key, t in mine.items():
            u = theirs[key]
            if (t is None) != (u is None):
                return False
            if t is not None and u is not None and (t.shape != u.shape or t.dtype != u.dtype or not torch.equal(t, u)):
                return False
    return True


def changed_modules(base: nn.Module, work: nn.Module) -> set[str]:
    """Qualified names of the modules of ``work`` that differ from ``base``'s (or exist in one only)."""
    mine, theirs = dict(base.named_modules()), dict(work.named_modules())
    changed = {name for name in mine.keys() ^ theirs.keys()}
    changed |= {name for name, m in theirs.items() if name in mine and not _same_state(mine[name], m)}
    return changed


def _touches(target: str, name: str) -> bool:
    return name == target or name.startswith(target + ".") or target.startswith(name + ".")


class _Recorder(fx.Interpreter):
    """Runs the graph, keeping the values of the nodes in ``keep``."""

    def __init__(self, gm: fx.GraphModule, keep: set[fx.Node]) -> None:
        super().__init__(gm)
        self.keep = keep
        self.kept: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n in self.keep:
            self.kept[n] = out
        return out


class _Partial(fx.Interpreter):
    """Runs the graph with another model's modules and attributes (a changed copy of the traced one)."""

    def __init__(self, gm: fx.GraphModule, work: nn.Module) -> None:
        super().__init__(gm)
        self.work = work

    def fetch_attr(self, target: str) -> Any:
        value: Any = self.work
        for atom in target.split("."):
            value = getattr(value, atom)
        return value


class ActivationCache:
    """The traced graph of the unchanged model and, per batch, the values later nodes read."""

    def __init__(self, gm: fx.GraphModule, kept: list[dict[fx.Node, Any]], inputs: list[tuple[Any, ...]]) -> None:
        self.gm, self.kept, self.inputs = gm, kept, inputs
        self.nodes = list(gm.graph.nodes)
        self._plans: dict[frozenset[str], tuple[set[fx.Node] | None, set[fx.Node]]] = {}  # per dirty set

    @classmethod
    def build(cls, model: nn.Module, inputs: list[Any], dirty_sets: Iterable[set[str]]) -> ActivationCache | None:
        """Trace ``model`` and keep what partial forwards after changing each of ``dirty_sets`` read; ``None`` when not possible."""
        if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
            return None
        try:
            gm = fx.GraphModule(model, fx_trace(model, what="sensitivity"))
        except TraceError:
            return None
        args = [(x,) for x in inputs]
        probe = cls(gm, [], args)
        keep: set[fx.Node] = set()
        for dirty in dirty_sets:
            down = probe.downstream(dirty)
            if down is not None:
                keep |= probe.needed(down)
        kept = []
        with eval_mode(model), torch.no_grad():
            for i, a in enumerate(args):
                rec = _Recorder(gm, keep)
                try:
                    out = rec.run(*a)
                except Exception:  # noqa: BLE001 - a graph the interpreter cannot run: the full forward serves
                    return None
                if i == 0 and not _equal(out, model(*a)):
                    return None  # the trace does not compute what the model does
                kept.append(rec.kept)
                if _bytes(kept[0]) * len(args) > MAX_CACHE_BYTES:
                    return None
        return cls(gm, kept, args)

    def downstream(self, dirty: set[str]) -> set[fx.Node] | None:
        """The nodes that depend on a changed module; ``None`` when a changed module is not in the graph."""
        if "" in dirty:
            return None
        seeds = {n for n in self.nodes if n.op in ("call_module", "get_attr") and any(_touches(str(n.target), d) for d in dirty)}
        found = {d for d in dirty if any(_touches(str(n.target), d) for n in seeds)}
        if found != dirty or not seeds:
            return None
        down: set[fx.Node] = set()
        for n in self.nodes:  # topological order
            if n in seeds or any(a in down for a in n.all_input_nodes):
                down.add(n)
        return down

    def needed(self, down: set[fx.Node]) -> set[fx.Node]:
        """The unchanged nodes the ``down`` nodes read."""
        return {a for n in down for a in n.all_input_nodes if a not in down}

    def forward(self, work: nn.Module, index: int, dirty: set[str]) -> Any:
        """``work``'s output on batch ``index``, recomputing only the nodes downstream of ``dirty`` when possible."""
        key = frozenset(dirty)
        if key not in self._plans:  # the same for every batch: found once per dirty set
            down = self.downstream(dirty)
            self._plans[key] = (down, set() if down is None else self.needed(down))
        down, needed = self._plans[key]
        kept = self.kept[index]
        if down is None or not needed <= kept.keys():
            return work(*self.inputs[index])
        env = {n: kept.get(n) for n in self.nodes if n not in down}
        return _Partial(self.gm, work).run(*self.inputs[index], initial_env=env)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return False


def _bytes(values: dict[fx.Node, Any]) -> int:
    return sum(v.numel() * v.element_size() for v in values.values() if isinstance(v, torch.Tensor))
