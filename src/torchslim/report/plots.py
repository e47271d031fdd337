"""The PNG plots of the HTML report, each returned as a ``data:`` URI (or ``None`` when there is nothing to draw).

Figures are drawn on ``matplotlib.figure.Figure`` objects and rendered by Agg
through ``savefig``; pyplot (and its global state) is never touched, and
matplotlib is imported only when a plot is drawn. The same figure gives the
same bytes: no timestamp or software tag is written into the PNG.

Example:
    >>> from torchslim.report import LayerReport
    >>> uri = sparsity_plot([LayerReport("fc1", "Linear", (3, 4), 12, 6, "pruned")])
    >>> uri.startswith("data:image/png;base64,")
    True
    >>> sparsity_plot([]) is None
    True
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING

from torchslim.measure.record import FIELDS, Measurement

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from torchslim.report.model import LayerReport, StageRecord

#: Figures of the normalised before/after plot.
PLOT_FIGURES: tuple[str, ...] = (
    "params",
    "nonzeros",
    "macs",
    "bytes_dense",
    "bytes_sparse",
    "latency_ms",
    "peak_memory_bytes",
)


def plot_label(text: str) -> str:
    """``text`` with ``$`` escaped: no mathtext from layer or stage names."""
    return text.replace("$", r"\$")


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A bare ``Figure`` (not registered with pyplot)."""
    from matplotlib.figure import Figure  # imported on first plot: `import torchslim` stays light

    return Figure(figsize=figsize)


def png_data_uri(fig: Figure) -> str:
    """``fig`` as a 100 dpi PNG ``data:`` URI, without metadata that would vary between runs."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_bytes(fig: Figure) -> bytes:
    """``fig`` as 100 dpi PNG bytes, without metadata that would vary between runs (what :func:`png_data_uri` encodes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def sparsity_plot(layers: list[LayerReport]) -> str | None:
    """Per-layer sparsity bars (before next to after when ``details['sparsity_before']`` exists)."""
    if not layers:
        return None
    names = [plot_label(layer.name) for layer in layers]
    after = [100.0 * layer.sparsity for layer in layers]
    before_raw = [layer.details.get("sparsity_before") for layer in layers]
    has_before = any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in before_raw)
    width = max(6.0, 0.45 * len(layers) + 2.0)
    fig = new_figure(figsize=(min(width, 24.0), 4.0))
    ax = fig.subplots()
    xs = list(range(len(layers)))
    if has_before:
        before = [100.0 * float(v) if isinstance(v, (int, float)) else 0.0 for v in before_raw]
        ax.bar([x - 0.2 for x in xs], before, width=0.4, label="before", color="#9aa5b1")
        ax.bar([x + 0.2 for x in xs], after, width=0.4, label="after", color="#2f6fb0")
        ax.legend()
    else:
        ax.bar(xs, after, width=0.6, label="after", color="#2f6fb0")
    ax.set_xticks(xs)
    ax.set_xticklabels(names, rotation=45 if len(layers) > 4 else 0, ha="right" if len(layers) > 4 else "center")
    ax.set_ylabel("sparsity (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Per-layer sparsity")
    ax.grid(axis="y", alpha=0.3)
    return png_data_uri(fig)


def figures_plot(before: Measurement | None, after: Measurement | None) -> str | None:
    """Key figures after compression, normalised to their value before."""
    if before is None or after is None:
        return None
    labels = {name: label for name, label, _ in FIELDS}
    names, ratios = [], []
    for name in PLOT_FIGURES:
        b, a = getattr(before, name), getattr(after, name)
        if b is None or a is None or b <= 0:
            continue
        names.append(plot_label(labels[name]))
        ratios.append(float(a) / float(b))
    if not names:
        return None
    fig = new_figure(figsize=(7.5, 4.0))
    ax = fig.subplots()
    xs = list(range(len(names)))
    ax.bar([x - 0.2 for x in xs], [1.0] * len(xs), width=0.4, label="before", color="#9aa5b1")
    bars = ax.bar([x + 0.2 for x in xs], ratios, width=0.4, label="after", color="#2f6fb0")
    for bar, ratio in zip(bars, ratios):
        ax.annotate(f"{ratio:.3g}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    ax.set_xticks(xs)
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("relative to before")
    ax.set_title("After / before")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return png_data_uri(fig)


def stages_plot(stages: list[StageRecord]) -> str | None:
    """Accuracy and sparsity after each stage."""
    measured = [s for s in stages if s.measurement is not None]
    if len(measured) < 2:
        return None
    fig = new_figure(figsize=(7.5, 3.5))
    ax = fig.subplots()
    xs = list(range(len(measured)))
    sparsity = [100.0 * s.measurement.sparsity for s in measured if s.measurement is not None]
    lines = ax.plot(xs, sparsity, marker="o", color="#2f6fb0", label="sparsity (%)")
    ax.set_ylabel("sparsity (%)", color="#2f6fb0")
    accuracy = [s.measurement.accuracy for s in measured if s.measurement is not None]
    if all(a is not None for a in accuracy):
        ax2 = ax.twinx()
        acc_pct = [100.0 * float(a) for a in accuracy if a is not None]
        lines += ax2.plot(xs, acc_pct, marker="s", color="#c0392b", label="accuracy (%)")
        ax2.set_ylabel("accuracy (%)", color="#c0392b")
    ax.legend(lines, [str(line.get_label()) for line in lines], loc="upper left", bbox_to_anchor=(1.12, 1.0))
    ax.set_xticks(xs)
    ax.set_xticklabels([plot_label(s.name) for s in measured], rotation=30, ha="right")
    ax.set_title("After each stage")
    ax.grid(alpha=0.3)
    return png_data_uri(fig)
