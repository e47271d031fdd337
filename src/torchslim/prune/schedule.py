"""When pruning happens: one-shot, iterative rounds, or a gradual ramp during training.

*What* is pruned is a :class:`~torchslim.prune.config.PruneConfig`; *when* is a
:class:`ScheduleConfig`:

- ``oneshot``: prune once to the target (no training).
- ``iterative``: ``rounds`` rounds of prune + fine-tune. Round ``r`` (1-based)
  prunes to ``s_r = 1 - (1 - s)^(r / rounds)``: every round removes the same
  fraction of the weights still alive, and the last round reaches ``s`` exactly
  (per-layer target sparsities follow the same rule). Han et al. 2015 prune
  LeNet-300-100 this way.
- ``gradual``: Zhu & Gupta (2017). During one training run the sparsity follows
  ``s_t = s_f + (s_i - s_f)(1 - (t - t0)/(nΔt))³`` for ``t0 <= t <= t0 + nΔt``,
  the masks are recomputed every ``Δt`` optimizer steps (at ``t0, t0+Δt, ...,
  t0+nΔt``) and stay applied in between; weights pruned once stay pruned.

Masks stay applied through every fine-tune (gradient hook plus re-application
after each optimizer step), so pruned weights are exactly zero at the end.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from torchslim.config import Config
from torchslim.data import DataBundle
from torchslim.errors import TransformRefusedError
from torchslim.prune.api import prune_
from torchslim.prune.config import CalibrationConfig, LayerPruneConfig, PruneConfig
from torchslim.prune.mask import reapply_masks
from torchslim.report import Report
from torchslim.technique import Inputs, legacy_inputs
from torchslim.train.loop import Callback, TrainConfig, TrainState, finetune

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ScheduleConfig(Config):
    """When to prune.

    Attributes:
        kind: ``oneshot``, ``iterative`` or ``gradual``.
        rounds: prune + fine-tune rounds (``iterative``).
        finetune: the fine-tune after each round (``iterative``) or the training
            run the ramp happens in (``gradual``); required for both.
        initial_sparsity: ``s_i`` of the ramp (``gradual``).
        start_step: ``t0``, the optimizer step of the first mask update (``gradual``).
        ramp_steps: ``nΔt``, steps from the first to the last mask update;
            default: 75 % of the training run's steps after ``t0`` (``gradual``).
        frequency: ``Δt``, optimizer steps between mask updates (``gradual``).
    """

    kind: Literal["oneshot", "iterative", "gradual"] = "oneshot"
    rounds: int = Field(default=4, ge=1)
    finetune: TrainConfig | None = None
    initial_sparsity: float = Field(default=0.0, ge=0.0, lt=1.0)
    start_step: int = Field(default=0, ge=0)
    ramp_steps: int | None = Field(default=None, ge=1)
    frequency: int = Field(default=100, ge=1)

    @model_validator(mode="after")
    def _check(self) -> ScheduleConfig:
        if self.kind != "oneshot" and self.finetune is None:
            raise ValueError(f"schedule kind {self.kind!r} needs 'finetune' (a TrainConfig mapping)")
        return self


class ScheduledPruneConfig(PruneConfig):
    """A :class:`PruneConfig` plus its :class:`ScheduleConfig` (the ``prune`` recipe stage).

    Example:
        >>> cfg = ScheduledPruneConfig.parse(
        ...     {"sparsity": 0.9, "schedule": {"kind": "iterative", "rounds": 3, "finetune": {"epochs": 1}}})
        >>> cfg.schedule.kind, cfg.schedule.rounds, cfg.schedule.finetune.epochs
        ('iterative', 3, 1)
    """

    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)

    @model_validator(mode="after")
    def _check_schedule(self) -> ScheduledPruneConfig:
        if self.granularity == "nm" and self.schedule.kind != "oneshot":
            raise ValueError(f"granularity 'nm' takes schedule kind 'oneshot' (a fixed pattern), not {self.schedule.kind!r}")
        if self.schedule.kind == "gradual" and self.schedule.initial_sparsity > self.target_sparsity:
            raise ValueError(
                f"schedule.initial_sparsity {self.schedule.initial_sparsity} exceeds the target sparsity {self.target_sparsity}"
            )
        return self


def iterative_sparsity(target: float, round_: int, rounds: int) -> float:
    """Sparsity after round ``round_`` (1-based) of ``rounds``: ``1 - (1 - target)^(round_/rounds)``.

    Example:
        >>> round(iterative_sparsity(0.75, 1, 2), 3)
        0.5
    """
    return 1.0 - (1.0 - target) ** (round_ / rounds)


def gradual_sparsity(step: int, initial: float, final: float, start_step: int, ramp_steps: int) -> float:
    """Zhu & Gupta's cubic ramp: ``s_f + (s_i - s_f)(1 - (t - t0)/(nΔt))³``, clamped to ``[t0, t0 + nΔt]``.

    Example:
        >>> round(gradual_sparsity(50, 0.0, 0.8, 0, 100), 6)     # 0.8 - 0.8 * 0.5**3
        0.7
    """
    frac = min(1.0, max(0.0, (step - start_step) / ramp_steps))
    return final + (initial - final) * (1.0 - frac) ** 3


def calibration_loader(data: DataBundle, cfg: CalibrationConfig) -> Any:
    """The calibration batches a :class:`CalibrationConfig` names, drawn from ``data``.

    Example:
        >>> loader = calibration_loader(ts.load_data("digits"), CalibrationConfig(batches=4, batch_size=32))
        >>> x, y = next(iter(loader))                   # shuffled with the config's seed
        >>> x.shape
        torch.Size([32, 1, 8, 8])
    """
    return data.calibration_loader(cfg)


def _with_sparsity(config: PruneConfig, fn: Callable[[float], float]) -> PruneConfig:
    """A copy of ``config`` whose stage and per-layer sparsities are mapped through ``fn``."""
    targets = None
    if config.targets is not None:
        targets = {
            k: (None if v is None else LayerPruneConfig(sparsity=None if v.sparsity is None else fn(v.sparsity), criterion=v.criterion))
            for k, v in config.targets.items()
        }
    data = {k: v for k, v in config.model_dump().items() if k in PruneConfig.model_fields}
    data.update(sparsity=fn(config.target_sparsity), targets=None)
    if config.granularity == "nm":
        data["sparsity"] = None
    out = PruneConfig.model_validate(data)
    out.targets = targets
    return out


class GradualPruning(Callback):
    """Training callback pruning along Zhu & Gupta's cubic ramp (masks every ``frequency`` steps).

    Args:
        config: what to prune (``sparsity`` is the final ``s_f``; element granularity).
        schedule: the ramp (``initial_sparsity``, ``start_step``, ``ramp_steps``, ``frequency``).
        calibration: calibration batches for criteria that need data (earlier ``loader=``).
        loss_fn: loss for gradient-based criteria.
        filter_fn: forwarded to :func:`~torchslim.prune.prune_`.

    After training, ``history`` holds ``(step, sparsity)`` of every mask update
    and ``report`` the last :func:`prune_` report. If training stops before the
    ramp ends, :meth:`on_finalize` prunes to the final sparsity.

    Example:
        >>> data = ts.load_data("digits")
        >>> model = ts.create_model("lenet300", in_features=64)
        >>> cb = GradualPruning(PruneConfig(sparsity=0.9), ScheduleConfig(kind="gradual", frequency=5, finetune={}))
        >>> report = ts.finetune(model, data, {"epochs": 3}, callbacks=[cb])    # 33 steps, ramp over 25
        >>> [(step, round(s, 2)) for step, s in cb.history]
        [(0, 0.0), (5, 0.44), (10, 0.71), (15, 0.84), (20, 0.89), (25, 0.9)]
    """

    def __init__(
        self,
        config: PruneConfig | dict[str, Any],
        schedule: ScheduleConfig | dict[str, Any],
        *,
        calibration: Any = None,
        loss_fn: LossFn | None = None,
        filter_fn: Callable[[nn.Module, str], bool] | None = None,
        **deprecated: Any,
    ) -> None:
        self.config = PruneConfig.parse(config)
        if self.config.granularity != "element":
            raise TransformRefusedError("gradual pruning works with granularity 'element'")
        self.schedule = ScheduleConfig.parse(schedule)
        self.calibration = legacy_inputs("GradualPruning", Inputs(calibration), deprecated).calibration
        self.loss_fn, self.filter_fn = loss_fn, filter_fn
        self.history: list[tuple[int, float]] = []
        self.report: Report | None = None
        self.first_report: Report | None = None
        self.ramp_steps = self.schedule.ramp_steps or 0

    def sparsity_at(self, step: int) -> float:
        """The ramp's sparsity at optimizer step ``step``."""
        return gradual_sparsity(step, self.schedule.initial_sparsity, self.config.target_sparsity, self.schedule.start_step, self.ramp_steps)

    def _update(self, model: nn.Module, step: int) -> None:
        target = self.sparsity_at(step)
        ratio = target / self.config.target_sparsity if self.config.target_sparsity > 0 else 0.0
        cfg = _with_sparsity(self.config, lambda s: target if s == self.config.target_sparsity else s * ratio)
        self.report = prune_(model, cfg, filter_fn=self.filter_fn, calibration=self.calibration, loss_fn=self.loss_fn)
        if self.first_report is None:
            self.first_report = self.report
        self.history.append((step, target))

    def _due(self, step: int) -> bool:
        t0, dt = self.schedule.start_step, self.schedule.frequency
        if step < t0 or step > t0 + self.ramp_steps:
            return False
        return (step - t0) % dt == 0 or step == t0 + self.ramp_steps

    def on_train_start(self, state: TrainState) -> None:
        if not self.schedule.ramp_steps:
            after = max(1, state.total_steps - self.schedule.start_step)
            self.ramp_steps = max(1, round(0.75 * after))
        if self._due(state.step):
            self._update(state.model, state.step)

    def on_step(self, state: TrainState) -> None:
        reapply_masks(state.model)
        if self._due(state.step):
            self._update(state.model, state.step)

    def on_finalize(self, state: TrainState) -> None:
        if not self.history or self.history[-1][1] < self.config.target_sparsity:
            self._update(state.model, self.schedule.start_step + self.ramp_steps)


def _merge(first: Report, last: Report, meta: dict[str, Any]) -> Report:
    """The last round's report with each layer's ``sparsity_before`` from the first round."""
    before = {l.name: l.details.get("sparsity_before") for l in first.layers}
    for layer in last.layers:
        if layer.name in before:
            layer.details["sparsity_before"] = before[layer.name]
    return Report(title="prune", technique="prune", layers=last.layers, skipped=last.skipped, meta={**last.meta, **meta})


def prune_with_schedule(
    model: nn.Module,
    data: DataBundle | ScheduledPruneConfig | dict[str, Any],
    config: ScheduledPruneConfig | dict[str, Any] | DataBundle | None = None,
    *,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    loss_fn: LossFn | None = None,
    progress: bool = False,
    description: str = "prune",
) -> Report:
    """Prune ``model`` in place following ``config.schedule`` (one-shot, iterative or gradual).

    Calibration batches for data-needing criteria come from ``data`` as
    ``config.calibration`` says; fine-tuning uses ``data``'s training split.

    Returns:
        The final :func:`prune_` report (``sparsity_before`` is the state before
        the first round), with ``meta["schedule"]`` listing every round or mask
        update (sparsity, validation accuracy after fine-tune).

    Example:
        >>> data = ts.load_data("digits")
        >>> model = ts.create_model("lenet300", in_features=64)
        >>> report = prune_with_schedule(model, data, {"sparsity": 0.92, "keep_first_last": False,
        ...     "schedule": {"kind": "iterative", "rounds": 4, "finetune": {"epochs": 2, "lr": 0.01}}})
        >>> [round(r["sparsity"], 2) for r in report.meta["schedule"]["rounds"]]
        [0.47, 0.72, 0.85, 0.92]
    """
    if isinstance(config, DataBundle) and not isinstance(data, DataBundle):
        warnings.warn(
            "prune_with_schedule(model, config, data) is deprecated; call prune_with_schedule(model, data, config)",
            DeprecationWarning,
            stacklevel=2,
        )
        data, config = config, data
    if not isinstance(data, DataBundle):
        raise TypeError(f"prune_with_schedule(model, data, config): data must be a DataBundle, got {type(data).__name__}")
    cfg = ScheduledPruneConfig.parse(config)
    sched = cfg.schedule
    calibration = data.calibration_loader(cfg.calibration)
    base = _with_sparsity(cfg, lambda s: s)
    if sched.kind == "oneshot":
        report = prune_(model, base, filter_fn=filter_fn, calibration=calibration, loss_fn=loss_fn)
        report.meta["schedule"] = {"kind": "oneshot"}
        return report
    if sched.finetune is None:  # guarded by the validator; keeps type checkers calm
        raise TransformRefusedError(f"schedule {sched.kind!r} needs a finetune config")
    if sched.kind == "iterative":
        rounds: list[dict[str, Any]] = []
        reports: list[Report] = []
        for r in range(1, sched.rounds + 1):
            round_cfg = _with_sparsity(base, lambda s, r=r: iterative_sparsity(s, r, sched.rounds))
            reports.append(prune_(model, round_cfg, filter_fn=filter_fn, calibration=calibration, loss_fn=loss_fn))
            ft = finetune(model, data, sched.finetune, loss_fn=loss_fn, progress=progress, description=f"{description} round {r}/{sched.rounds}")
            hist = ft.meta.get("history") or [{}]
            rounds.append({"round": r, "sparsity": round_cfg.target_sparsity, "val_accuracy": hist[-1].get("val_accuracy")})
        return _merge(reports[0], reports[-1], {"schedule": {"kind": "iterative", "rounds": rounds}})
    cb = GradualPruning(base, sched, calibration=calibration, loss_fn=loss_fn, filter_fn=filter_fn)
    ft = finetune(model, data, sched.finetune, callbacks=[cb], loss_fn=loss_fn, progress=progress, description=f"{description} gradual")
    if cb.report is None or cb.first_report is None:
        raise TransformRefusedError("gradual pruning made no mask update (training ran no step)")
    return _merge(
        cb.first_report,
        cb.report,
        {"schedule": {"kind": "gradual", "updates": [{"step": s, "sparsity": v} for s, v in cb.history], "history": ft.meta.get("history")}},
    )
