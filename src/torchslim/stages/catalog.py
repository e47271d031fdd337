"""The one explicit list of recipe stage types.

Every stage type a recipe may name is registered here, in one place: in-place
techniques through :func:`~torchslim.stages.base.technique_stage` from their
technique objects, trainers and file writers with a runner of their own; no
technique registers a stage itself.
Verbs that need data get their calibration batches from the recipe's data set
as the stage config's ``calibration`` block says (split, batch size, seed,
batches); nothing about calibration is fixed here.

Example:
    >>> STAGES.names()
    ['awq', 'distill', 'drop_layers', 'encode', 'export', 'factorize', 'finetune', 'fold', 'gptq', 'prune', 'quantize', 'rtn', 'share', 'sparse_train', 'sparsegpt', 'train', 'wanda']
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator
from torch import nn

from torchslim.config import Config
from torchslim.distill import DistillConfig, distill_from
from torchslim.encode import SHARE, TslimFormatError, save
from torchslim.errors import TorchslimError
from torchslim.fold import DROP_LAYERS, FOLD
from torchslim.llm.stage import LLM_STAGES
from torchslim.lowrank import FACTORIZE
from torchslim.measure import dense_bytes
from torchslim.prune import StructuredPruneConfig, prune_
from torchslim.prune.regularize import SparseTrainConfig, sparse_train
from torchslim.prune.schedule import ScheduledPruneConfig, prune_with_schedule
from torchslim.prune.structured import STRUCTURED_GRANULARITIES
from torchslim.quant import QuantizeConfig, quantize_
from torchslim.quant.qat import KDConfig, qat_finetune
from torchslim.report import Report
from torchslim.stages.base import STAGES, StageContext, StageResult, StageSpec, technique_stage
from torchslim.stages.export import EXPORT_STAGE, run_file_name
from torchslim.train import TrainConfig, finetune
from torchslim.zoo.spec import ModelSpec


def _expect(cfg: Any, cls: type[Config]) -> None:
    if not isinstance(cfg, cls):
        raise TypeError(f"expected a {cls.__name__}, got {type(cfg).__name__}")


# -- training -------------------------------------------------------------------------------------------
def _run_train(model: nn.Module, cfg: TrainConfig, ctx: StageContext) -> Report:
    _expect(cfg, TrainConfig)
    return finetune(model, ctx.data, cfg, progress=ctx.progress, description=ctx.label)


# -- pruning --------------------------------------------------------------------------------------------
def _select_prune(raw: dict[str, Any]) -> type[Config]:
    return StructuredPruneConfig if raw.get("granularity") in STRUCTURED_GRANULARITIES else ScheduledPruneConfig


def _run_prune(model: nn.Module, cfg: Config, ctx: StageContext) -> Report:
    if isinstance(cfg, StructuredPruneConfig):
        calibration = ctx.data.calibration_loader(cfg.calibration)
        return prune_(model, cfg, example_input=ctx.data.example_input(), calibration=calibration)
    _expect(cfg, ScheduledPruneConfig)
    return prune_with_schedule(model, ctx.data, cfg, progress=ctx.progress, description=ctx.label)


def _run_sparse_train(model: nn.Module, cfg: SparseTrainConfig, ctx: StageContext) -> Report:
    _expect(cfg, SparseTrainConfig)
    return sparse_train(model, ctx.data, cfg, progress=ctx.progress, description=ctx.label)


# -- quantization ---------------------------------------------------------------------------------------
class QuantizeStage(QuantizeConfig):
    """``quantize_`` plus, with the stage's ``finetune`` block, QAT, optionally distilled from the float model.

    ``calibration_batch_size`` (now ``calibration.batch_size``) and ``qat`` (now the stage's
    ``finetune``) are the earlier spellings, accepted for one release.
    """

    RENAMED: ClassVar[dict[str, str]] = {
        "calibration_batches": "calibration.batches",
        "calibration_batch_size": "calibration.batch_size",
    }

    distill: KDConfig | None = None


def _run_quantize(model: nn.Module, cfg: QuantizeStage, ctx: StageContext) -> Report:
    _expect(cfg, QuantizeStage)
    teacher = copy.deepcopy(model).eval() if ctx.finetune is not None and cfg.distill is not None else None
    report = quantize_(model, cfg.model_dump(exclude={"distill"}), calibration=ctx.data.calibration_loader(cfg.calibration))
    if ctx.finetune is not None:
        trained = qat_finetune(
            model, ctx.data, ctx.finetune, teacher=teacher, kd=cfg.distill, progress=ctx.progress, description=ctx.label
        )
        report.meta["qat"] = trained.meta
    return report


# -- the .tslim file -----------------------------------------------------------------------------------
class EncodeStage(Config):
    """Write the model as a ``.tslim`` file.

    Attributes:
        file: file name inside the run directory: one plain name (no ``/``, ``..``, control
            characters; at most 200 UTF-8 bytes) that is not one of the run's own files
            (``state.json``, ``recipe.json``, ``manifest.json``, ``report.*``, ``stage-NN-*``).
        coding: ``huffman`` (Deep Compression) or ``fixed`` (fixed-width indices).

    Example:
        >>> EncodeStage(file="lenet.tslim").run_files()
        ['lenet.tslim']
        >>> EncodeStage.parse({"file": "state.json"})
        Traceback (most recent call last):
        ...
        torchslim.errors.ConfigError: 1 error(s) in config
          - file: names a file the run itself writes (state.json, recipe.json, manifest.json, report.*, stage-NN-*): choose another name (got 'state.json')
    """

    file: str = Field(default="model.tslim", min_length=1)
    coding: Literal["huffman", "fixed"] = "huffman"

    @field_validator("file")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        return run_file_name(v)

    def run_files(self) -> list[str]:
        """The files this stage writes into the run directory (the run lists them in its manifest first)."""
        return [self.file]


def _run_encode(model: nn.Module, cfg: EncodeStage, ctx: StageContext) -> StageResult:
    _expect(cfg, EncodeStage)
    if ctx.output is None:
        raise TslimFormatError("the encode stage needs a run directory to write into")
    path = save(model, ctx.output / cfg.file, arch=ctx.arch, coding=cfg.coding)
    size = path.stat().st_size
    meta = {"file": cfg.file, "file_bytes": size, "coding": cfg.coding, "ratio_vs_dense": dense_bytes(model) / size if size else None}
    return StageResult(Report(title="encode", technique="encode", meta=meta), artefact=path)


# -- distillation ---------------------------------------------------------------------------------------
class TeacherSpec(ModelSpec):
    """A teacher built from the zoo (``zoo:NAME``), an entry point (with optional weights) or a Hugging Face
    directory (``{hf: PATH, task: TASK}``: its task is kept)."""


class DistillStage(DistillConfig):
    """A ``distill`` stage: :class:`DistillConfig` plus the teacher.

    ``teacher`` is either ``initial`` — the recipe's model as it was before the
    compression stages (after the last ``train`` stage when there is one, else as
    loaded): what "healing after pruning" distils from — or a model spec
    ``{name: zoo:NAME | package.module:build_fn, args: {...}, weights: FILE}`` or ``{hf: PATH, task: TASK}``.
    """

    teacher: Literal["initial"] | TeacherSpec = "initial"


def build_teacher(spec: Literal["initial"] | TeacherSpec, ctx: Any) -> nn.Module:
    """The teacher a stage names: the pipeline's initial model, or a model built from its spec.

    ``initial`` needs ``ctx.initial_model`` (a module or a zero-argument callable
    returning one); a spec is built by ``ctx.build_model`` when the context has one
    (the pipeline's), else from the zoo.

    Example:
        >>> from types import SimpleNamespace
        >>> ctx = SimpleNamespace(data=None)
        >>> type(build_teacher(TeacherSpec(name="zoo:lenet300"), ctx)).__name__
        'LeNet300'
        >>> initial = nn.Linear(4, 2)
        >>> build_teacher("initial", SimpleNamespace(initial_model=initial)) is initial
        True
    """
    if spec == "initial":
        initial: nn.Module | Callable[[], nn.Module] | None = getattr(ctx, "initial_model", None)
        if initial is None:
            raise TorchslimError(
                "teacher: initial needs the pipeline to keep the model as it was before the compression stages "
                "(StageContext.initial_model), and this pipeline does not; name the teacher instead: "
                "teacher: {name: zoo:NAME, weights: FILE}"
            )
        model = initial if isinstance(initial, nn.Module) else initial()
        if not isinstance(model, nn.Module):
            raise TorchslimError(f"StageContext.initial_model gave a {type(model).__name__}, not an nn.Module")
        return model
    if not isinstance(spec, TeacherSpec):
        raise TorchslimError(f"teacher must be 'initial' or a model spec, got {spec!r}")
    model_spec = ModelSpec(name=spec.name, args=spec.args, weights=spec.weights, hf=spec.hf, task=spec.task)
    builder = getattr(ctx, "build_model", None)
    if builder is None:
        from torchslim.pipeline import build_model  # the pipeline imports the stages: late for direct callers

        return build_model(model_spec, getattr(ctx, "data", None))
    return builder(model_spec)


def _run_distill(model: nn.Module, cfg: DistillStage, ctx: StageContext) -> Report:
    _expect(cfg, DistillStage)
    teacher = build_teacher(cfg.teacher, ctx)
    report = distill_from(model, teacher, ctx.data, cfg.model_dump(exclude={"teacher"}), progress=ctx.progress, description=ctx.label)
    report.meta["teacher"] = cfg.teacher if isinstance(cfg.teacher, str) else cfg.teacher.model_dump(exclude={"version"})
    return report


def _eval(model: nn.Module) -> None:
    model.eval()  # folding is for inference: BatchNorm uses its running statistics


# -- the catalog ----------------------------------------------------------------------------------------
CATALOG: dict[str, StageSpec] = {
    "train": StageSpec(
        TrainConfig, _run_train, baseline=True, finetune=False,
        help="train the model; the report's 'before' is measured after the last train stage",
    ),
    "finetune": StageSpec(TrainConfig, _run_train, finetune=False, help="fine-tune (masks and sharing stay applied)"),
    "prune": StageSpec(
        ScheduledPruneConfig, _run_prune, select=_select_prune,
        help="element or N:M pruning with masks (schedule oneshot, iterative or gradual), or structured "
        "channel/head/block pruning that physically shrinks the model (granularity channel, head, block)",
    ),
    "sparse_train": StageSpec(
        SparseTrainConfig, _run_sparse_train,
        help="train with an L1/L2/group-lasso penalty, then prune what it drove to zero (optionally fine-tune)",
    ),
    "quantize": StageSpec(
        QuantizeStage, _run_quantize, finetune_aliases=("qat",), handles_finetune=True,
        help="quantize weights (and activations, static mode); finetune: QAT, optionally distilled (distill: {...})",
    ),
    "fold": technique_stage(
        FOLD, prepare=_eval, help="fold BatchNorms into convs/linears and merge adjacent linear maps (exact)"
    ),
    "drop_layers": technique_stage(DROP_LAYERS, help="remove the k most redundant blocks (ShortGPT block influence...)"),
    "factorize": technique_stage(
        FACTORIZE, help="low-rank factorisation: SVD of linears (optionally data-aware), Tucker-2 of convs"
    ),
    "share": technique_stage(
        SHARE, help="k-means weight sharing per layer (bits, init linear/density/random), optional centroid fine-tuning"
    ),
    "encode": StageSpec(
        EncodeStage, _run_encode, finetune=False, help="write the model as a .tslim file (Huffman-coded); its size is bytes_file"
    ),
    "distill": StageSpec(
        DistillStage, _run_distill, finetune=False,
        help="knowledge distillation from a frozen teacher ('initial' = the model before compression, or a model spec)",
    ),
    "export": EXPORT_STAGE,
}
CATALOG.update({  # the language-model methods (torchslim.llm.stage)
    _n: StageSpec(_s.tech.config, _s.runner, help=_s.help, callbacks=_s.tech.callbacks) for _n, _s in LLM_STAGES.items()
})

for _name, _spec in CATALOG.items():
    STAGES.register(_name)(_spec)
