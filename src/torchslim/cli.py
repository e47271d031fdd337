"""The ``torchslim`` command: demo, run, validate, evaluate, report, inspect."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from torchslim.errors import ConfigError, TorchslimError

app = typer.Typer(
    name="torchslim",
    help="Make trained PyTorch models smaller and faster, and prove it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
_DEBUG = {"on": False}

F = TypeVar("F", bound=Callable[..., Any])


def _friendly(fn: F) -> F:
    """Turn torchslim errors into one red message and exit code 2 (traceback only with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TorchslimError as exc:
            if _DEBUG["on"]:
                raise
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/] (a run can be continued with --resume)")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False) -> None:
    """torchslim: compression recipes, measurement and reports."""
    _DEBUG["on"] = debug


def _print_result(result: Any) -> None:
    from torchslim.report import render_console_table

    console.print(render_console_table(result.report.before, result.report.after))
    console.print(f"report: {result.output / 'report.md'}, {result.output / 'report.html'}, {result.output / 'report.json'}", soft_wrap=True)


@app.command()
@_friendly
def demo(
    output: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/demo"),
) -> None:
    """Deep Compression in a minute: train LeNet-300-100 on MNIST, prune 92%, share weights, Huffman-code to .tslim."""
    import yaml

    from torchslim.pipeline import run_recipe
    from torchslim.recipe import parse_recipe

    text = resources.files("torchslim.recipes").joinpath("demo.yaml").read_text(encoding="utf-8")
    recipe = parse_recipe(yaml.safe_load(text), source="torchslim/recipes/demo.yaml")
    _print_result(run_recipe(recipe, output=output, overwrite=True))


@app.command()
@_friendly
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    resume: Annotated[bool, typer.Option(help="Continue after the last completed stage.")] = False,
    force: Annotated[bool, typer.Option(help="Clear an existing run directory and start over.")] = False,
    output: Annotated[Path | None, typer.Option(help="Run directory (default: the recipe's).")] = None,
) -> None:
    """Run a recipe: stages, a checkpoint after each, and the report at the end."""
    from torchslim.pipeline import run_recipe

    _print_result(run_recipe(recipe, resume=resume, overwrite=force, output=output))


@app.command()
@_friendly
def validate(recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")]) -> None:
    """Check a recipe without building the model; print every error at once."""
    from torchslim.recipe import load_recipe

    try:
        r = load_recipe(recipe)
    except ConfigError as exc:
        err_console.print(f"[bold red]{len(exc.issues)} error(s)[/] in {recipe}:")
        for issue in exc.issues:
            err_console.print(f"  - {issue}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    console.print(f"{recipe}: valid ({len(r.stages)} stages: {', '.join(s.type for s in r.stages)})", soft_wrap=True)


@app.command()
@_friendly
def evaluate(
    model: Annotated[str, typer.Option(help="zoo:NAME or package.module:function.")],
    data: Annotated[str, typer.Option(help="Registered data set name.")],
    weights: Annotated[Path | None, typer.Option(help="safetensors / torchslim checkpoint / state dict (.pt).")] = None,
    batch_size: Annotated[int, typer.Option(help="Latency batch size.")] = 64,
    threads: Annotated[int | None, typer.Option(help="Threads for latency (default: torch's).")] = None,
    runs: Annotated[int, typer.Option(help="Timed latency runs (median reported).")] = 20,
) -> None:
    """Measure a model: accuracy, parameters, non-zeros, MACs, bytes, latency, peak memory."""
    from torchslim.data import load_data
    from torchslim.measure import FIELDS, format_value
    from torchslim.pipeline import build_model, measure_model
    from torchslim.recipe import MeasureSpec, ModelSpec

    spec = ModelSpec.parse({"name": model, "weights": str(weights) if weights else None}, prefix="--model/--weights")
    bundle = load_data(data)
    net = build_model(spec, bundle)
    m = measure_model(net, bundle, MeasureSpec(latency_batch=batch_size, threads=threads, latency_runs=runs))
    table = Table(title=f"{model} on {data} (test split)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    record = m.to_dict()
    for field, label, kind in FIELDS:
        table.add_row(label, format_value(record.get(field), kind))
    table.add_row("Latency batch / threads / runs", f"{m.latency_batch} / {m.latency_threads} / {m.latency_runs}")
    console.print(table)


@app.command()
@_friendly
def report(run_dir: Annotated[Path, typer.Argument(help="A run directory holding report.json.")]) -> None:
    """Re-render a saved run's report (Markdown, HTML, JSON) and print its table."""
    from torchslim.report import load_report, render_console_table

    path = run_dir / "report.json"
    if not path.exists():
        raise TorchslimError(f"{path} not found (is {run_dir} a completed run?)")
    rep = load_report(path)
    rep.save(run_dir)
    console.print(render_console_table(rep.before, rep.after))


@app.command()
@_friendly
def inspect(
    file: Annotated[Path, typer.Argument(help="A .tslim file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the table as JSON.")] = False,
) -> None:
    """Verify a .tslim file and print its per-layer table (weights kept, bits, bytes, ratio)."""
    import json
    import math

    from torchslim.io.tslim import layer_table, read
    from torchslim.measure import format_value

    f = read(file)
    rows = layer_table(f)
    dense = sum(r.dense_bytes for r in rows)
    if as_json:
        out = {
            "file": str(file),
            "version": f.version,
            "arch": f.arch,
            "file_bytes": f.file_bytes,
            "dense_fp32_bytes": dense,
            "ratio": dense / f.file_bytes,
            "layers": [{**r.__dict__, "ratio": r.ratio} for r in rows],
        }
        console.print_json(json.dumps(out))
        return
    arch = f.arch.get("model", "unnamed architecture")
    table = Table(title=f"{file} (format v{f.version}, {arch})")
    for col, justify in (("layer", "left"), ("weights", "right"), ("kept", "right"), ("weight bits", "right"),
                         ("index bits", "right"), ("encoding", "left"), ("bytes", "right"), ("ratio", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(
            r.layer,
            f"{r.weights:,}",
            f"{100 * r.kept:.1f} %",
            f"{r.weight_bits:.2f}",
            f"{r.index_bits:.2f}" if r.index_bits else "-",
            r.encoding,
            format_value(r.bytes, "bytes"),
            f"{r.ratio:.1f}x" if math.isfinite(r.ratio) else "-",
        )
    overhead = f.file_bytes - sum(r.bytes for r in rows)
    table.add_row("overhead", "", "", "", "", "", format_value(overhead, "bytes"), "")
    weights = sum(r.weights for r in rows)
    table.add_row(
        "total", f"{weights:,}", "", "", "", "", format_value(f.file_bytes, "bytes"), f"{dense / f.file_bytes:.1f}x",
        style="bold",
    )
    console.print(table)
    console.print(f"dense fp32: {format_value(dense, 'bytes')} -> file: {format_value(f.file_bytes, 'bytes')} "
                  f"({dense / f.file_bytes:.1f}x smaller); checksums verified", soft_wrap=True)


def entry() -> None:
    """Console-script entry point."""
    app(prog_name="torchslim")


if __name__ == "__main__":
    sys.exit(entry())
