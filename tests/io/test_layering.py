"""io/ knows no technique: no module of it imports a technique package, at module level or in a function."""

import ast
from pathlib import Path

import torchslim

TECHNIQUES = ("prune", "quant", "fold", "lowrank", "encode", "distill")


def test_io_imports_no_technique():
    root = Path(torchslim.__file__).parent / "io"
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "torchslim" and len(parts) > 1 and parts[1] in TECHNIQUES:
                    offenders.append(f"{path.relative_to(root)}:{node.lineno} imports {name}")
    assert not offenders, offenders
