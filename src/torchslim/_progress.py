"""The one transient progress bar of the library's long loops: on stderr, shown only on a terminal.

Used by the loops that run a model many times (the accuracy guard's sweep, sensitivity analysis,
perplexity, the language-model methods' blocks); the training loop and the search keep their own
(a loss column, a bar that stays).

Example:
    >>> with progress_bar("layers") as bar:            # not a terminal here: disabled, nothing printed
    ...     task = bar.add_task("layers", total=2)
    ...     bar.advance(task); bar.advance(task)
    >>> bar.disable
    True
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["progress_bar"]


def progress_bar(description: str | None = None, *, enabled: bool = True, elapsed: bool = False) -> Progress:
    """A transient bar: ``description`` (``None``: each task's own, as plain text), the bar, done/total and the
    time remaining (``elapsed``: the time spent instead); disabled unless ``enabled`` and stderr is a terminal."""
    console = Console(stderr=True)
    text = TextColumn(description if description is not None else "{task.description}", markup=False)
    clock = TimeElapsedColumn() if elapsed else TimeRemainingColumn()
    return Progress(text, BarColumn(), MofNCompleteColumn(), clock, console=console, transient=True,
                    disable=not (enabled and console.is_terminal))
