"""The ``torchslim`` command: demo, run, validate, evaluate, report, inspect, sensitivity, search.

Exit codes: 0 success; 2 bad input or a refusal (an invalid recipe, a command-line
value out of range, a file that does not fit: one message, no traceback); 130
interrupted (Ctrl-C; a run can be continued with ``--resume``); 1 an unexpected
error, a bug, with its traceback. ``--debug`` shows the traceback of every error.
Everything a user or a file supplies (names, paths, messages) is printed as plain
text: no console markup is interpreted, control characters are shown escaped.
"""

from __future__ import annotations

import functools
import os
import stat
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from torchslim.errors import ConfigError, ConfigIssue, TorchslimError

if TYPE_CHECKING:  # the command starts without importing torch
    from torch import nn

    from torchslim.data import DataBundle
    from torchslim.zoo.spec import ModelSpec

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
#: at most this many of a recipe's errors are printed (then how many more there are)
MAX_SHOWN_ISSUES = 100
MAX_SHOWN_CHARS = 2000  # of one printed error
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(9), *range(11, 32), 127, *range(0x80, 0xA0))}  # not tab, newline


def plain(text: Any, limit: int = MAX_SHOWN_CHARS) -> str:
    """``text`` made safe to print: control characters (but tab and newline) escaped, lone surrogates backslashed, cut.

    Print it with markup off (or through :func:`rich.markup.escape`): it is plain text.

    Example:
        >>> plain("stage [/]\\x1b[2J")
        'stage [/]\\\\x1b[2J'
        >>> plain("x" * 30, limit=10)
        'xxxxxxxxxx... (30 characters)'
    """
    text = str(text)
    shown = text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"
    return shown.translate(_CONTROL).encode("utf-8", "backslashreplace").decode("utf-8")


def _error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def print_config_error(exc: ConfigError, what: Any) -> None:
    """Print a recipe's or a config's errors: the first :data:`MAX_SHOWN_ISSUES`, then how many more."""
    issues = exc.issues
    err_console.print(f"[bold red]{len(issues)} error(s)[/] in {escape(plain(what, 300))}:", highlight=False, soft_wrap=True)
    for issue in issues[:MAX_SHOWN_ISSUES]:
        err_console.print(f"  - {plain(issue)}", markup=False, highlight=False, soft_wrap=True)
    if len(issues) > MAX_SHOWN_ISSUES:
        err_console.print(f"  ... and {len(issues) - MAX_SHOWN_ISSUES} more", markup=False, highlight=False)


def _friendly(fn: F) -> F:
    """Turn torchslim errors into one red message and exit code 2 (traceback only with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            if _DEBUG["on"]:
                raise
            print_config_error(exc, exc.source or "config")
            raise typer.Exit(2) from None
        except TorchslimError as exc:
            if _DEBUG["on"]:
                raise
            _error(plain(exc, 20 * MAX_SHOWN_CHARS))
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
    files = ", ".join(plain(result.output / name, 500) for name in ("report.md", "report.html", "report.json"))
    console.print(f"report: {files}", markup=False, highlight=False, soft_wrap=True)


def _refuse_file(path: Path | str | None, what: str) -> None:
    """Refuse a run directory that names an existing file (what is absent or unreadable, the run reports)."""
    if path is None:
        return
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return
    if not stat.S_ISDIR(mode):
        raise TorchslimError(f"{what} {plain(path, 500)} is a file, not a directory: name a run directory")


def _plain_console() -> Console:
    """The console a run logs to: stage names and paths are plain text, never markup."""
    return Console(stderr=True, markup=False, highlight=False)


@app.command()
@_friendly
def demo(
    output: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/demo"),
) -> None:
    """Deep Compression in a minute: train LeNet-300-100 on MNIST, prune 92%, share weights, Huffman-code to .tslim."""
    import yaml

    from torchslim.pipeline import run_recipe
    from torchslim.recipe import parse_recipe

    _refuse_file(output, "--output")
    text = resources.files("torchslim.recipes").joinpath("demo.yaml").read_text(encoding="utf-8")
    recipe = parse_recipe(yaml.safe_load(text), source="torchslim/recipes/demo.yaml")
    _print_result(run_recipe(recipe, output=output, overwrite=True, console=_plain_console()))


@app.command()
@_friendly
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    resume: Annotated[bool, typer.Option(help="Continue after the last completed stage.")] = False,
    force: Annotated[bool, typer.Option(help="Delete the files this run directory's manifest lists and start over; refused when anything else is there.")] = False,
    output: Annotated[Path | None, typer.Option(help="Run directory (default: the recipe's).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N or auto (overrides the recipe's device).")] = None,
) -> None:
    """Run a recipe: stages, a checkpoint after each, and the report at the end."""
    from torchslim.pipeline import run_recipe
    from torchslim.recipe import load_recipe

    _refuse_file(output, "--output")
    _check_device(device)
    loaded = load_recipe(recipe)
    if output is None:
        _refuse_file(loaded.output, "the recipe's output")
    if loaded.search is not None:  # stages, then the search from their result (docs/search.md)
        from torchslim.search.block import run_searched
        from torchslim.search.outcome import markdown

        found = run_searched(loaded, output=output, resume=resume, overwrite=force, console=_plain_console(), device=device)
        Console().print(markdown(found), markup=False, highlight=False, soft_wrap=True)  # the tables: stdout
        return
    _print_result(run_recipe(loaded, resume=resume, overwrite=force, output=output, console=_plain_console(), device=device))


def _check_device(device: str | None) -> None:
    """Refuse a ``--device`` that is not a device name (whether it is present is checked when the run starts)."""
    from torchslim.recipe import DEVICE, DEVICES

    if device is not None and not DEVICE.fullmatch(device):
        raise ConfigError([ConfigIssue("--device", f"unknown device; allowed: {DEVICES}", device)], "the command line")


@app.command()
@_friendly
def validate(recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")]) -> None:
    """Check a recipe without building the model; print every error at once."""
    from torchslim.recipe import load_recipe

    try:
        r = load_recipe(recipe)
    except ConfigError as exc:
        print_config_error(exc, recipe)
        raise typer.Exit(2) from None
    summary = f"{plain(recipe, 500)}: valid ({len(r.stages)} stages: {', '.join(s.type for s in r.stages)})"
    console.print(summary, markup=False, highlight=False, soft_wrap=True)


@app.command()
@_friendly
def evaluate(
    model: Annotated[str, typer.Option(help="zoo:NAME, package.module:function or hf:DIR (a Hugging Face directory).")],
    data: Annotated[str, typer.Option(help="Registered data set name (image or text set) or package.module:function.")],
    weights: Annotated[Path | None, typer.Option(help="safetensors / torchslim checkpoint / state dict (.pt).")] = None,
    batch_size: Annotated[int, typer.Option(help="Latency batch size (1..4096).")] = 64,
    threads: Annotated[int | None, typer.Option(help="Threads for latency, 1..256 (default: torch's).")] = None,
    runs: Annotated[int, typer.Option(help="Timed latency runs, 1..10000 (median reported).")] = 20,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "cpu",
) -> None:
    """Measure a model: accuracy, parameters, non-zeros, MACs, bytes, latency, peak memory."""
    from torchslim.data.sources import load_source
    from torchslim.data.spec import DataSpec
    from torchslim.measure import FIELDS, format_value
    from torchslim.pipeline import measure_model, resolve_device
    from torchslim.recipe import MeasureSpec, ModelSpec
    from torchslim.zoo.hf import load_hf

    options = {"latency_batch": "--batch-size", "threads": "--threads", "latency_runs": "--runs", "name": "--model",
               "weights": "--weights", "hf": "--model", "data.name": "--data"}
    _check_device(device)
    issues: list[ConfigIssue] = []
    for what, parse in (
        ("", lambda: MeasureSpec.parse({"latency_batch": batch_size, "threads": threads, "latency_runs": runs})),
        ("", lambda: ModelSpec.parse({"name": model, "weights": str(weights) if weights else None})),
        ("data.", lambda: DataSpec.parse({"name": data})),
    ):
        try:
            parse()
        except ConfigError as exc:  # named as the options that were given
            issues += [ConfigIssue(options.get(what + i.path, i.path), i.message, i.value) for i in exc.issues]
    if issues:
        raise ConfigError(issues, "the command line")
    measure = MeasureSpec.parse({"latency_batch": batch_size, "threads": threads, "latency_runs": runs})
    spec = ModelSpec.parse({"name": model, "weights": str(weights) if weights else None})
    where = resolve_device(device)
    accuracy = True
    if spec.hf is not None:
        source = load_hf(spec.hf, spec.task)
        label2id = getattr(source.hf_config, "label2id", None)
        bundle = load_source(DataSpec(name=data), tokenizer=source.tokenizer, processor=source.processor, label2id=label2id)
        net, accuracy = source.model, source.classifies
    else:
        bundle = load_source(DataSpec(name=data))
        net = _build_for(spec, bundle)
    net.to(where)
    bundle.device = where if where.type != "cpu" else None
    m = measure_model(net, bundle, measure, accuracy=accuracy)
    table = Table(title=escape(plain(f"{model} on {data} (test split, {where})", 500)))
    table.add_column("figure")
    table.add_column("value", justify="right")
    record = m.to_dict()
    for field, label, kind in FIELDS:
        table.add_row(label, format_value(record.get(field), kind))
    table.add_row("Latency batch / threads / runs", f"{m.latency_batch} / {m.latency_threads} / {m.latency_runs}")
    console.print(table)


def _build_for(spec: ModelSpec, bundle: DataBundle) -> nn.Module:
    """Build the model ``spec`` names for ``bundle``'s inputs, refusing (before measuring) one that cannot take them."""
    import torch

    from torchslim.pipeline import build_model
    from torchslim.train import load_weights
    from torchslim.zoo.spec import call_entry_point, data_args, input_problem

    shape = "x".join(map(str, bundle.input_shape))
    if spec.name.startswith("zoo:"):
        name = spec.name[4:]
        args = data_args(name, spec.args, bundle.input_shape, bundle.num_classes)
        problem = input_problem(name, args, bundle.input_shape, bundle.num_classes)
        if problem is None or spec.weights:  # weights that do not fit the model are said first
            net = build_model(spec.model_copy(update={"args": args}), bundle)
        if problem is not None:
            raise TorchslimError(f"--model {spec.name} cannot take --data {bundle.name}: {problem}")
    else:
        net = call_entry_point(spec.name, spec.args)
        if spec.weights:
            load_weights(net, spec.weights)
    was_training = net.training
    try:  # one forward of one sample: a model that does not fit the data fails here, with its reason
        with torch.no_grad():
            net.eval()(bundle.example_input())
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TorchslimError(f"--model {spec.name} cannot take --data {bundle.name} inputs ({shape}): {reason}") from None
    finally:
        net.train(was_training)
    return net


@app.command()
@_friendly
def report(run_dir: Annotated[Path, typer.Argument(help="A run directory holding report.json.")]) -> None:
    """Re-render a saved run's report (Markdown, HTML, JSON) and print its table."""
    from torchslim.report import load_report, render_console_table

    path = run_dir / "report.json"
    try:
        found = stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        found = False
    if not found:
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
    """Verify a .tslim file as ts.load does and print its per-layer table (weights kept, bits, bytes, ratio).

    Every check of ``ts.load`` is made (the zoo architecture the file names is
    built and loaded); a file that names no zoo architecture is checked without
    one, and the output says so. Any failure is one error line and exit code 2.
    """
    import json
    import math

    from torchslim.io.tslim import TslimFormatError, layer_table, load_file
    from torchslim.measure import format_value

    try:
        f, model = load_file(file, need_model=False)
        rows = layer_table(f)
    except TorchslimError:
        raise
    except Exception as exc:  # noqa: BLE001 - a hostile file: one clean error, never a traceback
        raise TslimFormatError(f"{file}: cannot inspect: {type(exc).__name__}: {exc}") from None
    dense = sum(r.dense_bytes for r in rows)
    checked = "checksums verified" if model is not None else "checksums verified; architecture not checked (the file names no zoo model)"
    if as_json:
        out = {
            "file": str(file),
            "version": f.version,
            "arch": f.arch,
            "architecture_checked": model is not None,
            "file_bytes": f.file_bytes,
            "dense_fp32_bytes": dense,
            "ratio": dense / f.file_bytes,
            "layers": [{**r.__dict__, "ratio": r.ratio} for r in rows],
        }
        console.print_json(json.dumps(out))
        return
    arch = f.arch.get("model", "unnamed architecture")
    table = Table(title=f"{escape(str(file))} (format v{f.version}, {escape(str(arch))})")
    for col, justify in (("layer", "left"), ("weights", "right"), ("kept", "right"), ("weight bits", "right"),
                         ("index bits", "right"), ("encoding", "left"), ("bytes", "right"), ("ratio", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(
            escape(r.layer),
            f"{r.weights:,}",
            f"{100 * r.kept:.1f} %",
            f"{r.weight_bits:.2f}",
            f"{r.index_bits:.2f}" if r.index_bits else "-",
            escape(r.encoding),
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
                  f"({dense / f.file_bytes:.1f}x smaller); {checked}", soft_wrap=True)


@app.command()
@_friendly
def sensitivity(
    model: Annotated[str, typer.Option(help="zoo:NAME, package.module:function or hf:DIR (a Hugging Face directory).")],
    data: Annotated[str, typer.Option(help="Registered data set name or package.module:function.")],
    out: Annotated[Path, typer.Option(help="Directory for sensitivity.json, sensitivity.txt and the plots.")],
    weights: Annotated[Path | None, typer.Option(help="Trained weights: safetensors / torchslim checkpoint.")] = None,
    metric: Annotated[str, typer.Option(help="accuracy, loss or sqnr (output SQNR on one batch: fast).")] = "accuracy",
    analyses: Annotated[str | None, typer.Option(help="Comma-separated: unstructured,structured,bits,lowrank (default all).")] = None,
    seed: Annotated[int, typer.Option(help="Seed every option runs with.")] = 0,
    batches: Annotated[int, typer.Option(help="Validation batches measured.")] = 8,
    batch_size: Annotated[int, typer.Option(help="Samples per validation batch.")] = 128,
) -> None:
    """Measure each layer's sensitivity to pruning, weight bits and low rank; write the JSON, table and plots.

    See docs/sensitivity.md; ``sensitivity.json`` is what the search reads.
    """
    from torchslim.search.cli import run_sensitivity

    run_sensitivity(model, data, out, weights, metric, analyses, seed, batches, batch_size)


@app.command()
@_friendly
def search(
    out: Annotated[Path, typer.Option(help="Output directory: study.db, search.json, pareto.md/png, chosen.yaml, replay/.")],
    model: Annotated[str | None, typer.Option(help="zoo:NAME, package.module:function or hf:DIR (a trained model).")] = None,
    data: Annotated[str | None, typer.Option(help="Registered data set name or package.module:function.")] = None,
    weights: Annotated[Path | None, typer.Option(help="Trained weights: safetensors / torchslim checkpoint.")] = None,
    recipe: Annotated[Path | None, typer.Option(help="A recipe: its model and data, and its search: block as the config.")] = None,
    budget: Annotated[float | None, typer.Option(help="Largest accuracy drop on validation, in points (default 1.0).")] = None,
    objective: Annotated[str | None, typer.Option(help="bytes, macs or latency (ONNX Runtime, batch 32, 2 threads).")] = None,
    time: Annotated[str | None, typer.Option("--time", help="Stop starting trials after this long: 90s, 30m, 1.5h.")] = None,
    trials: Annotated[int | None, typer.Option(help="Trials of the refinement stage (default 24).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes sharing the study.")] = None,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL (default sqlite in --out); postgresql://... to share.")] = None,
    study: Annotated[str | None, typer.Option(help="The study's name in the storage.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the sampler and of every plan's stages.")] = None,
    singles: Annotated[bool | None, typer.Option("--singles/--no-singles", help="Also search each family alone.")] = None,
    replay: Annotated[bool | None, typer.Option("--replay/--no-replay", help="Replay the chosen recipe at the end.")] = None,
) -> None:
    """Search the smallest/fastest plan within an accuracy budget across every family; see docs/search.md."""
    from torchslim.search.cli import parse_time, run_search

    options = {"budget": budget, "objective": objective, "time": parse_time(time), "trials": trials, "workers": workers,
               "storage": storage, "study": study, "seed": seed, "singles": singles, "replay": replay}
    run_search(model, data, out, weights=weights, recipe=recipe, options=options)


def entry() -> None:
    """Console-script entry point."""
    app(prog_name="torchslim")


if __name__ == "__main__":
    sys.exit(entry())
