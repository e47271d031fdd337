"""The ``export`` recipe stage: the model out as the artefact that is deployed, checked in ONNX Runtime.

``{type: export, format: onnx}`` writes ``file`` (default ``model.onnx``) into the run
directory: fp32 ONNX for a float model, the int8 QDQ graph run through ``ort_optimize`` for
a quantized one. ``{type: export, format: hf, dir: PATH}`` writes a directory that loads
without torchslim (:func:`torchslim.deploy.hf.save_pretrained`: ``transformers`` weights for
a float Hugging Face model, an ONNX directory for a quantized one) at ``PATH`` (outside the
run directory, which holds files only).

Before anything is written, the graph runs in ONNX Runtime against the torch model on the
``check`` batches (by default the whole test split): top-1 agreement and cosine similarity
go into the stage's report, and below ``min_agreement`` / ``min_cosine`` the stage fails,
naming the figure. The run then measures its "after" accuracy and latency on the exported
file in ONNX Runtime, with the recipe's ``measure`` block (threads, batch, runs); the torch
figures are kept in the stage's ``simulation`` entry.

Example:
    >>> ExportStage.parse({"format": "hf"})
    Traceback (most recent call last):
    ...
    torchslim.errors.ConfigError: 1 error(s) in config
      - <root>: format hf writes a directory: give dir (a path outside the run directory)
    >>> ExportStage(file="lenet.onnx").run_files()
    ['lenet.onnx']
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from torch import nn

from torchslim.config import Config
from torchslim.errors import TorchslimError
from torchslim.report import Report
from torchslim.rundir import MAX_NAME_BYTES, check_name, is_run_file
from torchslim.stages.base import StageContext, StageResult, StageSpec

__all__ = ["EXPORT_STAGE", "ExportCheckConfig", "ExportStage", "run_export", "run_file_name"]


def run_file_name(v: str) -> str:
    """``v`` if it may name a file a stage writes inside the run directory; else ``ValueError`` saying why.

    A plain name (no ``/``, ``..`` or control characters, at most ``MAX_NAME_BYTES`` UTF-8 bytes) that is
    not one of the run's own files. Shared by the ``file`` validators of the stages that write one.

    Example:
        >>> run_file_name("model.onnx")
        'model.onnx'
        >>> run_file_name("report.json")
        Traceback (most recent call last):
        ...
        ValueError: names a file the run itself writes (state.json, recipe.json, manifest.json, report.*, stage-NN-*): choose another name
    """
    try:
        check_name(v, "file")
    except TorchslimError:
        raise ValueError(
            f"must be a plain file name (it is written inside the run directory): no '/', '..' or control "
            f"characters, at most {MAX_NAME_BYTES} UTF-8 bytes"
        ) from None
    if is_run_file(v):
        raise ValueError(
            "names a file the run itself writes (state.json, recipe.json, manifest.json, report.*, stage-NN-*): "
            "choose another name"
        )
    return v


class ExportCheckConfig(Config):
    """The batches an exported graph is checked on, and the least agreement accepted.

    Attributes:
        split: the data split the batches come from (``test``, ``val`` or ``train``), in order.
        batches: at most this many batches (``None``: the whole split).
        batch_size: samples per batch (a split served by a loader keeps its own).
        min_agreement: the least top-1 agreement with the torch model (fraction).
        min_cosine: the least mean cosine similarity of the outputs.
    """

    split: Literal["test", "val", "train"] = "test"
    batches: int | None = Field(default=None, ge=1, le=100_000)
    batch_size: int = Field(default=64, ge=1, le=65_536)
    min_agreement: float = Field(default=0.99, ge=0.0, le=1.0)
    min_cosine: float = Field(default=0.99, ge=-1.0, le=1.0)


class ExportStage(Config):
    """An ``export`` stage.

    Attributes:
        format: ``onnx`` (one file in the run directory) or ``hf`` (a directory at ``dir``).
        file: with ``onnx``, the file name inside the run directory: one plain name that is not
            one of the run's own files.
        dir: with ``hf``, the directory to write (relative paths from the current directory); an
            existing one is replaced only when torchslim wrote it.
        optimize: run ``ort_optimize`` on an int8 graph (``false``: the portable QDQ graph).
        opset: ONNX opset.
        threads: ONNX Runtime threads of the check (``None``: torch's thread count).
        check: see :class:`ExportCheckConfig`.
    """

    format: Literal["onnx", "hf"] = "onnx"
    file: str = Field(default="model.onnx", min_length=1)
    dir: str | None = Field(default=None, min_length=1, max_length=4096)
    optimize: bool = True
    opset: int = Field(default=17, ge=13, le=21)
    threads: int | None = Field(default=None, ge=1, le=256)
    check: ExportCheckConfig = ExportCheckConfig()

    @field_validator("file")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        return run_file_name(v)

    @model_validator(mode="after")
    def _format_fields(self) -> ExportStage:
        if self.format == "hf" and self.dir is None:
            raise ValueError("format hf writes a directory: give dir (a path outside the run directory)")
        if self.format == "onnx" and self.dir is not None:
            raise ValueError("dir is for format hf; format onnx writes file inside the run directory")
        return self

    def run_files(self) -> list[str]:
        """The files this stage writes into the run directory (the run lists them in its manifest first)."""
        return [self.file] if self.format == "onnx" else []


def _target(cfg: ExportStage, ctx: StageContext) -> Path:
    if cfg.format == "onnx":
        if ctx.output is None:
            raise TorchslimError("the export stage with format onnx needs a run directory to write into")
        return ctx.output / cfg.file
    target = Path(str(cfg.dir))
    if ctx.output is not None and target.resolve().is_relative_to(ctx.output.resolve()):
        raise TorchslimError(
            f"export dir {cfg.dir!r} is inside the run directory {ctx.output}, which holds the run's files only; "
            "choose a path outside it"
        )
    return target


def run_export(model: nn.Module, cfg: ExportStage, ctx: StageContext) -> StageResult:
    """Export ``model`` as ``cfg`` says, after checking it in ONNX Runtime on the recipe's data."""
    if not isinstance(cfg, ExportStage):
        raise TypeError(f"expected a ExportStage, got {type(cfg).__name__}")
    from torchslim.deploy.api import export  # ONNX and ONNX Runtime load only when a run exports

    target = _target(cfg, ctx)
    loader = ctx.data.loader(cfg.check.split, cfg.check.batch_size)
    batches = itertools.islice(loader, cfg.check.batches) if cfg.check.batches is not None else loader
    result = export(
        model, target, format=cfg.format, example_input=ctx.data.example_input(), source=ctx.source,
        check=batches, threads=cfg.threads, optimize=cfg.optimize, opset=cfg.opset,
        min_agreement=cfg.check.min_agreement, min_cosine=cfg.check.min_cosine,
    )
    check = result.check
    meta = {
        "format": cfg.format,
        "kind": result.kind,
        "path": cfg.file if cfg.format == "onnx" else str(cfg.dir),
        "files": result.files,
        "file_bytes": result.bytes,
        "check": None if check is None else {**check.to_dict(), "batches": f"{cfg.check.split} split"},
    }
    if result.onnx is not None:  # the run measures its "after" figures on this file
        meta["deployed"] = str(result.onnx)
    if result.notes:
        meta["notes"] = result.notes
    return StageResult(Report(title="export", technique="export", meta=meta), artefact=result.model_file)


EXPORT_STAGE = StageSpec(
    ExportStage, run_export, finetune=False,
    help="write the deployed artefact (onnx: fp32, or int8 QDQ + ort_optimize when quantized; hf: a directory "
    "transformers/optimum load), checked in ONNX Runtime; the run's after-figures are measured on it",
)
