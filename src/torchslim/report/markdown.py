"""The Markdown rendering of a :class:`~torchslim.report.Report`.

Example:
    >>> from torchslim.report import Report, SkippedLayer
    >>> print(to_markdown(Report("demo", skipped=[SkippedLayer("fc3", "last layer kept by default")])))
    # demo
    <BLANKLINE>
    ## Skipped layers
    <BLANKLINE>
    | Layer | Reason |
    |---|---|
    | fc3 | last layer kept by default |
    <BLANKLINE>
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchslim.report.tables import latency_note, layer_table, measurement_table, meta_table, skipped_table, stage_table

if TYPE_CHECKING:
    from torchslim.report.model import Report


def md_cell(text: Any) -> str:
    """``text`` made safe for one table cell: ``|`` and ``\\`` escaped, newlines joined, ``<``/``>`` as entities.

    Example:
        >>> md_cell("a|b <c>")
        'a\\\\|b &lt;c&gt;'
    """
    s = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
    return s.replace("<", "&lt;").replace(">", "&gt;")


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a Markdown table, followed by one blank line."""
    lines = ["| " + " | ".join(md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def to_markdown(report: Report) -> str:
    """The report as Markdown: title, technique, meta, figures, stages, layers and skipped layers.

    Sections without content are left out; the text ends with exactly one newline.
    """
    lines = [f"# {md_cell(report.title)}", ""]
    if report.technique:
        lines += [f"Technique: **{md_cell(report.technique)}**", ""]
    if report.meta:
        lines += md_table(*meta_table(report))
    if report.before is not None or report.after is not None:
        lines += ["## Before / after", ""]
        lines += md_table(*measurement_table(report))
        note = latency_note(report)
        if note:
            lines += [md_cell(note), ""]
    if report.stages:
        lines += ["## Stages", ""] + md_table(*stage_table(report))
    if report.layers:
        lines += ["## Layers", ""] + md_table(*layer_table(report))
    if report.skipped:
        lines += ["## Skipped layers", ""]
        lines += md_table(*skipped_table(report))
    return "\n".join(lines).rstrip("\n") + "\n"
