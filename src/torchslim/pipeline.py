"""Runs a recipe: build model and data, run each stage, checkpoint, measure, report.

Run directory layout (``--output``, ``recipe.output`` or ``runs/<name>``; see :mod:`torchslim.rundir`)::

    manifest.json                 every file the run writes, listed before it is written
    recipe.json                   the validated recipe, defaults filled in
    state.json                    status (starting | running | failed | interrupted | complete) and completed stages
    stage-01-train.safetensors    checkpoint after each stage (+ .json sidecar)
    report.md / report.html / report.json   written only when every stage completed

``resume=True`` verifies the chain of completed stages (each checkpoint's SHA-256,
each sidecar's stage index and recipe fingerprint), loads the last checkpoint and
continues with the next stage. Each stage reseeds torch from the recipe seed and
its index, so a resumed run ends with the same figures as an uninterrupted one.
``overwrite=True`` (``--force``) deletes only the files the manifest lists. A run
that completed no stage starts over on ``--resume``, and on a plain run too when it
stopped cleanly (status failed or interrupted; a killed run may look like a live one).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from torchslim.data import DataBundle
from torchslim.data.sources import load_source
from torchslim.errors import TorchslimError
from torchslim.io import bundle_paths
from torchslim.io.atomic import temp_target
from torchslim.measure import Measurement, evaluate, layer_stats
from torchslim.recipe import DEVICE, DEVICES, MeasureSpec, ModelSpec, Recipe, load_recipe
from torchslim.report import REPORT_FILES, LayerReport, Report, SkippedLayer, StageRecord
from torchslim.rundir import (
    MANIFEST_FILE,
    STATE_FILE,
    RunDir,
    check_name,
    check_state,
    checkpoint_name,
    file_sha256,
    is_run_file,
    read_state,
    run_directory,
    verify_checkpoints,
)
from torchslim.stages import STAGES, StageContext, run_stage
from torchslim.train import load_checkpoint, load_weights, save_checkpoint
from torchslim.zoo import create_model
from torchslim.zoo.hf import ModelSource, load_hf
from torchslim.zoo.spec import call_entry_point, data_args


@dataclass
class RunResult:
    """What :func:`run_recipe` returns: the final report, the model and the run directory."""

    report: Report
    model: nn.Module
    output: Path
    #: where the model came from, with what travels with it (a Hugging Face model's tokenizer, config, task)
    source: ModelSource | None = None


def resolve_device(name: str | None) -> torch.device:
    """The torch device ``name`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``; ``None``: cpu), refused when it is absent.

    ``auto`` is the first CUDA device when CUDA is available, else the CPU.

    Raises:
        TorchslimError: an unknown name, CUDA asked for where there is none, or a CUDA index too large.

    Example:
        >>> resolve_device("cpu"), resolve_device(None)
        (device(type='cpu'), device(type='cpu'))
        >>> resolve_device("tpu")
        Traceback (most recent call last):
            ...
        torchslim.errors.TorchslimError: device 'tpu': unknown; allowed: cpu, cuda, cuda:N or auto
    """
    if name is None or name == "cpu":
        return torch.device("cpu")
    if not DEVICE.fullmatch(name):
        raise TorchslimError(f"device {name!r}: unknown; allowed: {DEVICES}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        raise TorchslimError(
            f"device {name!r}: CUDA is not available here (torch.cuda.is_available() is False, torch {torch.__version__}); "
            "use device cpu, or auto to use CUDA only where there is one"
        )
    index, count = int(name.partition(":")[2] or 0), torch.cuda.device_count()
    if index >= count:
        raise TorchslimError(f"device {name!r}: this machine has {count} CUDA device(s): cuda:0..cuda:{count - 1}")
    return torch.device("cuda", index)


def build_model(spec: ModelSpec, data: DataBundle | None = None) -> nn.Module:
    """Build the model a recipe names; zoo models get ``in_channels``/``num_classes`` from the data when they take them."""
    if spec.hf is not None:
        return load_hf(spec.hf, spec.task, dict(spec.args)).model
    arch = model_arch(spec, data)
    if arch is not None:
        model = create_model(arch["model"][4:], **arch["args"])
    else:  # runs the entry point's code; refused as validate refuses it, checked that it built a module
        model = call_entry_point(spec.name, dict(spec.args))
    if spec.weights:
        load_weights(model, spec.weights)
    return model


def model_arch(spec: ModelSpec, data: DataBundle | None = None) -> dict[str, Any] | None:
    """``{"model": "zoo:<name>", "args": {...}}`` with the arguments :func:`build_model` uses; ``None`` for entry points."""
    if not spec.name.startswith("zoo:"):
        return None
    name = spec.name[4:]
    args = data_args(name, dict(spec.args), data.input_shape, data.num_classes) if data is not None else dict(spec.args)
    return {"model": spec.name, "args": args}


def measure_model(model: nn.Module, data: DataBundle, spec: MeasureSpec, *, accuracy: bool = True) -> Measurement:
    """The measurement record a run takes after each stage (test split; ``accuracy=False``: a model without class logits)."""
    return evaluate(
        model,
        data.loader("test", spec.eval_batch) if accuracy else None,
        example_input=data.example_input(),
        latency_batch=spec.latency_batch,
        threads=spec.threads,
        latency_runs=spec.latency_runs,
    )


def deployed_measurement(
    m: Measurement, report: Report, onnx_file: Path, data: DataBundle, spec: MeasureSpec, *, accuracy: bool = True
) -> Measurement:
    """``m`` with accuracy and latency measured on an exported ONNX file in ONNX Runtime (CPU), as ``spec`` says.

    The torch figures (a simulation when the model is quantized: fake quantization in float)
    are kept in ``report.meta["simulation"]``; ``report.meta["after_measured_on"]`` says what the
    figures now are. Peak memory is a torch figure: it moves there too.
    """
    from torchslim.deploy.check import measure_deployed  # ONNX Runtime loads only when a run exports

    loader = data.loader("test", spec.eval_batch) if accuracy else None
    acc, latency = measure_deployed(onnx_file, loader, data.example_input(), batch_size=spec.latency_batch,
                                    threads=spec.threads, runs=spec.latency_runs)
    quantized = report.meta.get("kind") == "int8"
    report.meta["simulation"] = {
        "measured_on": "the torch model with fake quantization (a simulation)" if quantized else "the torch model",
        "accuracy": m.accuracy, "latency_ms": m.latency_ms, "latency_threads": m.latency_threads,
        "peak_memory_bytes": m.peak_memory_bytes,
    }
    report.meta["after_measured_on"] = f"{onnx_file.name} in ONNX Runtime (CPU)"
    return dataclasses.replace(
        m, accuracy=acc, latency_ms=latency.median_ms, latency_batch=latency.batch, latency_threads=latency.threads,
        latency_runs=latency.runs, peak_memory_bytes=None,
    )


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def _stage_seed(seed: int, index: int) -> int:
    return seed * 1000 + index


def stage_fingerprints(recipe: Recipe) -> list[str]:
    """SHA-256 of the recipe (without its output path) up to and including each stage.

    The last one is the whole recipe's :meth:`~torchslim.recipe.Recipe.fingerprint`;
    a recipe that only appends stages keeps the fingerprints of the stages it shares.
    """
    data = recipe.to_dict()
    data.pop("output")
    data.pop("device", None)
    stages = data["stages"]
    return [
        hashlib.sha256(json.dumps({**data, "stages": stages[: i + 1]}, sort_keys=True).encode()).hexdigest()
        for i in range(len(stages))
    ]


def stage_files(stage: Any) -> list[str]:
    """The files a stage writes into the run directory (its config's ``run_files()``), checked."""
    fn = getattr(stage.config, "run_files", None)
    names = list(fn()) if callable(fn) else []
    for name in names:
        check_name(name, f"file of stage {stage.label!r}")
        if is_run_file(name):
            raise TorchslimError(f"stage {stage.label!r} would write {name!r}, a file the run itself writes")
    return names


def run_files(recipe: Recipe) -> list[str]:
    """Every file a run of ``recipe`` writes besides its manifest, recipe and state: what the manifest lists."""
    names: list[str] = []
    for i, stage in enumerate(recipe.stages):
        stem = checkpoint_name(i, stage.type)
        names += [*(p.name for p in bundle_paths(stem)), *stage_files(stage)]
    return [*names, *REPORT_FILES.values()]


def _prepare_output(recipe: Recipe, out: Path, resume: bool, overwrite: bool, console: Console) -> tuple[RunDir, dict[str, Any]]:
    """The run directory and the state to continue from: fresh, cleared (``overwrite``), restarted or resumed."""
    rd = RunDir(out)
    entries = rd.entries()
    names = run_files(recipe)
    if entries and rd.load_manifest() is None:
        if overwrite and rd.earlier_run_files(entries) is not None:  # an earlier torchslim's run: --force clears it
            rd.clear()
            return rd, rd.start(names, recipe.to_dict(), recipe.fingerprint())
        if any(temp_target(n) != MANIFEST_FILE for n in entries):
            raise TorchslimError(rd.no_manifest_message(entries))
        rd.remove_temps()  # only the interrupted write of a first manifest: nothing else was written
        entries = []
    if not entries:
        if resume and not out.is_dir():
            raise TorchslimError(f"nothing to resume in {out}: no {STATE_FILE} (run without --resume first)")
        return rd, rd.start(names, recipe.to_dict(), recipe.fingerprint())
    for name in rd.remove_temps():
        console.log(f"removed {out / name}, left by an interrupted write", markup=False)
    if overwrite:
        rd.clear()
        return rd, rd.start(names, recipe.to_dict(), recipe.fingerprint())
    state = read_state(out)
    if state is None or not state.get("completed"):  # nothing to keep: start over
        status = None if state is None else state.get("status")
        if resume and state is not None and state.get("fingerprint") != recipe.fingerprint():
            raise TorchslimError(f"cannot resume {out}: it was started by a different recipe (stages or settings changed)")
        if not resume and status not in ("failed", "interrupted"):  # killed, or still running in another process
            raise TorchslimError(
                f"output directory {out} holds a run that completed no stage and did not stop cleanly (status "
                f"{status or 'none'}): it may still be running; if it is not, start it over with --resume or --force"
            )
        console.log(f"{out}: no stage had completed (status {status or 'none'}); starting over", markup=False)
        rd.clear()
        return rd, rd.start(names, recipe.to_dict(), recipe.fingerprint())
    if not resume:
        raise TorchslimError(
            f"output directory {out} is not empty; use --resume to continue that run or --force to start over"
        )
    check_state(state, out, recipe.fingerprint(), list(zip([s.type for s in recipe.stages], stage_fingerprints(recipe))))
    verify_checkpoints(out, state["completed"])
    rd.claim(names)
    return rd, state


@dataclass
class _Live:
    """What a run holds while its stages run: the model, its source, the data and the device."""

    model: nn.Module
    source: ModelSource
    data: DataBundle
    device: torch.device

    def build(self, spec: ModelSpec) -> nn.Module:
        """A model a stage names (a teacher), on the run's device."""
        return build_model(spec, self.data).to(self.device)


def _run_one_stage(recipe: Recipe, index: int, live: _Live, rd: RunDir, state: dict[str, Any], progress: bool,
                   console: Console) -> None:
    """Run stage ``index`` on ``model`` (all or nothing), measure, checkpoint, and record it in ``state``."""
    done, out = state["completed"], rd.path
    model, data = live.model, live.data
    stage = recipe.stages[index]
    label = f"{index + 1}/{len(recipe.stages)} {stage.label}"
    console.log(f"stage {label} ({stage.type})", markup=False)
    rd.claim(stage_files(stage))  # listed at start already: a no-op unless the manifest lost them
    torch.manual_seed(_stage_seed(recipe.seed, index))
    t_stage = time.perf_counter()
    ctx = StageContext(
        data,
        label,
        progress,
        initial_model=lambda: _baseline_model(recipe, data, out, done).to(live.device),
        output=out,
        arch=model_arch(recipe.model, data),
        finetune=stage.finetune,
        build_model=live.build,
        source=live.source,
    )
    result = run_stage(STAGES.get(stage.type), model, stage.config, ctx)
    seconds = time.perf_counter() - t_stage
    m = measure_model(model, data, recipe.measure, accuracy=live.source.classifies)
    if result.artefact is not None:  # the stage wrote the deployed model file (encode, export)
        m = dataclasses.replace(m, bytes_file=result.artefact.stat().st_size)
    if result.artefact is not None and result.report.meta.get("deployed"):  # an ONNX file: the after-figures are its own
        m = deployed_measurement(m, result.report, result.artefact, data, recipe.measure, accuracy=live.source.classifies)
    ckpt = checkpoint_name(index, stage.type)
    fingerprint = stage_fingerprints(recipe)[index]
    meta = {"recipe": recipe.name, "stage": index, "type": stage.type, "fingerprint": fingerprint}
    tensors, sidecar = bundle_paths(save_checkpoint(model, out / ckpt, meta))
    done.append(
        {
            "index": index,
            "type": stage.type,
            "label": stage.label,
            "checkpoint": ckpt,
            "fingerprint": fingerprint,
            "sha256": file_sha256(tensors),
            "sidecar_sha256": file_sha256(sidecar),
            "seconds": seconds,
            "device": str(live.device),
            "measurement": m.to_dict(),
            "report": result.report.to_dict(),
        }
    )
    rd.write_state(state)
    console.log(
        f"stage {label} done in {seconds:.1f}s: accuracy {100 * (m.accuracy or 0):.2f}%, non-zeros {m.nonzeros:,}",
        markup=False,
    )


def load_model_and_data(recipe: Recipe) -> tuple[ModelSource, DataBundle]:
    """The recipe's model (with what travels with it) and data, on the CPU.

    A Hugging Face model is loaded first: its tokenizer tokenizes text data (and its
    ``label2id`` names text labels). A zoo model is built after the data (its inputs and
    classes come from the data).

    Raises:
        TorchslimError: the data has more classes than a Hugging Face classifier has labels.
    """
    spec = recipe.model
    torch.manual_seed(recipe.seed)
    if spec.hf is not None:
        source = load_hf(spec.hf, spec.task, dict(spec.args))
        label2id = getattr(source.hf_config, "label2id", None)
        data = load_source(recipe.data, tokenizer=source.tokenizer, processor=source.processor, label2id=label2id, seed=recipe.seed)
        labels = getattr(source.hf_config, "num_labels", None)
        if source.classifies and isinstance(labels, int) and labels < data.num_classes:
            raise TorchslimError(
                f"model {spec.name}: its classifier has {labels} labels and data {recipe.data.label_text!r} has "
                f"{data.num_classes} classes; set model args num_labels: {data.num_classes} (a new head)"
            )
        return source, data
    data = load_source(recipe.data, seed=recipe.seed)
    torch.manual_seed(recipe.seed)
    model = build_model(spec, data)
    return ModelSource(model, "zoo" if spec.name.startswith("zoo:") else "entry", spec.name), data


def _start(recipe: Recipe, out: Path, state: dict[str, Any], console: Console, device: torch.device) -> _Live:
    """The data and the model to continue from: as built, or loaded from the last completed checkpoint; on ``device``."""
    source, data = load_model_and_data(recipe)
    model = source.model
    done = state["completed"]
    if done:
        load_checkpoint(model, out / done[-1]["checkpoint"])
        console.log(f"resuming {out}: {len(done)} stage(s) done, last checkpoint {done[-1]['checkpoint']}", markup=False)
    model.to(device)
    data.device = device if device.type != "cpu" else None
    if state["initial"] is None:
        state["initial"] = measure_model(model, data, recipe.measure, accuracy=source.classifies).to_dict()
        state["initial_layers"] = [s.to_dict() for s in layer_stats(model)]
    return _Live(model, source, data, device)


def run_recipe(
    recipe: Recipe | str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    output: str | Path | None = None,
    progress: bool = True,
    console: Console | None = None,
    device: str | None = None,
) -> RunResult:
    """Run every stage of a recipe, checkpointing after each, and write the report.

    Args:
        recipe: a :class:`Recipe` or the path of a recipe YAML file.
        resume: continue the run in the output directory after its last completed stage
            (the chain of completed stages is verified first).
        overwrite: delete the files an earlier run listed in the directory's manifest and start
            over; refused when anything else is in the directory.
        output: run directory (default: the recipe's ``output`` or ``runs/<name>``, which must
            stay inside ``runs/``).
        progress: show progress bars on a terminal.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``; overrides the recipe's ``device``
            (default cpu). The model, calibration batches and measurement run there.

    Raises:
        TorchslimError: the run directory cannot be used (not a run directory, foreign files,
            a different recipe, a damaged state or checkpoint), or a stage failed.

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
    if recipe.search is not None:
        raise TorchslimError(
            f"recipe {recipe.name!r} has a search: block: run it with `torchslim run` or torchslim.search.block.run_searched"
        )
    console = console or Console(stderr=True)
    where = resolve_device(device or recipe.device)  # refused before the run directory is touched
    out = run_directory(recipe.name, recipe.output, output)
    rd, state = _prepare_output(recipe, out, resume, overwrite, console)
    t0 = time.perf_counter()
    try:
        live = _start(recipe, out, state, console, where)
        state["status"] = "running"
        state.pop("error", None)
        rd.write_state(state)
        for index in range(len(state["completed"]), len(recipe.stages)):
            _run_one_stage(recipe, index, live, rd, state, progress, console)
        report = _final_report(recipe, state, live.model, time.perf_counter() - t0)
        report.meta["device"] = str(where)  # where the model ran and was measured
        report.save(out)
    except KeyboardInterrupt:
        state["status"] = "interrupted"
        rd.write_state(state)
        raise
    except BaseException as exc:
        state["status"] = "failed"
        state["error"] = f"{type(exc).__name__}: {exc}"
        rd.write_state(state)
        raise
    state["status"] = "complete"
    rd.write_state(state)
    return RunResult(report, live.model, out, live.source)


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
    last = stage_reports[-1].meta if stage_reports else {}  # an export stage last: the after-figures are the file's
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
            "data": recipe.data.label_text,
            "seed": recipe.seed,
            "date": _dt.date.today().isoformat(),
            "wall_s": round(seconds, 2),
            "machine": machine_info(),
            "before_is": "after the last train stage" if baseline_stage is not None else "the model as loaded",
            **{k: last[k] for k in ("after_measured_on", "simulation") if k in last},
        },
    )
