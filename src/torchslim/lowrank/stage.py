"""The ``factorize`` recipe stage (SVD / Tucker-2 low-rank factorisation)."""

from __future__ import annotations

from torch import nn

from torchslim.config import Config
from torchslim.lowrank.api import FactorizeConfig, factorize_
from torchslim.report import Report
from torchslim.stages import STAGES, StageContext, StageSpec


class FactorizeStage(FactorizeConfig):
    """``{type: factorize, macs_ratio: 0.5}`` or ``{type: factorize, energy: 0.9, targets: {...}}``.

    With ``data_aware: true`` the calibration batches are shuffled training batches of 128
    (``calibration_batches`` of them, seed 0).
    """

    name: str | None = None


def _run_factorize(model: nn.Module, cfg: Config, ctx: StageContext) -> Report:
    if not isinstance(cfg, FactorizeConfig):
        raise TypeError(f"expected a FactorizeConfig, got {type(cfg).__name__}")
    calibration = ctx.data.loader("train", 128, shuffle=True, seed=0) if cfg.data_aware else None
    return factorize_(
        model, cfg.model_dump(exclude={"name"}), example_input=ctx.data.example_input(), calibration=calibration
    )


STAGES.register("factorize")(
    StageSpec(
        FactorizeStage,
        _run_factorize,
        help="low-rank factorisation: SVD of linears (optionally data-aware), Tucker-2 of convs",
    )
)
