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


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_time(text: str | None) -> float | None:
    """``90``, ``90s``, ``30m``, ``1.5h`` -> seconds (``None`` stays ``None``).

    >>> parse_time("30m"), parse_time("90"), parse_time(None)
    (1800.0, 90.0, None)
    """
    if text is None:
        return None
    t = text.strip().lower()
    scale = _UNITS.get(t[-1:], None)
    number = t[:-1] if scale is not None else t
    try:
        value = float(number) * (scale or 1.0)
    except ValueError:
        raise ConfigError([ConfigIssue("--time", "must be a number of seconds, or end in s, m or h (30m, 1.5h)", text)],
                          "the command line") from None
    if not 0 < value < 1e7:
        raise ConfigError([ConfigIssue("--time", "must be between 0 and 10,000,000 seconds", text)], "the command line")
    return value


def run_search(
    model: str | None, data: str | None, out: Path, *, weights: Path | None = None, recipe: Path | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``torchslim search``: the head from ``--recipe`` or ``--model/--data/--weights``; the config from the
    recipe's ``search:`` block, overridden by the options given on the command line."""
    from torchslim.recipe import read_recipe_data
    from torchslim.search.api import search
    from torchslim.search.outcome import markdown

    raw: dict[str, Any] = {}
    if recipe is not None:
        data_in = read_recipe_data(recipe)
        if not isinstance(data_in, dict):
            raise ConfigError([ConfigIssue("--recipe", "must be a mapping (a recipe)", str(recipe))], "the command line")
        raw = dict(data_in.get("search") or {})
        head = {k: v for k, v in data_in.items() if k in ("name", "seed", "model", "data", "measure")}
    else:
        if model is None or data is None:
            raise ConfigError([ConfigIssue("--model", "give --model and --data (or --recipe)", model)], "the command line")
        spec: dict[str, Any] = {"name": model}
        if weights is not None:
            spec["weights"] = str(weights)
        head = {"name": "search", "model": spec, "data": {"name": data}}
    raw.update({k: v for k, v in (options or {}).items() if v is not None})
    if out.exists() and not out.is_dir():
        raise TorchslimError(f"--out {out} is a file, not a directory")
    result = search(head, raw, out=out)
    Console().print(markdown(result), markup=False, highlight=False, soft_wrap=True)
    return result
