"""Recipe stages: the spec of a stage type, what a stage gets, what it returns, and the registry.

This module imports no technique: :mod:`torchslim.stages.catalog` lists every
stage type, built from the techniques' objects and verbs.

A stage in a recipe is a mapping: ``type`` (a registered stage type), an
optional ``name`` (its label in logs and reports), an optional ``finetune``
block (a :class:`~torchslim.train.TrainConfig`: train after the stage, with the
technique's constraints kept and its callbacks attached), and the fields of the
stage type's config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from torchslim.config import Config
from torchslim.data import DataBundle
from torchslim.graph.transaction import transaction
from torchslim.registry import Registry
from torchslim.report import Report
from torchslim.technique import Inputs, Technique, run
from torchslim.train import Callback, TrainConfig, finetune


@dataclass(frozen=True)
class StageContext:
    """What a stage runner gets besides the model and its config.

    Attributes:
        data: the recipe's data set (training, calibration and measurement draw from it).
        label: the stage's label (its ``name``, or its type) for logs and progress bars.
        progress: show progress bars.
        initial_model: the model as it was before compression (after the last completed
            train stage), built on demand; what ``teacher: initial`` distils from.
        output: the run directory (files a stage writes go there).
        arch: the architecture reference of the model (``{"model": "zoo:...", "args": {...}}``).
        finetune: the stage wrapper's ``finetune`` block, for runners that train themselves
            (``handles_finetune``); others are fine-tuned by :func:`run_stage`.
        build_model: builds a model from a model spec (what ``teacher: {name: ...}`` needs).
        source: where the model came from (:class:`~torchslim.zoo.hf.ModelSource`: a Hugging Face
            model's tokenizer, config and task travel with it), when the pipeline knows.
    """

    data: DataBundle
    label: str
    progress: bool = True
    initial_model: Callable[[], nn.Module] | None = None
    output: Path | None = None
    arch: dict[str, Any] | None = None
    finetune: TrainConfig | None = None
    build_model: Callable[[Any], nn.Module] | None = None
    source: Any = None


@dataclass
class StageResult:
    """What a stage produced: its report and, when it wrote the deployed model file, that file."""

    report: Report
    artefact: Path | None = None


StageRunner = Callable[[nn.Module, Any, StageContext], "Report | StageResult"]


@dataclass(frozen=True)
class StageSpec:
    """A stage type.

    Attributes:
        config: the config class of the stage's own fields.
        run: ``(model, config, context) -> Report | StageResult``; changes the model in place.
        baseline: the stage produces the model the report's "before" is measured on (``train``).
        help: one line for ``torchslim validate`` and the docs.
        select: picks the config class from the raw mapping (one stage type, several config shapes).
        finetune: whether the stage wrapper's ``finetune`` block is allowed.
        finetune_aliases: earlier spellings of ``finetune`` inside the stage's config (``qat``),
            accepted for one release with a DeprecationWarning.
        handles_finetune: the runner runs ``context.finetune`` itself (QAT with distillation).
        callbacks: training callbacks the generic fine-tune attaches, from the stage config.
    """

    config: type[Config]
    run: StageRunner
    baseline: bool = False
    help: str = ""
    select: Callable[[dict[str, Any]], type[Config]] | None = None
    finetune: bool = True
    finetune_aliases: tuple[str, ...] = ()
    handles_finetune: bool = False
    callbacks: Callable[[Any], list[Callback]] | None = None

    def config_for(self, raw: dict[str, Any]) -> type[Config]:
        """The config class validating ``raw`` (``select`` lets one stage type take several config shapes)."""
        return self.select(raw) if self.select is not None else self.config


STAGES: Registry[StageSpec] = Registry("stage type")


def technique_stage(tech: Technique[Any, Any], *, help: str, prepare: Callable[[nn.Module], None] | None = None) -> StageSpec:
    """The stage of an in-place technique: its config, :func:`torchslim.technique.run`, its callbacks.

    Calibration batches come from the recipe's data set as the config's ``calibration``
    block says (when the config has one); the example input is one test sample.
    ``prepare`` runs on the model first (``fold`` puts it in eval mode).

    Example:
        >>> from torchslim.lowrank import FACTORIZE
        >>> technique_stage(FACTORIZE, help="low-rank").config.__name__
        'FactorizeConfig'
    """

    def run_technique(model: nn.Module, cfg: Any, ctx: StageContext) -> Report:
        calibration, data = getattr(cfg, "calibration", None), getattr(ctx, "data", None)
        inputs = Inputs(
            calibration=data.calibration_loader(calibration) if calibration is not None and data is not None else None,
            example_input=data.example_input() if data is not None else None,
        )
        if prepare is not None:
            prepare(model)
        return run(tech, model, cfg, inputs=inputs)

    return StageSpec(tech.config, run_technique, help=help, callbacks=tech.callbacks)


def as_result(out: Report | StageResult) -> StageResult:
    """A runner's return value as a :class:`StageResult`."""
    return out if isinstance(out, StageResult) else StageResult(out)


def run_stage(spec: StageSpec, model: nn.Module, config: Any, ctx: StageContext) -> StageResult:
    """Run one stage on ``model``, all or nothing, then its ``finetune`` block (unless the runner did).

    On any exception the model is left exactly as it was before the stage.
    """
    with transaction(model):
        result = as_result(spec.run(model, config, ctx))
        if ctx.finetune is not None and not spec.handles_finetune:
            callbacks = spec.callbacks(config) if spec.callbacks is not None else []
            trained = finetune(
                model, ctx.data, ctx.finetune, callbacks=callbacks, progress=ctx.progress, description=f"{ctx.label} finetune"
            )
            result.report.meta["finetune"] = trained.meta.get("history")
    return result


__all__ = [
    "STAGES", "StageContext", "StageResult", "StageRunner", "StageSpec", "as_result", "run_stage", "technique_stage",
]
