"""Recipe stages: each registered with its config class and the function that runs it.

A stage config is the technique's own config plus an optional ``name``; in YAML
a stage is a mapping with ``type`` (the registered name) and the config's
fields. The runner mutates the model in place and returns the technique's
:class:`~torchslim.report.Report`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from torchslim.config import Config
from torchslim.data import DataBundle
from torchslim.prune import PruneConfig, prune_
from torchslim.prune.schedule import ScheduledPruneConfig, prune_with_schedule
from torchslim.prune.structured import STRUCTURED_GRANULARITIES, StructuredPruneConfig, prune_structured_
from torchslim.registry import Registry
from torchslim.report import Report
from torchslim.train import TrainConfig, finetune


@dataclass(frozen=True)
class StageContext:
    """What a stage runner gets besides the model and its config."""

    data: DataBundle
    label: str
    progress: bool = True
    # the model as it was before compression (after the last completed train stage), built on demand
    initial_model: Callable[[], nn.Module] | None = None
    # the run directory (files a stage writes go there) and the architecture reference of the model
    output: Path | None = None
    arch: dict[str, Any] | None = None


StageRunner = Callable[[nn.Module, Config, StageContext], Report]


@dataclass(frozen=True)
class StageSpec:
    """A stage type: its config class, its runner, and whether it produces the baseline."""

    config: type[Config]
    run: StageRunner
    baseline: bool = False
    help: str = ""
    select: Callable[[dict[str, Any]], type[Config]] | None = None  # picks the config class from the raw mapping

    def config_for(self, raw: dict[str, Any]) -> type[Config]:
        """The config class validating ``raw`` (``select`` lets one stage type take several config shapes)."""
        return self.select(raw) if self.select is not None else self.config


STAGES: Registry[StageSpec] = Registry("stage type")


class TrainStage(TrainConfig):
    name: str | None = None


class FinetuneStage(TrainConfig):
    name: str | None = None


class PruneStage(ScheduledPruneConfig):
    name: str | None = None


def _run_train(model: nn.Module, cfg: Config, ctx: StageContext) -> Report:
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"expected a TrainConfig, got {type(cfg).__name__}")
    return finetune(model, ctx.data, cfg.model_dump(exclude={"name"}), progress=ctx.progress, description=ctx.label)


class StructuredPruneStage(StructuredPruneConfig):
    name: str | None = None


def _select_prune(raw: dict[str, Any]) -> type[Config]:
    return StructuredPruneStage if raw.get("granularity") in STRUCTURED_GRANULARITIES else PruneStage


def _run_prune(model: nn.Module, cfg: Config, ctx: StageContext) -> Report:
    if isinstance(cfg, StructuredPruneConfig):
        calib = ctx.data.loader("train", 64, shuffle=True, seed=cfg.seed)
        return prune_structured_(model, cfg.model_dump(exclude={"name"}), example_input=ctx.data.example_input(), loader=calib)
    if not isinstance(cfg, ScheduledPruneConfig):
        raise TypeError(f"expected a ScheduledPruneConfig, got {type(cfg).__name__}")
    # calibration batches and fine-tuning data come from the recipe's data set
    return prune_with_schedule(
        model, cfg.model_dump(exclude={"name"}), ctx.data, progress=ctx.progress, description=ctx.label
    )


STAGES.register("train")(
    StageSpec(TrainStage, _run_train, baseline=True, help="train the model; the report's 'before' is measured after the last train stage")
)
STAGES.register("finetune")(StageSpec(FinetuneStage, _run_train, help="fine-tune (masks stay applied)"))
STAGES.register("prune")(
    StageSpec(
        PruneStage,
        _run_prune,
        help="element or N:M pruning with masks (schedule oneshot, iterative or gradual), or structured "
        "channel/head/block pruning that physically shrinks the model (granularity channel, head, block)",
        select=_select_prune,
    )
)

# Stage types defined in technique packages register themselves in their own
# ``stage.py`` (``STAGES.register("name")(StageSpec(...))``); this explicit list
# imports them so every stage exists once ``torchslim.stages`` is imported.
# One line per package, kept sorted.
from torchslim.distill import stage as _distill_stage  # noqa: E402,F401
from torchslim.encode import stage as _encode_stage  # noqa: E402,F401
from torchslim.fold import stage as _fold_stage  # noqa: E402,F401
from torchslim.lowrank import stage as _lowrank_stage  # noqa: E402,F401
from torchslim.prune import stage as _prune_stage  # noqa: E402,F401
from torchslim.quant import stage as _quant_stage  # noqa: E402,F401
