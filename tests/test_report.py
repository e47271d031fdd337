"""Report: exact JSON round trip, Markdown/HTML content, atomic save, console table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from torchslim.errors import TorchslimError
from torchslim.measure import FIELDS, Measurement, format_value
from torchslim.report import (
    LayerReport,
    Report,
    SkippedLayer,
    StageRecord,
    load_report,
    machine_meta,
    render_console_table,
)

BEFORE = Measurement(
    accuracy=0.9821, params=266_610, nonzeros=266_610, macs=266_200, bytes_dense=1_066_440,
    bytes_sparse=1_066_440, latency_ms=0.512, latency_batch=64, latency_threads=2, latency_runs=20,
    peak_memory_bytes=1_420_744,
)
AFTER = Measurement(
    accuracy=0.9809, params=266_610, nonzeros=21_329, macs=266_200, bytes_dense=1_066_440,
    bytes_sparse=128_337, latency_ms=0.498, latency_batch=64, latency_threads=2, latency_runs=20,
    peak_memory_bytes=1_420_744,
)


def full_report() -> Report:
    return Report(
        title="Prune LeNet-300-100",
        technique="prune",
        layers=[
            LayerReport("fc1", "Linear", (300, 784), 235_200, 18_816, "pruned",
                        {"criterion": "magnitude", "sparsity_before": 0.0}),
            LayerReport("<evil>", "Linear", (100, 300), 30_000, 2_400, "pruned", {"sparsity_before": 0.0}),
            LayerReport("fc3", "Linear", (10, 100), 1_000, 1_000),
        ],
        skipped=[SkippedLayer("fc3", "last layer kept by default")],
        before=BEFORE,
        after=AFTER,
        stages=[
            StageRecord("baseline", "measure", 0.5, BEFORE, {}),
            StageRecord("prune", "prune", 1.25, AFTER, {"sparsity": 0.92, "criterion": "magnitude"}),
            StageRecord("export", "export", 0.1, None, {"path": "model.onnx"}),
        ],
        meta={"model": "zoo:lenet300", "seed": 0, "machine": machine_meta()},
    )


def test_json_round_trip_is_exact(tmp_path: Path) -> None:
    report = full_report()
    assert Report.from_dict(report.to_dict()) == report
    assert Report.from_dict(json.loads(report.to_json())) == report
    report.save(tmp_path)
    assert load_report(tmp_path) == report
    assert load_report(tmp_path / "report.json") == report
    empty = Report("empty")
    assert Report.from_dict(json.loads(empty.to_json())) == empty


def test_load_rejects_foreign_or_newer_files(tmp_path: Path) -> None:
    with pytest.raises(TorchslimError, match="no report"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text('{"title": "x"}')
    with pytest.raises(TorchslimError, match="not a torchslim report"):
        load_report(tmp_path)
    d = Report("x").to_dict()
    d["version"] = 99
    with pytest.raises(TorchslimError, match="version 99"):
        Report.from_dict(d)
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(TorchslimError, match="cannot read"):
        load_report(tmp_path)


def test_non_json_details_raise_a_typed_error() -> None:
    report = Report("bad", layers=[LayerReport("a", "Linear", (1, 1), 1, 1, details={"x": object()})])
    with pytest.raises(TorchslimError, match="not JSON-ready"):
        report.to_json()


def test_markdown_has_a_row_per_figure_with_formatted_values() -> None:
    md = full_report().to_markdown()
    for name, label, kind in FIELDS:
        before, after = format_value(getattr(BEFORE, name), kind), format_value(getattr(AFTER, name), kind)
        assert re.search(rf"^\| {re.escape(label)} \| {re.escape(before)} \| {re.escape(after)} \| ", md, re.M), label
    assert "| Accuracy | 98.21 % | 98.09 % | -0.12 pt |" in md
    assert "| Non-zeros | 266,610 | 21,329 | 12.5x fewer |" in md
    assert "| Bytes (sparse) | 1.02 MiB | 125.33 KiB | 8.3x smaller |" in md
    assert "| Latency (ms/batch) | 0.512 ms | 0.498 ms | 1.03x faster |" in md
    fc1_row = "| fc1 | Linear | 300×784 | 235,200 | 18,816 | 92.00 % | pruned | criterion=magnitude, sparsity_before=0 |"
    assert fc1_row in md
    assert "| fc3 | last layer kept by default |" in md
    assert "| prune | prune | 1.25 | 98.09 % | 21,329 |" in md
    assert "&lt;evil&gt;" in md and "<evil>" not in md
    assert "## Stages" in md and "## Skipped layers" in md


def test_html_is_self_contained_and_escaped() -> None:
    page = full_report().to_html()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count('<img src="data:image/png;base64,') == 3  # figures, stages, layer sparsity
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(link|script)\b", page)
    assert "&lt;evil&gt;" in page and "<evil>" not in page
    for _, label, _ in FIELDS:
        assert f"<td class=\"txt\">{label}</td>" in page.replace("&#x27;", "'")
    assert "98.21 %" in page and "last layer kept by default" in page


def test_report_without_measurements_still_renders(tmp_path: Path) -> None:
    bare = Report("Bare", layers=[LayerReport("fc1", "Linear", (3, 4), 12, 6, "pruned")])
    md, page = bare.to_markdown(), bare.to_html()
    assert "## Before / after" not in md and "| fc1 | Linear | 3×4 | 12 | 6 | 50.00 % | pruned |  |" in md
    assert page.count("data:image/png;base64,") == 1  # per-layer sparsity only
    only_after = Report("After only", after=AFTER)
    assert "| Accuracy | 98.09 % |" in only_after.to_markdown()
    assert Report("Nothing").save(tmp_path)["html"].read_text().endswith("</html>\n")


def test_save_writes_three_files_atomically(tmp_path: Path) -> None:
    out = tmp_path / "run" / "report"
    report = full_report()
    paths = report.save(out)
    assert set(paths) == {"md", "html", "json"}
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "report.md"]
    assert paths["md"].read_text(encoding="utf-8") == report.to_markdown()
    # saving again replaces the files and still leaves no temporary files behind
    Report("second").save(out)
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "report.md"]
    assert load_report(out).title == "second"


def test_console_table() -> None:
    console = Console(width=120, record=True, color_system=None)
    console.print(render_console_table(BEFORE, AFTER))
    text = console.export_text()
    assert "Before" in text and "Change" in text
    assert "98.21 %" in text and "12.5x fewer" in text and "-0.12 pt" in text
    console.print(render_console_table(None, AFTER))
    assert "Change" not in console.export_text()
