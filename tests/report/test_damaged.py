"""A damaged report.json (deeply nested, huge integers, wrong-typed fields) is one TorchslimError naming the field,
never a traceback from loading or rendering (issue 19)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from torchslim.cli import app
from torchslim.errors import TorchslimError
from torchslim.report import Report, load_report, render_console_table

runner = CliRunner()
HOSTILE: list[Any] = [None, True, "x", -1, 2**62, 2**63, 1.5, 1e308, [], {"k": None}]


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (a tuple of keys and indices) into a JSON value."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


def replaced(data: Any, path: tuple, new: Any) -> Any:
    data = json.loads(json.dumps(data))
    node = data
    for key in path[:-1]:
        node = node[key]
    if new is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = new
    return data


def render(report: Report) -> None:
    report.to_markdown()
    Console(file=io.StringIO(), width=120).print(render_console_table(report.before, report.after))


def test_every_field_replaced_by_a_hostile_value_loads_or_is_one_clean_error(full_report: Report) -> None:
    data = full_report.to_dict()
    tried = refused = 0
    for path in paths(data):
        for new in [*HOSTILE, KeyError]:
            if new is KeyError and isinstance(path[-1], int):
                continue
            text = json.dumps(replaced(data, path, new))
            tried += 1
            try:
                report = Report.from_dict(json.loads(text))
            except TorchslimError:
                refused += 1
                continue
            render(report)
    assert tried > 1000 and 0 < refused < tried


def _nest(depth: int) -> str:
    return "[" * depth + "]" * depth


DAMAGED = {
    "nested 100,000 deep": lambda d: json.dumps(d)[:-1] + ', "meta": {"x": ' + _nest(100_000) + "}}",
    "nested 100 deep in meta": lambda d: json.dumps({**d, "meta": {"x": json.loads(_nest(100))}}),
    "an integer of 5,000 digits": lambda d: json.dumps(d)[:-1] + ', "meta": {"x": ' + "7" * 5000 + "}}",
    "an integer of 4,000 digits": lambda d: json.dumps({**d, "meta": {"x": 10**3999}}),
    "params of 100 digits": lambda d: json.dumps(replaced(d, ("before", "params"), 10**100)),
    "title a list": lambda d: json.dumps({**d, "title": ["a"]}),
    "layers a mapping": lambda d: json.dumps({**d, "layers": {"fc1": {}}}),
    "a layer's shape of strings": lambda d: json.dumps(replaced(d, ("layers", 0, "shape"), ["3", "4"])),
    "a layer's params a float": lambda d: json.dumps(replaced(d, ("layers", 0, "params"), 1.5)),
    "a layer's details a list": lambda d: json.dumps(replaced(d, ("layers", 0, "details"), [1])),
    "a stage's seconds a string": lambda d: json.dumps(replaced(d, ("stages", 0, "seconds"), "fast")),
    "a stage's seconds infinite": lambda d: json.dumps(replaced(d, ("stages", 0, "seconds"), 1e400)),
    "accuracy NaN": lambda d: json.dumps(replaced(d, ("after", "accuracy"), float("nan"))),
    "before a number": lambda d: json.dumps({**d, "before": 3}),
    "skipped of strings": lambda d: json.dumps({**d, "skipped": ["fc3"]}),
    "meta a list": lambda d: json.dumps({**d, "meta": [1]}),
    "not UTF-8": lambda d: b"\xff\xfe" + json.dumps(d).encode("utf-16-le"),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_report_on_a_damaged_report_json_is_one_clean_error(tmp_path: Path, full_report: Report, case: str) -> None:
    text = DAMAGED[case](full_report.to_dict())
    path = tmp_path / "report.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    with pytest.raises(TorchslimError) as err:
        load_report(tmp_path)
    assert "report" in str(err.value)
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert isinstance(res.exception, SystemExit)


def test_errors_name_the_field(full_report: Report) -> None:
    d = full_report.to_dict()
    cases = [
        (replaced(d, ("layers", 1, "params"), "many"), "layer '<evil>'.*'params' must be an integer, got str"),
        (replaced(d, ("stages", 1, "seconds"), None), "stage 'prune'.*'seconds' must be a number, got null"),
        (replaced(d, ("after", "accuracy"), float("inf")), "'after'.*'accuracy' must be finite"),
        (replaced(d, ("meta", "seed"), 2**64), r"meta\.seed is an integer of 65 bits"),
        ({**d, "title": 7}, "the report's 'title' must be a string, got int"),
    ]
    for data, pattern in cases:
        with pytest.raises(TorchslimError, match=pattern):
            Report.from_dict(data)
