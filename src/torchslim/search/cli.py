"""``torchslim sensitivity``: the sensitivity analysis from the command line.

The model and data are named as ``torchslim evaluate`` names them (``zoo:NAME``,
``package.module:function`` or ``hf:DIR``; a registered data set or an entry point),
with ``--weights`` for the trained weights. The analysis runs on the data's
validation split and writes into ``--out``: ``sensitivity.json`` (what the search
reads), ``sensitivity.txt`` (the table) and the plots (curves and a heatmap per
analysis). ``torchslim.cli`` declares the command's options (the command starts
without importing torch) and calls :func:`run_sensitivity`.

Example:
    >>> from typer.testing import CliRunner
    >>> from torchslim.cli import app
    >>> "--analyses" in CliRunner().invoke(app, ["sensitivity", "--help"]).output
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from torchslim.data.sources import load_source
from torchslim.data.spec import DataSpec
from torchslim.errors import ConfigError, ConfigIssue, TorchslimError
from torchslim.io import atomic_write_text
from torchslim.pipeline import build_model
from torchslim.search.plots import save_plots
from torchslim.search.sensitivity import SensitivityConfig, sensitivity
from torchslim.zoo.hf import load_hf
from torchslim.zoo.spec import ModelSpec

__all__ = ["run_sensitivity"]

#: config fields named as the options that set them, in error messages
_OPTIONS = {"metric": "--metric", "analyses": "--analyses", "seed": "--seed", "batches": "--batches",
            "batch_size": "--batch-size", "name": "--model", "weights": "--weights", "hf": "--model", "data.name": "--data"}


def _config(metric: str, analyses: str | None, seed: int, batches: int, batch_size: int) -> SensitivityConfig:
    raw: dict[str, Any] = {"metric": metric, "seed": seed, "batches": batches, "batch_size": batch_size}
    if analyses is not None:
        raw["analyses"] = [a.strip() for a in analyses.split(",") if a.strip()]
    return SensitivityConfig.parse(raw)


def _parsed(metric: str, analyses: str | None, seed: int, batches: int, batch_size: int, model: str, weights: Path | None,
            data: str) -> tuple[SensitivityConfig, ModelSpec, DataSpec]:
    """The three specs, or one ConfigError naming every bad option as it was given."""
    issues: list[ConfigIssue] = []
    out: list[Any] = []
    for prefix, parse in (
        ("", lambda: _config(metric, analyses, seed, batches, batch_size)),
        ("", lambda: ModelSpec.parse({"name": model, "weights": str(weights) if weights else None})),
        ("data.", lambda: DataSpec.parse({"name": data})),
    ):
        try:
            out.append(parse())
        except ConfigError as exc:
            issues += [ConfigIssue(_OPTIONS.get(prefix + i.path.split(".")[0], i.path), i.message, i.value) for i in exc.issues]
    if issues:
        raise ConfigError(issues, "the command line")
    return out[0], out[1], out[2]


def run_sensitivity(
    model: str,
    data: str,
    out: Path,
    weights: Path | None = None,
    metric: str = "accuracy",
    analyses: str | None = None,
    seed: int = 0,
    batches: int = 8,
    batch_size: int = 128,
) -> None:
    """Measure each layer's sensitivity to pruning, weight bits and low rank; write the JSON, table and plots."""
    cfg, spec, data_spec = _parsed(metric, analyses, seed, batches, batch_size, model, weights, data)
    if out.exists() and not out.is_dir():
        raise TorchslimError(f"--out {out} is a file, not a directory")
    torch.manual_seed(cfg.seed)
    if spec.hf is not None:
        source = load_hf(spec.hf, spec.task)
        bundle = load_source(data_spec, tokenizer=source.tokenizer, processor=source.processor,
                             label2id=getattr(source.hf_config, "label2id", None))
        net = source.model
    else:
        bundle = load_source(data_spec)
        net = build_model(spec, bundle)
    result = sensitivity(net.eval(), bundle, cfg)
    out.mkdir(parents=True, exist_ok=True)
    path = result.to_json(out / "sensitivity.json")
    table = result.table()
    atomic_write_text(out / "sensitivity.txt", table + "\n")
    plots = save_plots(result, out)
    console = Console()
    console.print(table, markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote {path} ({len(plots)} plots) in {result.wall_s:.1f} s", markup=False, highlight=False)
