"""The HTML rendering of a :class:`~torchslim.report.Report`: ONE self-contained page.

The page holds the Markdown tables plus inline PNG plots (per-layer sparsity,
after/before key figures, per-stage sparsity and accuracy) as base64 ``data:``
URIs; no CSS, script, font or image is fetched from anywhere.

Example:
    >>> from torchslim.report import Report
    >>> page = to_html(Report("a <b>"))
    >>> page.splitlines()[2]
    '<title>a &lt;b&gt;</title>'
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from torchslim.report.plots import figures_plot, sparsity_plot, stages_plot
from torchslim.report.tables import latency_note, layer_table, measurement_table, meta_table, skipped_table, stage_table

if TYPE_CHECKING:
    from torchslim.report.model import Report

#: The page's whole style sheet, inlined in ``<style>``.
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1100px;
color:#1f2933;padding:0 1em}
h1{border-bottom:2px solid #2f6fb0;padding-bottom:.2em}h2{margin-top:1.6em;color:#2f6fb0}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #cbd2d9;padding:.3em .6em}th{background:#eef2f7;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.txt{text-align:left}
tbody tr:nth-child(even){background:#f8fafc}img{max-width:100%;display:block;margin:.8em 0}
.muted{color:#616e7c}
"""


def html_table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    """An escaped ``<table>``; cells from column ``numeric_from`` on are right-aligned (class ``num``).

    Example:
        >>> html_table(["Layer", "Params"], [["<a>", "12"]])
        '<table><thead><tr><th>Layer</th><th>Params</th></tr></thead><tbody><tr><td class="txt">&lt;a&gt;</td><td class="num">12</td></tr></tbody></table>'
    """
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{"num" if i >= numeric_from else "txt"}">{html.escape(str(c))}</td>' for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(uri: str | None, alt: str) -> list[str]:
    return [] if not uri else [f'<img src="{uri}" alt="{alt}">']


def _body(report: Report) -> list[str]:
    """The page's sections after the title, each with its plot."""
    parts: list[str] = []
    if report.technique:
        parts.append(f"<p>Technique: <strong>{html.escape(report.technique)}</strong></p>")
    if report.meta:
        parts.append(html_table(*meta_table(report), numeric_from=2))
    if report.before is not None or report.after is not None:
        parts.append("<h2>Before / after</h2>")
        parts.append(html_table(*measurement_table(report)))
        note = latency_note(report)
        if note:
            parts.append(f'<p class="muted">{html.escape(note)}</p>')
        parts += _img(figures_plot(report.before, report.after), "key figures after compression relative to before")
    if report.stages:
        parts.append("<h2>Stages</h2>")
        parts.append(html_table(*stage_table(report), numeric_from=2))
        parts += _img(stages_plot(report.stages), "sparsity and accuracy after each stage")
    if report.layers:
        parts.append("<h2>Layers</h2>")
        parts.append(html_table(*layer_table(report), numeric_from=3))
        parts += _img(sparsity_plot(report.layers), "per-layer sparsity")
    if report.skipped:
        parts.append("<h2>Skipped layers</h2>")
        parts.append(html_table(*skipped_table(report), numeric_from=2))
    return parts


def to_html(report: Report) -> str:
    """The report as one self-contained HTML page (ends with exactly one newline)."""
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(report.title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{esc(report.title)}</h1>",
    ]
    parts += _body(report)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
