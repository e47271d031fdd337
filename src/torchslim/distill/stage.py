"""The ``distill`` recipe stage.

YAML::

    stages:
      - {type: train, epochs: 10, lr: 0.1}
      - {type: prune, sparsity: 0.9}
      - {type: distill, teacher: initial, epochs: 3, lr: 0.01, temperature: 4, alpha: 0.9}

``teacher`` is either ``initial`` — the recipe's model as it was before the
compression stages (after the last ``train`` stage when there is one, else as
loaded): what "healing after pruning" distils from — or a model spec
``{name: zoo:NAME | package.module:build_fn, args: {...}, weights: FILE}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from torch import nn

from torchslim.config import Config
from torchslim.distill.config import DistillConfig
from torchslim.distill.trainer import distill
from torchslim.errors import TorchslimError
from torchslim.report import Report
from torchslim.stages import STAGES, StageContext, StageSpec
from torchslim.zoo.spec import ModelSpec

class TeacherSpec(ModelSpec):
    """A teacher built from the zoo (``zoo:NAME``) or an entry point, with optional weights."""


class DistillStage(DistillConfig):
    """A ``distill`` stage: :class:`DistillConfig` plus the teacher and an optional stage name."""

    name: str | None = None
    teacher: Literal["initial"] | TeacherSpec = "initial"


def build_teacher(spec: Literal["initial"] | TeacherSpec, ctx: Any) -> nn.Module:
    """The teacher a stage names: the pipeline's initial model, or a model built from its spec.

    ``initial`` needs the pipeline to provide ``ctx.initial_model`` (a module or
    a zero-argument callable returning one).

    Example:
        >>> from types import SimpleNamespace
        >>> ctx = SimpleNamespace(data=None)            # the pipeline passes its StageContext
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
    from torchslim.pipeline import build_model  # late: the pipeline imports the stages
    from torchslim.recipe import ModelSpec

    data = getattr(ctx, "data", None)
    return build_model(ModelSpec(name=spec.name, args=spec.args, weights=spec.weights), data)


def _run_distill(model: nn.Module, cfg: Config, ctx: StageContext) -> Report:
    if not isinstance(cfg, DistillStage):
        raise TypeError(f"expected a DistillStage config, got {type(cfg).__name__}")
    teacher = build_teacher(cfg.teacher, ctx)
    report = distill(model, teacher, ctx.data, cfg.model_dump(exclude={"name", "teacher"}), progress=ctx.progress, description=ctx.label)
    report.meta["teacher"] = cfg.teacher if isinstance(cfg.teacher, str) else cfg.teacher.model_dump(exclude={"version"})
    return report


STAGES.register("distill")(
    StageSpec(
        DistillStage,
        _run_distill,
        help="knowledge distillation from a frozen teacher ('initial' = the model before compression, or a model spec)",
    )
)
