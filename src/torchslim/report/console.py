"""The terminal rendering: the before/after figures as a ``rich`` table."""

from __future__ import annotations

from rich.table import Table

from torchslim.measure.record import Measurement
from torchslim.report.tables import comparison_rows


def render_console_table(before: Measurement | None, after: Measurement | None) -> Table:
    """The before/after table of every figure as a ``rich`` table for the terminal.

    Example:
        >>> import io
        >>> from rich.console import Console
        >>> model = ts.create_model("lenet300")
        >>> m0 = ts.evaluate(model, example_input=torch.randn(1, 784), with_latency=False)
        >>> console = Console(file=io.StringIO(), width=100)   # Console() prints to the terminal
        >>> console.print(render_console_table(m0, m0))
        >>> "│ Parameters" in console.file.getvalue()
        True
    """
    table = Table(title="Before / after" if before is not None and after is not None else "Measurement")
    table.add_column("Metric", style="bold")
    rows = comparison_rows(before, after)
    show_before, show_after = before is not None, after is not None or before is None
    show_change = show_before and after is not None
    if show_before:
        table.add_column("Before", justify="right")
    if show_after:
        table.add_column("After", justify="right")
    if show_change:
        table.add_column("Change", justify="right")
    for label, b, a, change in rows:
        cells = [label]
        if show_before:
            cells.append(b)
        if show_after:
            cells.append(a)
        if show_change:
            cells.append(change)
        table.add_row(*cells)
    return table
