"""Code shape limits (STYLE.md, issue 18): no file under src/torchslim over 600 lines, no function over 80
lines of code (docstrings, blank lines and comment-only lines not counted; a nested function counts toward
the function around it)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "torchslim"
MAX_FILE_LINES = 600
MAX_FUNCTION_CODE_LINES = 80


def code_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> int:
    """Lines of code of ``fn``: its span without its docstring, blank lines and comment-only lines."""
    doc: set[int] = set()
    first = fn.body[0] if fn.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        doc = set(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    span = range(fn.lineno, (fn.end_lineno or fn.lineno) + 1)
    return sum(1 for i in span if i not in doc and lines[i - 1].strip() and not lines[i - 1].strip().startswith("#"))


def offenders() -> tuple[list[str], list[str]]:
    files, functions = [], []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        rel = path.relative_to(SRC)
        if len(lines) > MAX_FILE_LINES:
            files.append(f"{rel}: {len(lines)} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = code_lines(node, lines)
                if n > MAX_FUNCTION_CODE_LINES:
                    functions.append(f"{rel}:{node.lineno} {node.name}: {n} lines of code")
    return files, functions


def test_no_file_over_600_lines():
    files, _ = offenders()
    assert files == [], "split these along their seams:\n" + "\n".join(files)


def test_no_function_over_80_lines_of_code():
    _, functions = offenders()
    assert functions == [], "split these into named steps:\n" + "\n".join(functions)


def test_the_counter_skips_docstrings_blanks_and_comments():
    src = 'def f():\n    """Doc.\n\n    More."""\n\n    # note\n    x = 1\n    return x\n'
    fn = ast.parse(src).body[0]
    assert isinstance(fn, ast.FunctionDef) and code_lines(fn, src.splitlines()) == 3  # def, x = 1, return
