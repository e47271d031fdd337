"""Recipe mutants through ``load_recipe`` and ``torchslim validate FILE`` (issue 19, acceptance 1).

Each example takes a valid recipe, mutates its data (keys, values, types, nesting: huge
and non-finite numbers, long, unicode and markup strings, hostile names and entry points),
writes it as YAML, mutates the text (syntax, aliases and anchors, tags, duplicated lines,
deep nesting, non-UTF-8 bytes) and checks that both ``load_recipe`` and the CLI end in a
valid recipe (exit 0) or one clean error (``ConfigError``, exit 2): never another exception
or a traceback, each within 5 s, the process's peak memory bounded.
"""

from __future__ import annotations

import copy
import os
import resource
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from torchslim.cli import app
from torchslim.errors import ConfigError
from torchslim.recipe import Recipe, load_recipe, parse_recipe

SCALE = max(1, int(os.environ.get("TORCHSLIM_FUZZ_SCALE", "1")))
BASE_CASES = 500
MAX_SECONDS = 5.0
MAX_GROWTH_MB = 100.0
RUNNER = CliRunner()

BASE: dict[str, Any] = {
    "version": 1,
    "name": "fuzz",
    "seed": 0,
    "model": {"name": "zoo:mlp", "args": {"hidden": [16]}},
    "data": {"name": "digits", "val_size": 100, "jitter": 1},
    "measure": {"eval_batch": 256, "latency_batch": 8, "latency_runs": 3, "threads": 1},
    "output": "runs/fuzz",
    "stages": [
        {"type": "train", "epochs": 1, "lr": 0.1, "batch_size": 32, "name": "warm up", "schedule": "cosine"},
        {"type": "prune", "sparsity": 0.5, "keep_first_last": False},
        {"type": "quantize", "weight": {"bits": 8}, "calibration": {"batches": 2, "batch_size": 16, "seed": 0}},
        {"type": "share", "bits": 4, "finetune": {"epochs": 1, "lr": 0.01}},
        {"type": "distill", "teacher": {"name": "zoo:mlp", "args": {"hidden": [32]}}, "epochs": 1, "temperature": 4.0},
        {"type": "encode", "file": "model.tslim"},
    ],
}
KEYS = sorted({"type", "name", "epochs", "lr", "seed", "args", "hidden", "in_features", "threads", "latency_runs", "file",
               "calibration", "batches", "finetune", "teacher", "weights", "output", "stages", "model", "data", "version",
               "sparsity", "bits", "<<", "epochss", "in_featurs"})
STRINGS = [
    "[/]", "[bold red]x[/]", "a\x00b", "\x1b[2J", "../x", "..", ".", "a/b", "a\\b", "/etc/passwd", "/dev/zero", "x" * 300,
    "x" * 5000, "a\u202eb", "\u00e9" * 120, "zoo:lenet5", "zoo:lenet300", "zoo:minilm", "zoo:nope", "os:system",
    "math:pi", "builtins:eval", "no_such_pkg.mod:fn", "torchslim.pipeline:run_recipe", "torchslim.zoo.lenet:lenet5",
    "digits", "mnist", "state.json", "train", "prune", "encode", "distill", "initial", "", " ", "~", "null", "yes", "on",
    "2020-13-45", "0x_", "1e30", "nan", "inf", "\ufeff", "\U0001f600" * 10,
]
NUMBERS = [2**63, 2**64, -(2**63) - 1, 10**40, 2**32, 2**32 - 1, 2**31, 0, -1, 1, 10**12, 1e308, -1e308, 1e-308, 5e-324,
           float("nan"), float("inf"), float("-inf"), 1e12, 1e13, 0.5, -0.0]
SCALARS = st.one_of(
    st.sampled_from(NUMBERS),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(STRINGS),
    st.text(max_size=40),
    st.booleans(),
    st.none(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
LAUGHS = "lol0: &l0 [a, a, a, a, a, a, a, a, a, a]\n" + "".join(
    f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 8)
)
SNIPPETS = [
    "&a ", "*a", "<<: *a\n", "\n  - ", ": ", "[", "]", "{", "}", "'", '"', ",", "!!binary ", "!!int ", "!!float ",
    "!!bool ", "!!timestamp ", "!!set ", "!!python/object:os.system ", "? ", "- ", "\t", "%YAML 1.1\n", "---\n", "...\n",
    "#", "~", "9" * 5000, "1e999", ".nan", "-.inf", "0x_", "0b", "1:2:3", "2020-13-45", "[" * 300, "{a: " * 200,
    "\ufeff", "\x00", "\x1b[2J", "[/]", "\u202e", "\\", "\\x00", "&", "*", "|\n", ">\n", "\u2028",
]


def _spots(node: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """Every mapping and list in ``node``, with its path."""
    found = [(path, node)] if isinstance(node, (dict, list)) else []
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, child in children:
        found += _spots(child, (*path, key))
    return found


def mutate_data(draw: Any, recipe: dict[str, Any]) -> Any:
    """One change to the recipe data: a value replaced, a key removed, added, renamed or retyped."""
    _, node = draw(st.sampled_from(_spots(recipe)))
    op = draw(st.sampled_from(["set", "set", "delete", "add", "rename", "wrap", "replace_root"]))
    if op == "replace_root":
        return draw(st.one_of(VALUES, st.just(recipe)))
    if isinstance(node, dict):
        key = draw(st.sampled_from(sorted(node, key=str))) if node else None
        if op in ("set", "wrap") and key is not None:
            node[key] = [node[key]] if op == "wrap" else draw(VALUES)
        elif op == "delete" and key is not None:
            del node[key]
        elif op == "rename" and key is not None:
            node[draw(st.sampled_from(KEYS) | st.text(max_size=8))] = node.pop(key)
        else:
            node[draw(st.sampled_from(KEYS) | st.text(max_size=8))] = draw(VALUES)
    elif node:
        i = draw(st.integers(0, len(node) - 1))
        if op == "delete":
            del node[i]
        elif op == "add":
            node.insert(i, draw(VALUES | st.just(copy.deepcopy(node[i]))))
        else:
            node[i] = [node[i]] if op == "wrap" else draw(VALUES)
    return recipe


def mutate_text(draw: Any, text: str) -> str:
    """One change to the YAML text: a snippet inserted, a span deleted, a line duplicated, a character replaced."""
    op = draw(st.sampled_from(["insert", "delete", "duplicate_line", "replace_char", "append", "laughs"]))
    at = draw(st.integers(0, len(text)))
    if op == "insert":
        return text[:at] + draw(st.sampled_from(SNIPPETS) | st.text(max_size=10)) + text[at:]
    if op == "delete":
        return text[:at] + text[at + draw(st.integers(1, 40)):]
    if op == "duplicate_line":
        lines = text.splitlines(keepends=True) or [""]
        i = draw(st.integers(0, len(lines) - 1))
        return "".join(lines[: i + 1] + lines[i:])
    if op == "replace_char" and text:
        at = min(at, len(text) - 1)
        return text[:at] + draw(st.characters()) + text[at + 1:]
    if op == "laughs":
        return LAUGHS + text
    return text + draw(st.sampled_from(SNIPPETS))


@st.composite
def recipe_files(draw: Any) -> bytes:
    """A mutated recipe, as the bytes of a file."""
    data: Any = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(0, 3))):
        data = mutate_data(draw, data) if isinstance(data, (dict, list)) else draw(VALUES)
    try:
        text = yaml.safe_dump(data, allow_unicode=draw(st.booleans()), default_flow_style=draw(st.sampled_from([None, True, False])))
    except yaml.YAMLError:  # PyYAML cannot write some values (lone surrogates...): the text mutations still apply
        text = yaml.safe_dump(BASE)
    for _ in range(draw(st.integers(0, 3))):
        text = mutate_text(draw, text)
    raw = text.encode("utf-8", "surrogatepass")  # a lone surrogate makes the file non-UTF-8: refused as such
    if draw(st.integers(0, 19)) == 0:
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(min_size=1, max_size=4)) + raw[at:]
    return raw


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@pytest.fixture(scope="module")
def rss_limit_mb() -> float:
    """The process stays under 500 MB when the fuzz tests run alone; inside the whole suite, whose earlier
    tests already raised the peak, no mutant may raise it by more than 150 MB."""
    return max(500.0, peak_rss_mb() + 150.0)


def test_the_base_recipe_is_valid():
    assert isinstance(parse_recipe(BASE), Recipe)


@settings(max_examples=BASE_CASES * SCALE)
@given(raw=recipe_files())
def test_recipe_mutants_end_valid_or_in_one_clean_error(raw: bytes, tmp_path: Path, rss_limit_mb: float) -> None:
    path = tmp_path / "mutant.yaml"
    path.write_bytes(raw)
    peak_before = peak_rss_mb()
    t0 = time.perf_counter()
    try:
        load_recipe(path)
        valid = True
    except ConfigError as exc:
        valid = False
        assert exc.issues and all(str(issue) for issue in exc.issues)
        assert str(exc)  # the message renders (no huge integer, no unprintable value breaks it)
    res = RUNNER.invoke(app, ["validate", str(path)])
    seconds = time.perf_counter() - t0
    assert res.exception is None or isinstance(res.exception, SystemExit), f"{type(res.exception).__name__}: {res.exception}"
    assert res.exit_code == (0 if valid else 2), res.output
    assert "Traceback" not in res.output
    assert ("valid (" in res.output) if valid else ("error(s) in" in res.output)
    assert seconds < MAX_SECONDS, f"{seconds:.1f} s"
    # the peak is a high-water mark: a mutant that raises it is the one that allocated (checked per mutant,
    # so the failing one is the one reported), and the process as a whole stays under the limit
    assert peak_rss_mb() - peak_before < MAX_GROWTH_MB, f"this mutant raised peak RSS by {peak_rss_mb() - peak_before:.0f} MB"
    assert peak_rss_mb() < rss_limit_mb, f"peak RSS {peak_rss_mb():.0f} MB"
