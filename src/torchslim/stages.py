"""Recipe stages: each registered with its config class and the function that runs it.

A stage config is the technique's own config plus an optional ``name``; in YAML
a stage is a mapping with ``type`` (the registered name) and the config's
fields. The runner mutates the model in place and returns the technique's
:class:`~torchslim.report.Report`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from torchslim.config import Config
from torchslim.data import DataBundle
from torchslim.prune import PruneConfig, prune_
from torchslim.registry import Registry
from torchslim.report import Report
from torchslim.train import TrainConfig, finetune


@dataclass(frozen=True)
class StageContext:
    """What a stage runner gets besides the model and its config."""

    data: DataBundle
    label: str
    progress: bool = True


StageRunner = Callable[[nn.Module, Config, StageContext], Report]


@dataclass(frozen=True)
class StageSpec:
    """A stage type: its config class, its runner, and whether it produces the baseline."""

    config: type[Config]
    run: StageRunner
    baseline: bool = False
    help: str = ""


STAGES: Registry[StageSpec] = Registry("stage type")


class TrainStage(TrainConfig):
    name: str | None = None


class FinetuneStage(TrainConfig):
    name: str | None = None


class PruneStage(PruneConfig):
    name: str | None = None


def _run_train(model: nn.Module, cfg: Config, ctx: StageContext) -> Report:
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"expected a TrainConfig, got {type(cfg).__name__}")
    return finetune(model, ctx.data, cfg.model_dump(exclude={"name"}), progress=ctx.progress, description=ctx.label)


def _run_prune(model: nn.Module, cfg: Config, ctx: StageContext) -> Report:
    if not isinstance(cfg, PruneConfig):
        raise TypeError(f"expected a PruneConfig, got {type(cfg).__name__}")
    return prune_(model, cfg.model_dump(exclude={"name"}))


STAGES.register("train")(
    StageSpec(TrainStage, _run_train, baseline=True, help="train the model; the report's 'before' is measured after the last train stage")
)
STAGES.register("finetune")(StageSpec(FinetuneStage, _run_train, help="fine-tune (masks stay applied)"))
STAGES.register("prune")(StageSpec(PruneStage, _run_prune, help="unstructured pruning to a target sparsity"))

# Stage types defined in technique packages register themselves in their own
# ``stage.py`` (``STAGES.register("name")(StageSpec(...))``); this explicit list
# imports them so every stage exists once ``torchslim.stages`` is imported.
# One line per package, kept sorted.
