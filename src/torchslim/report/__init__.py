"""The report of a run or a verb: what changed, layer by layer, with the proof.

A :class:`Report` holds the before/after :class:`~torchslim.measure.Measurement`,
one :class:`LayerReport` per layer touched, every :class:`SkippedLayer` with its
reason, one :class:`StageRecord` per pipeline stage and free-form ``meta`` (model,
data, seed, machine, date...). It renders to Markdown, to ONE self-contained HTML
page (tables plus inline PNG plots, no external resource) and to JSON, which
round-trips exactly.

The package: :mod:`~torchslim.report.model` (the data and its JSON),
:mod:`~torchslim.report.tables` (the text of every table),
:mod:`~torchslim.report.markdown`, :mod:`~torchslim.report.html`,
:mod:`~torchslim.report.plots` and :mod:`~torchslim.report.console` (the
renderings), :mod:`~torchslim.report.io` (the files), :mod:`~torchslim.report.coverage`
(no silent skip: :func:`unaccounted_parameters` checks a report accounts for every parameter).

Example:
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> model = ts.create_model("lenet300")
    >>> x = torch.randn(1, 784)
    >>> m0 = ts.evaluate(model, example_input=x, with_latency=False)
    >>> _ = ts.prune_(model, {"sparsity": 0.9, "keep_first_last": False})
    >>> m1 = ts.evaluate(model, example_input=x, with_latency=False)
    >>> report = Report("Prune LeNet-300-100", technique="prune", before=m0, after=m1)
    >>> paths = report.save(f"{tmp.name}/lenet300")
    >>> {kind: path.name for kind, path in paths.items()}
    {'md': 'report.md', 'html': 'report.html', 'json': 'report.json'}
    >>> tmp.cleanup()
"""

from torchslim.report.console import render_console_table
from torchslim.report.coverage import skip_reason, unaccounted_parameters, unlisted_layers
from torchslim.report.io import REPORT_FILES
from torchslim.report.model import (
    REPORT_FORMAT,
    REPORT_VERSION,
    LayerReport,
    Report,
    SkippedLayer,
    StageRecord,
    load_report,
    machine_meta,
)
from torchslim.report.tables import comparison_rows

__all__ = [
    "REPORT_FILES",
    "REPORT_FORMAT",
    "REPORT_VERSION",
    "LayerReport",
    "Report",
    "SkippedLayer",
    "StageRecord",
    "comparison_rows",
    "load_report",
    "machine_meta",
    "render_console_table",
    "skip_reason",
    "unaccounted_parameters",
    "unlisted_layers",
]
