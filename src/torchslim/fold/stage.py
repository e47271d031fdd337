"""The ``fold`` recipe stage (eval-mode BatchNorm folding and linear merges)."""

from __future__ import annotations

from torch import nn

from torchslim.config import Config
from torchslim.fold.api import FoldConfig, fold_
from torchslim.fold.redundant import DropLayersConfig, drop_layers_
from torchslim.report import Report
from torchslim.stages import STAGES, StageContext, StageSpec


class FoldStage(FoldConfig):
    """``{type: fold, batchnorm: true, linear: if_smaller, targets: {...}}``."""

    name: str | None = None


def _run_fold(model: nn.Module, cfg: Config, ctx: StageContext) -> Report:
    if not isinstance(cfg, FoldConfig):
        raise TypeError(f"expected a FoldConfig, got {type(cfg).__name__}")
    model.eval()  # folding is for inference: BatchNorm uses its running statistics
    return fold_(model, cfg.model_dump(exclude={"name"}))


STAGES.register("fold")(
    StageSpec(FoldStage, _run_fold, help="fold BatchNorms into convs/linears and merge adjacent linear maps (exact)")
)


class DropLayersStage(DropLayersConfig):
    """``{type: drop_layers, k: 2, criterion: block_influence}`` (calibration: training batches)."""

    name: str | None = None


def _run_drop_layers(model: nn.Module, cfg: Config, ctx: StageContext) -> Report:
    if not isinstance(cfg, DropLayersConfig):
        raise TypeError(f"expected a DropLayersConfig, got {type(cfg).__name__}")
    calibration = ctx.data.loader("train", 128, shuffle=True, seed=cfg.seed)
    return drop_layers_(model, cfg.model_dump(exclude={"name"}), calibration=calibration)


STAGES.register("drop_layers")(
    StageSpec(DropLayersStage, _run_drop_layers, help="remove the k most redundant blocks (ShortGPT block influence...)")
)
