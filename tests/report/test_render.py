"""Report renderings: Markdown and HTML content, the console table."""

from __future__ import annotations

import re
from pathlib import Path

from rich.console import Console

from torchslim.measure import FIELDS, Measurement, format_value
from torchslim.report import LayerReport, Report, render_console_table


def test_markdown_has_a_row_per_figure_with_formatted_values(
    full_report: Report, before: Measurement, after: Measurement
) -> None:
    md = full_report.to_markdown()
    for name, label, kind in FIELDS:
        b, a = format_value(getattr(before, name), kind), format_value(getattr(after, name), kind)
        assert re.search(rf"^\| {re.escape(label)} \| {re.escape(b)} \| {re.escape(a)} \| ", md, re.MULTILINE), label
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


def test_html_is_self_contained_and_escaped(full_report: Report) -> None:
    page = full_report.to_html()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count('<img src="data:image/png;base64,') == 3  # figures, stages, layer sparsity
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(link|script)\b", page)
    assert "&lt;evil&gt;" in page and "<evil>" not in page
    for _, label, _ in FIELDS:
        assert f"<td class=\"txt\">{label}</td>" in page.replace("&#x27;", "'")
    assert "98.21 %" in page and "last layer kept by default" in page


def test_report_without_measurements_still_renders(tmp_path: Path, after: Measurement) -> None:
    bare = Report("Bare", layers=[LayerReport("fc1", "Linear", (3, 4), 12, 6, "pruned")])
    md, page = bare.to_markdown(), bare.to_html()
    assert "## Before / after" not in md and "| fc1 | Linear | 3×4 | 12 | 6 | 50.00 % | pruned |  |" in md
    assert page.count("data:image/png;base64,") == 1  # per-layer sparsity only
    only_after = Report("After only", after=after)
    assert "| Accuracy | 98.09 % |" in only_after.to_markdown()
    assert Report("Nothing").save(tmp_path)["html"].read_text().endswith("</html>\n")


def test_console_table(before: Measurement, after: Measurement) -> None:
    console = Console(width=120, record=True, color_system=None)
    console.print(render_console_table(before, after))
    text = console.export_text()
    assert "Before" in text and "Change" in text
    assert "98.21 %" in text and "12.5x fewer" in text and "-0.12 pt" in text
    console.print(render_console_table(None, after))
    assert "Change" not in console.export_text()
