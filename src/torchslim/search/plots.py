"""Plots of a sensitivity result: per analysis, the metric against the setting (a line per unit) and a heatmap.

Drawn like the report's plots (:mod:`torchslim.report.plots`): bare matplotlib
figures, no pyplot state, the same result gives the same PNG bytes.

Example:
    >>> from torchslim.search.result import AnalysisResult, OptionResult, SensitivityResult, UnitResult
    >>> opts = [OptionResult(setting=s, status="ok", accuracy=a, sqnr_db=10.0) for s, a in ((0.5, 0.9), (0.9, 0.6))]
    >>> unit = UnitResult(name="fc1", kind="Linear", layers=["fc1"], params=10, bytes=40, options=opts)
    >>> result = SensitivityResult(model="MLP", metric="accuracy", analyses=[
    ...     AnalysisResult(name="unstructured", setting="sparsity", settings=[0.5, 0.9], units=[unit])])
    >>> curves_plot(result, "unstructured").startswith("data:image/png;base64,")
    True
    >>> heatmap_plot(result, "unstructured").startswith("data:image/png;base64,")
    True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from torchslim.io import atomic_write_bytes
from torchslim.report.plots import new_figure, plot_label, png_bytes, png_data_uri
from torchslim.search.result import AnalysisResult, SensitivityResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["curves_figure", "curves_plot", "heatmap_figure", "heatmap_plot", "save_plots"]

_LABELS = {"accuracy": "accuracy (%)", "loss": "loss", "sqnr": "output SQNR (dB)"}


def _value(result: SensitivityResult, v: float | None) -> float | None:
    return None if v is None else (100.0 * v if result.metric == "accuracy" else v)


def curves_figure(result: SensitivityResult, name: str) -> Figure | None:
    """The figure of :func:`curves_plot` (``None`` when no option was measured)."""
    a: AnalysisResult = result.analysis(name)
    if not any(o.status == "ok" for u in a.units for o in u.options):
        return None
    fig = new_figure(figsize=(7.0, 4.0))
    ax = fig.subplots()
    for unit in a.units:
        values = [(o.setting, _value(result, o.metric(result.metric))) for o in unit.options if o.status == "ok"]
        points = [(s, v) for s, v in values if v is not None]
        if points:
            ax.plot([s for s, _ in points], [v for _, v in points], marker="o", label=plot_label(unit.name))
    base = result.baseline.accuracy if result.metric == "accuracy" else result.baseline.loss
    shown = _value(result, base) if result.metric != "sqnr" else None
    if shown is not None:
        ax.axhline(shown, color="#555555", linestyle="--", linewidth=1, label="unchanged")
    if a.name in ("bits", "lowrank"):
        ax.invert_xaxis()  # stronger to the right
    ax.set_xlabel(a.setting)
    ax.set_ylabel(_LABELS[result.metric])
    ax.set_title(f"Sensitivity: {a.name}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    return fig


def heatmap_figure(result: SensitivityResult, name: str) -> Figure | None:
    """The figure of :func:`heatmap_plot` (``None`` when the analysis has no unit)."""
    import numpy as np
    from matplotlib import colormaps

    a = result.analysis(name)
    if not a.units:
        return None
    grid = np.full((len(a.units), len(a.settings)), np.nan)
    for i, unit in enumerate(a.units):
        for j, o in enumerate(unit.options):
            v = _value(result, o.metric(result.metric)) if o.status == "ok" else None
            grid[i, j] = np.nan if v is None else v
    fig = new_figure(figsize=(1.2 * len(a.settings) + 3.0, 0.4 * len(a.units) + 1.8))
    ax = fig.subplots()
    cmap = colormaps["viridis_r" if result.metric == "loss" else "viridis"].with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap)
    for i, unit in enumerate(a.units):
        for j, o in enumerate(unit.options):
            v = grid[i, j]
            text = "x" if o.status != "ok" else ("-" if np.isnan(v) else f"{v:.3g}")
            shade = 0.0 if np.isnan(v) else float(image.norm(float(v)))  # type: ignore[arg-type]
            light = shade > 0.5 if result.metric != "loss" else shade < 0.5  # viridis is light at the top
            ax.text(j, i, text, ha="center", va="center", fontsize="small", color="#222222" if np.isnan(v) or light else "white")
    ax.set_xticks(range(len(a.settings)))
    ax.set_xticklabels([f"{s:g}" for s in a.settings])
    ax.set_yticks(range(len(a.units)))
    ax.set_yticklabels([plot_label(u.name) for u in a.units])
    ax.set_xlabel(a.setting)
    ax.set_title(f"{a.name}: {_LABELS[result.metric]} (x: refused or failed)")
    fig.colorbar(image, ax=ax)
    return fig


def curves_plot(result: SensitivityResult, name: str) -> str | None:
    """Analysis ``name``: the metric against the setting, a line per unit, as a PNG ``data:`` URI."""
    fig = curves_figure(result, name)
    return None if fig is None else png_data_uri(fig)


def heatmap_plot(result: SensitivityResult, name: str) -> str | None:
    """Analysis ``name``: a unit × setting heatmap of the metric (refused cells grey), as a PNG ``data:`` URI."""
    fig = heatmap_figure(result, name)
    return None if fig is None else png_data_uri(fig)


def save_plots(result: SensitivityResult, directory: str | os.PathLike[str]) -> list[Path]:
    """Write ``sensitivity_<analysis>_curves.png`` and ``..._heatmap.png`` for every analysis (atomically)."""
    out = []
    for a in result.analyses:
        for kind, draw in (("curves", curves_figure), ("heatmap", heatmap_figure)):
            fig = draw(result, a.name)
            if fig is not None:
                out.append(atomic_write_bytes(Path(directory) / f"sensitivity_{a.name}_{kind}.png", png_bytes(fig)))
    return out
