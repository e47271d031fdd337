"""Runs a recipe: build model and data, run each stage, checkpoint, measure, report.

Run directory layout (``recipe.output`` or ``runs/<name>``)::

    recipe.json                   the validated recipe, defaults filled in
    state.json                    status (running | failed | interrupted | complete) and completed stages
    stage-01-train.safetensors    checkpoint after each stage (+ .json sidecar)
    report.md / report.html / report.json   written only when every stage completed

``resume=True`` loads the last completed checkpoint and continues with the next
stage. Each stage reseeds torch from the recipe seed and its index, so a
resumed run ends with the same figures as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib
import inspect
import json
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from torchslim.data import DataBundle, Jitter, load_data
from torchslim.errors import CheckpointError, TorchslimError
from torchslim.io import atomic_write_text
from torchslim.measure import Measurement, evaluate, layer_stats
from torchslim.recipe import MeasureSpec, ModelSpec, Recipe, load_recipe
from torchslim.report import LayerReport, Report, SkippedLayer, StageRecord
from torchslim.stages import STAGES, StageContext, run_stage
from torchslim.train import load_checkpoint, load_weights, save_checkpoint
from torchslim.zoo import MODELS, create_model

STATE_FILE = "state.json"


@dataclass
class RunResult:
    """What :func:`run_recipe` returns: the final report, the model and the run directory."""

    report: Report
    model: nn.Module
    output: Path


def build_model(spec: ModelSpec, data: DataBundle | None = None) -> nn.Module:
    """Build the model a recipe names; zoo models get ``in_channels``/``num_classes`` from the data when they take them."""
    arch = model_arch(spec, data)
    if arch is not None:
        model = create_model(arch["model"][4:], **arch["args"])
    else:
        module_name, fn_name = spec.name.split(":")
        try:
            fn = getattr(importlib.import_module(module_name), fn_name)
        except (ImportError, AttributeError) as exc:
            raise TorchslimError(f"cannot import model entry point {spec.name!r}: {exc}") from None
        model = fn(**spec.args)
        if not isinstance(model, nn.Module):
            raise TorchslimError(f"model entry point {spec.name!r} returned {type(model).__name__}, not an nn.Module")
    if spec.weights:
        load_weights(model, spec.weights)
    return model


def model_arch(spec: ModelSpec, data: DataBundle | None = None) -> dict[str, Any] | None:
    """``{"model": "zoo:<name>", "args": {...}}`` with the arguments :func:`build_model` uses; ``None`` for entry points."""
    if not spec.name.startswith("zoo:"):
        return None
    name = spec.name[4:]
    args = dict(spec.args)
    params = inspect.signature(MODELS.get(name)).parameters
    if data is not None:
        if "in_channels" in params and "in_channels" not in args:
            args["in_channels"] = data.input_shape[0]
        if "num_classes" in params and "num_classes" not in args:
            args["num_classes"] = data.num_classes
    return {"model": spec.name, "args": args}


def measure_model(model: nn.Module, data: DataBundle, spec: MeasureSpec) -> Measurement:
    """The measurement record a run takes after each stage (test split)."""
    return evaluate(
        model,
        data.loader("test", spec.eval_batch),
        example_input=data.example_input(),
        latency_batch=spec.latency_batch,
        threads=spec.threads,
        latency_runs=spec.latency_runs,
    )


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def _write_state(out: Path, state: dict[str, Any]) -> None:
    atomic_write_text(out / STATE_FILE, json.dumps(state, indent=2, sort_keys=True))


def read_state(out: Path) -> dict[str, Any] | None:
    path = Path(out) / STATE_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"run state {path} is corrupt: {exc}") from None


def _stage_seed(seed: int, index: int) -> int:
    return seed * 1000 + index


def _prepare_output(recipe: Recipe, out: Path, resume: bool, overwrite: bool) -> dict[str, Any]:
    state = read_state(out)
    if resume:
        if state is None:
            raise TorchslimError(f"nothing to resume in {out}: no {STATE_FILE} (run without --resume first)")
        if state.get("fingerprint") != recipe.fingerprint():
            raise TorchslimError(f"cannot resume {out}: it was started by a different recipe (stages or settings changed)")
        return state
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise TorchslimError(
                f"output directory {out} is not empty; use --resume to continue that run or --force to start over"
            )
        if state is None and not (out / "report.json").exists():
            raise TorchslimError(f"refusing to clear {out}: it does not look like a torchslim run directory")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "recipe.json", json.dumps(recipe.to_dict(), indent=2))
    return {"fingerprint": recipe.fingerprint(), "status": "running", "completed": [], "initial": None}


def _run_one_stage(
    recipe: Recipe, index: int, model: nn.Module, data: DataBundle, out: Path, state: dict[str, Any], progress: bool,
    console: Console,
) -> None:
    """Run stage ``index`` on ``model`` (all or nothing), measure, checkpoint, and record it in ``state``."""
    done = state["completed"]
    stage = recipe.stages[index]
    label = f"{index + 1}/{len(recipe.stages)} {stage.label}"
    console.log(f"stage {label} ({stage.type})")
    torch.manual_seed(_stage_seed(recipe.seed, index))
    t_stage = time.perf_counter()
    ctx = StageContext(
        data,
        label,
        progress,
        initial_model=lambda: _baseline_model(recipe, data, out, done),
        output=out,
        arch=model_arch(recipe.model, data),
        finetune=stage.finetune,
        build_model=lambda spec: build_model(spec, data),
    )
    result = run_stage(STAGES.get(stage.type), model, stage.config, ctx)
    seconds = time.perf_counter() - t_stage
    m = measure_model(model, data, recipe.measure)
    if result.artefact is not None:  # the stage wrote the deployed model file (encode)
        m = dataclasses.replace(m, bytes_file=result.artefact.stat().st_size)
    ckpt = f"stage-{index + 1:02d}-{stage.type}"
    save_checkpoint(model, out / ckpt, {"recipe": recipe.name, "stage": index, "type": stage.type})
    done.append(
        {
            "index": index,
            "type": stage.type,
            "label": stage.label,
            "checkpoint": ckpt,
            "seconds": seconds,
            "measurement": m.to_dict(),
            "report": result.report.to_dict(),
        }
    )
    _write_state(out, state)
    console.log(f"stage {label} done in {seconds:.1f}s: accuracy {100 * (m.accuracy or 0):.2f}%, non-zeros {m.nonzeros:,}")


def run_recipe(
    recipe: Recipe | str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    output: str | Path | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> RunResult:
    """Run every stage of a recipe, checkpointing after each, and write the report.

    Args:
        recipe: a :class:`Recipe` or the path of a recipe YAML file.
        resume: continue the run in the output directory after its last completed stage.
        overwrite: clear an existing run directory and start over.
        output: run directory (default: the recipe's ``output`` or ``runs/<name>``).
        progress: show progress bars on a terminal.

    Example:
        A small recipe on the ``digits`` set, written to a temporary directory:

        >>> import tempfile
        >>> from pathlib import Path
        >>> tmp = Path(tempfile.mkdtemp())
        >>> _ = (tmp / "digits_prune90.yaml").write_text('''
        ... name: digits-prune90
        ... model: {name: zoo:lenet300, args: {in_features: 64}}
        ... data: digits
        ... measure: {latency_runs: 5}
        ... stages:
        ...   - {type: train, epochs: 5, lr: 0.1}
        ...   - {type: prune, sparsity: 0.9, keep_first_last: false}
        ...   - {type: finetune, epochs: 2, lr: 0.01}
        ... ''')
        >>> result = ts.run_recipe(tmp / "digits_prune90.yaml", output=tmp / "run", progress=False)
        >>> round(result.report.after.sparsity, 2), result.report.after.accuracy > 0.8
        (0.89, True)
        >>> (result.output / "report.md").exists()
        True
        >>> import shutil; shutil.rmtree(tmp)
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    console = console or Console(stderr=True)
    out = Path(output) if output is not None else recipe.output_dir()
    state = _prepare_output(recipe, out, resume, overwrite)
    t0 = time.perf_counter()
    data = load_data(recipe.data.name, val_size=recipe.data.val_size, seed=recipe.seed)
    if recipe.data.jitter:
        data.train_transform = Jitter(recipe.data.jitter)
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model, data)
    done = state["completed"]
    if done:
        load_checkpoint(model, out / done[-1]["checkpoint"])
        console.log(f"resuming {out}: {len(done)} stage(s) done, last checkpoint {done[-1]['checkpoint']}")
    if state["initial"] is None:
        state["initial"] = measure_model(model, data, recipe.measure).to_dict()
        state["initial_layers"] = [s.to_dict() for s in layer_stats(model)]
    state["status"] = "running"
    _write_state(out, state)
    try:
        for index in range(len(done), len(recipe.stages)):
            _run_one_stage(recipe, index, model, data, out, state, progress, console)
    except KeyboardInterrupt:
        state["status"] = "interrupted"
        _write_state(out, state)
        raise
    except BaseException as exc:
        state["status"] = "failed"
        state["error"] = f"{type(exc).__name__}: {exc}"
        _write_state(out, state)
        raise
    report = _final_report(recipe, state, model, time.perf_counter() - t0)
    report.save(out)
    state["status"] = "complete"
    _write_state(out, state)
    return RunResult(report, model, out)


def _baseline_model(recipe: Recipe, data: DataBundle, out: Path, done: list[dict[str, Any]]) -> nn.Module:
    """The model before compression: as built (same seed), then the checkpoint of the last completed train stage."""
    with torch.random.fork_rng():
        torch.manual_seed(recipe.seed)
        model = build_model(recipe.model, data)
    trained = [d for d in done if STAGES.get(d["type"]).baseline]
    if trained:
        load_checkpoint(model, out / trained[-1]["checkpoint"])
    return model


def _final_report(recipe: Recipe, state: dict[str, Any], model: nn.Module, seconds: float) -> Report:
    done = state["completed"]
    initial = Measurement.from_dict(state["initial"])
    before, before_layers = initial, {d["name"]: d for d in state.get("initial_layers", [])}
    baseline_stage = max((i for i, d in enumerate(done) if STAGES.get(d["type"]).baseline), default=None)
    if baseline_stage is not None:
        before = Measurement.from_dict(done[baseline_stage]["measurement"])
    stage_reports = [Report.from_dict(d["report"]) for d in done]
    actions: dict[str, tuple[str, dict[str, Any]]] = {}
    skipped: dict[str, SkippedLayer] = {}
    for rep in stage_reports:
        for layer in rep.layers:
            actions[layer.name] = (layer.action, layer.details)
        for s in rep.skipped:
            skipped.setdefault(s.name, s)
    layers = []
    for st in layer_stats(model):
        action, details = actions.get(st.name, ("kept", {}))
        details = dict(details)
        if st.name in before_layers and baseline_stage is None:
            details.setdefault("nonzeros_initial", before_layers[st.name]["nonzeros"])
        layers.append(LayerReport(st.name, st.kind, tuple(st.shape), st.params, st.nonzeros, action, details))
    return Report(
        title=f"torchslim run: {recipe.name}",
        technique=" → ".join(s.type for s in recipe.stages),
        layers=layers,
        skipped=[s for name, s in skipped.items() if name not in actions],
        before=before,
        after=Measurement.from_dict(done[-1]["measurement"]),
        stages=[
            StageRecord(d["label"], d["type"], d["seconds"], Measurement.from_dict(d["measurement"]), d["report"].get("meta", {}))
            for d in done
        ],
        meta={
            "recipe": recipe.name,
            "model": recipe.model.name,
            "data": recipe.data.name,
            "seed": recipe.seed,
            "date": _dt.date.today().isoformat(),
            "wall_s": round(seconds, 2),
            "machine": machine_info(),
            "before_is": "after the last train stage" if baseline_stage is not None else "the model as loaded",
        },
    )
