"""The import layering of torchslim, checked on the source (ARCHITECTURE.md, issue 18).

1. No cycle among torchslim's top-level units (subpackages and top-level modules) on module-level imports.
2. The generic layers (train/, graph/, measure/, io/, report/, ...) import no technique package, anywhere.
3. No technique imports a private (underscore) name or module of another technique, anywhere.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "torchslim"
TECHNIQUES = {"prune", "quant", "fold", "lowrank", "encode", "distill"}
GENERIC = {"train", "graph", "measure", "io", "report", "data", "zoo", "config", "errors", "registry", "targets",
           "budget", "technique", "_compat", "_io", "_progress"}


def _unit(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else "__init__"


def _imports(tree: ast.Module) -> Iterator[tuple[ast.ImportFrom | ast.Import, bool]]:
    """Every import in ``tree`` with whether it runs when the module loads (not inside a function)."""

    def walk(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.ImportFrom | ast.Import, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, not in_function
            yield from walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    yield from walk(tree, False)


def _targets(node: ast.ImportFrom | ast.Import) -> Iterator[tuple[list[str], str | None]]:
    """``(module path parts after 'torchslim', imported name or None)`` for each torchslim import in ``node``."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            parts = alias.name.split(".")
            if parts[0] == "torchslim":
                yield parts[1:], None
    elif node.module and node.level == 0 and node.module.split(".")[0] == "torchslim":
        parts = node.module.split(".")[1:]
        for alias in node.names:
            yield parts, alias.name


def _graph() -> tuple[dict[str, set[str]], list[str], list[str]]:
    edges: dict[str, set[str]] = {}
    generic_bad: list[str] = []
    private_bad: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        unit = _unit(path)
        for node, at_load in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            for parts, name in _targets(node):
                target = parts[0] if parts else "__init__"
                if name is not None and not parts:  # from torchslim import x: x may be a subpackage
                    target = name if (SRC / name).is_dir() or (SRC / f"{name}.py").exists() else "__init__"
                where = f"{path.relative_to(SRC)}:{node.lineno} imports torchslim.{'.'.join(parts)}" + (f".{name}" if name else "")
                if target != unit and at_load:
                    edges.setdefault(unit, set()).add(target)
                if unit in GENERIC and target in TECHNIQUES:
                    generic_bad.append(where)
                if unit in TECHNIQUES and target in TECHNIQUES and target != unit:
                    if any(p.startswith("_") for p in parts[1:]) or (name or "").startswith("_"):
                        private_bad.append(where)
    return edges, generic_bad, private_bad


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_among_subpackages():
    edges, _, _ = _graph()
    assert _cycles(edges) == [], "module-level import cycles among torchslim's units: " + repr(_cycles(edges))


def test_generic_layers_import_no_technique():
    _, generic_bad, _ = _graph()
    assert generic_bad == [], "a generic layer imports a technique:\n" + "\n".join(generic_bad)


def test_no_technique_imports_a_private_name_of_another():
    _, _, private_bad = _graph()
    assert private_bad == [], "a technique imports another technique's private names:\n" + "\n".join(private_bad)


def test_the_checks_catch_what_they_claim_to():
    # a cycle, a generic layer reaching into a technique, a private cross-technique import: each is found
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    tree = ast.parse("import os\ndef f():\n    from torchslim.quant.ptq import _transplant\nfrom torchslim.prune import x\n")
    found = [(list(_targets(n)), at_load) for n, at_load in _imports(tree)]
    assert found == [([], True), ([(["quant", "ptq"], "_transplant")], False), ([(["prune"], "x")], True)]
