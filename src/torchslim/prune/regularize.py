"""Regularised sparse training: penalties that drive weights to zero, then pruning of what they drove there.

Penalties, added to the training loss by :class:`SparsityRegularizer` (a
training callback, ``on_loss``), each multiplied by ``strength`` and by the
layer's own ``weight`` from ``targets``:

- ``l1``: ``Σ |w|`` (lasso: drives single weights to exactly zero under
  proximal updates, close to zero under SGD);
- ``l2``: ``Σ w²`` (shrinks everything, mostly a baseline);
- ``group_lasso``: ``Σ_units ‖W_unit‖₂`` over output units (a Linear row, a
  convolution filter): drives whole units to zero together (Wen et al. 2016).

:func:`sparse_train` trains with the penalty, then masks what it drove
towards zero: weights (``l1``/``l2``) or whole output units (``group_lasso``)
whose magnitude / L2 norm is at most ``threshold``, or the lowest ``sparsity``
fraction of them (global ranking); an optional fine-tune follows with the masks
applied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from torchslim.config import Config
from torchslim.data import DataBundle
from torchslim.errors import TransformRefusedError
from torchslim.prune.mask import attach_mask, get_mask
from torchslim.prune.unstructured import mask_skip_reason, prunable_layers
from torchslim.report import LayerReport, Report, SkippedLayer
from torchslim.report.coverage import unlisted_layers
from torchslim.targets import check_target_keys
from torchslim.targets import select_layers as _select
from torchslim.technique import refuse_if_empty
from torchslim.train.loop import Callback, TrainConfig, TrainState, finetune

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Penalty = Literal["l1", "l2", "group_lasso"]


class LayerPenaltyConfig(Config):
    """Per-layer override inside ``targets``: the penalty's weight for this layer."""

    weight: float = Field(default=1.0, ge=0.0)


class RegularizeConfig(Config):
    """A sparsity-inducing penalty on the training loss.

    Attributes:
        penalty: ``l1``, ``l2`` or ``group_lasso`` (per output unit).
        strength: ``λ``, the penalty's multiplier.
        targets: ordered ``{name | "re:pattern": {weight: w} | null}``; ``null``
            skips a layer; omitted: every Linear/Conv weight, weight 1.
        keep_first_last: leave the first and last prunable layers out unless a
            targets key names them exactly.
    """

    penalty: Penalty = "l1"
    strength: float = Field(default=1e-4, gt=0.0)
    targets: dict[str, LayerPenaltyConfig | None] | None = None
    keep_first_last: bool = True

    @field_validator("targets")
    @classmethod
    def _check_targets(cls, v: dict[str, LayerPenaltyConfig | None] | None) -> dict[str, LayerPenaltyConfig | None] | None:
        if v:
            issues = check_target_keys(v)
            if issues:
                raise ValueError("; ".join(i.message + f" ({i.value!r})" for i in issues))
        return v


class SparseTrainConfig(RegularizeConfig):
    """Train with a penalty, prune what it drove to zero, optionally fine-tune.

    Attributes:
        train: the training run with the penalty.
        threshold: prune weights (``l1``/``l2``) or units (``group_lasso``) whose
            magnitude / L2 norm is at most this.
        sparsity: or prune this fraction of them, lowest first (global ranking).
        finetune: optional fine-tune after pruning (masks applied, no penalty).
    """

    train: TrainConfig = Field(default_factory=TrainConfig)
    threshold: float | None = Field(default=None, ge=0.0)
    sparsity: float | None = Field(default=None, ge=0.0, lt=1.0)
    finetune: TrainConfig | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> SparseTrainConfig:
        if (self.threshold is None) == (self.sparsity is None):
            raise ValueError("give exactly one of 'threshold' and 'sparsity' (what to prune after training)")
        return self


def select_layers(
    model: nn.Module, config: RegularizeConfig, filter_fn: Callable[[nn.Module, str], bool] | None = None
) -> tuple[list[tuple[str, nn.Module, float]], list[SkippedLayer]]:
    """The penalised layers with their weights, and the skipped ones with reasons.

    The one targets grammar (:func:`torchslim.targets.select_layers`) over the
    prunable layers; a layer whose penalty ``weight`` is 0 is skipped too.

    Example:
        >>> model = ts.create_model("lenet300")
        >>> chosen, skipped = select_layers(model, RegularizeConfig(targets={"fc3": None, "re:.*": {}}))
        >>> [(name, weight) for name, _, weight in chosen]
        [('fc2', 1.0)]
        >>> [s.reason for s in skipped]
        ['first layer kept (keep_first_last; name it in targets to include it)', "excluded by targets['fc3'] = null"]
    """
    layers = prunable_layers(model)
    if not layers:
        raise TransformRefusedError("the model has no prunable layer (Linear or Conv weight)")
    picked, skipped_pairs = _select(layers, config.targets, filter_fn=filter_fn, keep_first_last=config.keep_first_last)
    chosen: list[tuple[str, nn.Module, float]] = []
    skipped = [SkippedLayer(n, r) for n, r in skipped_pairs]
    for name, module, match in picked:
        w = match.value.weight if match is not None and match.value is not None else 1.0
        if w == 0:
            skipped.append(SkippedLayer(name, "penalty weight 0"))
        else:
            chosen.append((name, module, w))
    refuse_if_empty(chosen, skipped, "regularise")
    return chosen, skipped


def penalty_value(weight: torch.Tensor, penalty: Penalty) -> torch.Tensor:
    """The penalty of one weight tensor (differentiable).

    Example:
        >>> penalty_value(torch.tensor([[3.0, 4.0]]), "group_lasso")
        tensor(5.)
    """
    if penalty == "l1":
        return weight.abs().sum()
    if penalty == "l2":
        return weight.square().sum()
    return weight.reshape(weight.shape[0], -1).norm(dim=1).sum()


class SparsityRegularizer(Callback):
    """Adds ``strength · Σ_layers weight_l · penalty(W_l)`` to the training loss.

    ``last_penalty`` holds the value added at the last step.

    Example:
        >>> data = ts.load_data("digits")
        >>> model = ts.create_model("lenet300", in_features=64)
        >>> reg = SparsityRegularizer(model, {"penalty": "group_lasso", "strength": 1e-3})
        >>> report = ts.finetune(model, data, {"epochs": 5}, callbacks=[reg])
        >>> [name for name, _, _ in reg.layers], reg.last_penalty > 0
        (['fc2'], True)
    """

    def __init__(
        self,
        model: nn.Module,
        config: RegularizeConfig | dict[str, Any],
        *,
        filter_fn: Callable[[nn.Module, str], bool] | None = None,
    ) -> None:
        self.config = RegularizeConfig.parse(config) if not isinstance(config, RegularizeConfig) else config
        self.layers, self.skipped = select_layers(model, self.config, filter_fn)
        self.last_penalty = float("nan")

    def penalty(self) -> torch.Tensor:
        """The current total penalty (``strength`` included)."""
        total = sum(w * penalty_value(m.weight, self.config.penalty) for _, m, w in self.layers)
        return self.config.strength * total  # type: ignore[return-value]

    def on_loss(self, state: TrainState, loss: torch.Tensor) -> torch.Tensor:
        pen = self.penalty()
        self.last_penalty = float(pen.detach())
        return loss + pen


def _unit_scores(weight: torch.Tensor, penalty: Penalty) -> torch.Tensor:
    """Per-element magnitude, or (group lasso) each unit's L2 norm broadcast over its weights."""
    w = weight.detach().float().cpu()
    if penalty != "group_lasso":
        return w.abs()
    norms = w.reshape(w.shape[0], -1).norm(dim=1)
    return norms.view(-1, *([1] * (w.dim() - 1))).expand_as(w).contiguous()


@torch.no_grad()
def prune_small_(
    model: nn.Module,
    layers: list[tuple[str, nn.Module]],
    penalty: Penalty,
    *,
    threshold: float | None = None,
    sparsity: float | None = None,
) -> list[LayerReport]:
    """Mask the weights (or units, for ``group_lasso``) a penalty drove towards zero.

    Exactly one of ``threshold`` (magnitude / unit norm at most this) and
    ``sparsity`` (fraction pruned, lowest first, ranked over all ``layers``
    together; whole units for ``group_lasso``) is given. Masks are computed for
    every layer before any is attached.

    Example:
        >>> layer = nn.Linear(4, 2)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.tensor([[0.5, 1e-4, -2.0, 0.0], [1e-5, 0.3, 0.0, -1e-3]]))
        >>> model = nn.Sequential(layer)
        >>> [r.nonzeros for r in prune_small_(model, [("0", layer)], "l1", threshold=1e-3)]
        [3]
        >>> (layer.weight != 0).int().tolist()
        [[1, 0, 1, 0], [0, 1, 0, 0]]
    """
    if (threshold is None) == (sparsity is None):
        raise TransformRefusedError("give exactly one of threshold and sparsity")
    scores = {name: _unit_scores(m.weight, penalty) for name, m in layers}
    live = {}
    for name, m in layers:
        old = get_mask(m, "weight")
        live[name] = (m.weight != 0).cpu() if old is None else old.cpu().bool()
    masks: dict[str, torch.Tensor] = {}
    if threshold is not None:
        for name, _ in layers:
            masks[name] = (scores[name] > threshold) & live[name]
    else:
        # rank units (rows for group lasso, elements otherwise) over all layers
        if penalty == "group_lasso":
            units = {n: s.reshape(s.shape[0], -1)[:, 0] for n, s in scores.items()}
        else:
            units = {n: s.flatten() for n, s in scores.items()}
        flat = torch.cat([units[n] for n, _ in layers])
        k = round(float(sparsity) * flat.numel())  # type: ignore[arg-type]
        keep = torch.ones(flat.numel(), dtype=torch.bool)
        if k:
            keep[torch.sort(flat, stable=True).indices[:k]] = False
        offset = 0
        for name, _ in layers:
            n = units[name].numel()
            kept = keep[offset : offset + n]
            offset += n
            if penalty == "group_lasso":
                kept = kept.view(-1, *([1] * (scores[name].dim() - 1))).expand_as(scores[name])
            masks[name] = kept.reshape(scores[name].shape) & live[name]
    out = []
    for name, m in layers:
        before = 1.0 - int(live[name].sum()) / live[name].numel()
        attach_mask(m, "weight", masks[name])
        w = m.weight
        nz = int((w != 0).sum())
        details: dict[str, Any] = {
            "criterion": "unit_l2_norm" if penalty == "group_lasso" else "magnitude",
            "granularity": "unit (masked)" if penalty == "group_lasso" else "element",
            "penalty": penalty,
            "sparsity_before": before,
            "sparsity_after": 1.0 - nz / w.numel(),
        }
        if penalty == "group_lasso":
            rows = (w.reshape(w.shape[0], -1) != 0).any(dim=1)
            details["units_pruned"] = int((~rows).sum())
        out.append(LayerReport(name, type(m).__name__, tuple(w.shape), w.numel(), nz, "pruned", details))
    return out


def sparse_train(
    model: nn.Module,
    data: DataBundle,
    config: SparseTrainConfig | dict[str, Any],
    *,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    loss_fn: LossFn | None = None,
    progress: bool = False,
    description: str = "sparse_train",
) -> Report:
    """Train ``model`` with a sparsity penalty, prune what it drove to zero, optionally fine-tune.

    Returns:
        A :class:`Report`: one layer per pruned layer (``details``: penalty,
        criterion, ``sparsity_before``/``sparsity_after``, units pruned), every
        skipped layer with its reason (every other module holding parameters too:
        :func:`~torchslim.prune.unstructured.mask_skip_reason`), ``meta["train"]``/``meta["finetune"]``
        training histories and the final penalty value.

    Example:
        >>> data = ts.load_data("digits")
        >>> model = ts.create_model("lenet300", in_features=64)
        >>> report = sparse_train(model, data, {"penalty": "l1", "strength": 5e-5,
        ...     "train": {"epochs": 5, "lr": 0.05}, "sparsity": 0.9, "finetune": {"epochs": 1, "lr": 0.01}})
        >>> [(l.name, l.details["sparsity_after"]) for l in report.layers]
        [('fc2', 0.9)]
    """
    cfg = SparseTrainConfig.parse(config)
    reg = SparsityRegularizer(model, RegularizeConfig.parse(cfg.model_dump(include=set(RegularizeConfig.model_fields))), filter_fn=filter_fn)
    train_report = finetune(model, data, cfg.train, callbacks=[reg], loss_fn=loss_fn, progress=progress, description=f"{description} (penalty)")
    layers = prune_small_(model, [(n, m) for n, m, _ in reg.layers], cfg.penalty, threshold=cfg.threshold, sparsity=cfg.sparsity)
    meta: dict[str, Any] = {
        "train": train_report.meta.get("history"),
        "final_penalty": reg.last_penalty,
        "config": cfg.model_dump(),
    }
    if cfg.finetune is not None:
        meta["finetune"] = finetune(model, data, cfg.finetune, loss_fn=loss_fn, progress=progress, description=f"{description} (fine-tune)").meta.get("history")
    with torch.no_grad():
        for layer in layers:
            w = model.get_submodule(layer.name).weight
            layer.nonzeros = int((w != 0).sum())
            layer.details["sparsity_after"] = 1.0 - layer.nonzeros / w.numel()
    report = Report(title=description, technique="sparse_train", layers=layers, skipped=list(reg.skipped), meta=meta)
    report.skipped += unlisted_layers(model, report, lambda n, m, p: mask_skip_reason(n, m, p, "sparse_train"))  # no silent skip
    return report
