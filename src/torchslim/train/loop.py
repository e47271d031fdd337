"""The fine-tuning loop every training technique hooks into.

Techniques contribute :class:`Callback` objects (what); the loop decides when
they run: ``on_train_start``, ``on_loss`` (may add a penalty to the loss),
``on_step`` (after each optimizer step), ``on_epoch_end`` and ``on_finalize``;
``on_abort`` instead of ``on_finalize`` when training diverges (a NaN or
infinite loss: the model's parameters and buffers are put back as they were
before training and :class:`~torchslim.errors.TrainingDivergedError` is raised).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from torchslim.config import Config
from torchslim.data import DataBundle
from torchslim.data.batches import move, split_batch
from torchslim.data.core import LoaderSplit
from torchslim.errors import TorchslimError, TrainingDivergedError
from torchslim.graph import constraints
from torchslim.measure import evaluate_accuracy, logits_of
from torchslim.measure.macs import call_model
from torchslim.report import Report

#: bounds of the numbers in a :class:`TrainConfig` (and of the same kinds of numbers in a recipe)
MAX_EPOCHS = 10_000
MAX_STEPS = 10**9
MAX_BATCH = 65_536
MAX_FLOAT = 1e12
MAX_SEED = 2**32 - 1  # what numpy's and torch's generators take, with room for derived seeds


class TrainConfig(Config):
    """How to (re)train a model.

    Attributes:
        epochs: passes over the training split.
        max_steps: stop after this many optimizer steps (overrides ``epochs`` when reached first).
        batch_size: samples per step (data served by a loader comes in that loader's batches).
        optimizer: ``sgd``, ``adam`` or ``adamw``.
        lr: peak learning rate.
        momentum: SGD momentum.
        nesterov: SGD Nesterov momentum.
        weight_decay: L2 (SGD/Adam) or decoupled (AdamW) weight decay.
        schedule: ``constant``, ``cosine``, ``linear`` (decay to zero) or ``step``
            (multiply by ``gamma`` every ``step_epochs`` epochs).
        warmup_steps: linear warm-up from zero.
        label_smoothing: cross-entropy label smoothing.
        grad_clip: clip the global gradient norm to this value.
        seed: seeds shuffling and any randomness in the model (dropout).

    Every number is bounded (a recipe that validates can run): epochs and
    ``step_epochs`` up to 10,000, steps up to 10^9, batches up to 65,536 samples,
    ``lr`` and ``grad_clip`` up to 10^12 (larger values overflow float32 inside
    torch; a large ``lr`` diverges cleanly instead), ``weight_decay`` and ``gamma``
    up to 1, seeds in 0..2^32 - 1.
    """

    epochs: int = Field(default=1, ge=0, le=MAX_EPOCHS)
    max_steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    batch_size: int = Field(default=128, ge=1, le=MAX_BATCH)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(default=0.01, gt=0, le=MAX_FLOAT)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(default=0.0, ge=0, le=1)
    schedule: Literal["constant", "cosine", "linear", "step"] = "constant"
    step_epochs: int = Field(default=1, ge=1, le=MAX_EPOCHS)
    gamma: float = Field(default=0.1, gt=0, le=1)
    warmup_steps: int = Field(default=0, ge=0, le=MAX_STEPS)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    grad_clip: float | None = Field(default=None, gt=0, le=MAX_FLOAT)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)


@dataclass
class TrainState:
    """What callbacks see: the model, the optimizer, where training is, the last loss."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    loss: float = float("nan")
    history: list[dict[str, float]] = field(default_factory=list)
    stop: bool = False


class Callback:
    """Hooks a technique adds to training. Override what you need."""

    def on_train_start(self, state: TrainState) -> None: ...

    def on_loss(self, state: TrainState, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def on_before_step(self, state: TrainState) -> None:
        """After ``backward``, before gradient clipping and ``optimizer.step()``: may edit gradients."""

    def on_step(self, state: TrainState) -> None: ...

    def on_epoch_end(self, state: TrainState) -> None: ...

    def on_finalize(self, state: TrainState) -> None: ...

    def on_abort(self, state: TrainState) -> None:
        """Training diverged and stops without ``on_finalize``: undo what ``on_train_start`` set up."""


class KeepConstraints(Callback):
    """Keeps every registered constraint the model carries through training (added automatically).

    Pruning masks are re-applied after each optimizer step; shared weights get
    their cluster's summed gradient before the step and are snapped back onto
    their codebook after it (see :mod:`torchslim.graph.constraints`). The
    constraints are those the model carries when training starts.
    """

    def __init__(self) -> None:
        self.active: list[constraints.Constraint] = []

    def on_train_start(self, state: TrainState) -> None:
        self.active = constraints.active(state.model)

    def on_before_step(self, state: TrainState) -> None:
        for c in self.active:
            if c.before_step is not None:
                c.before_step(state.model)

    def on_step(self, state: TrainState) -> None:
        for c in self.active:
            if c.after_step is not None:
                c.after_step(state.model)


#: the earlier name of :class:`KeepConstraints` (it kept pruning masks only)
KeepMasks = KeepConstraints


def build_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    """Multiplier of ``cfg.lr`` at optimizer step ``step`` (0-based) of ``total``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = step - cfg.warmup_steps
    span = max(1, total - cfg.warmup_steps)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(t, span) / span))
    if cfg.schedule == "linear":
        return max(0.0, 1 - t / span)
    if cfg.schedule == "step":
        return cfg.gamma ** ((step // max(1, steps_per_epoch)) // cfg.step_epochs)
    return 1.0


def _progress(enabled: bool, console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False),  # a stage's name is plain text
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not enabled,
    )


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _abort(
    model: nn.Module,
    before: dict[str, torch.Tensor],
    callbacks: Sequence[Callback],
    state: TrainState,
    was_training: bool,
    description: str,
    loss_value: float,
    lr: float,
) -> None:
    """Put the model back as it was before training and raise :class:`TrainingDivergedError`."""
    for cb in callbacks:
        cb.on_abort(state)
    result = model.load_state_dict(before, strict=False)
    model.train(was_training)
    added = f"; kept as they are now (added during training): {', '.join(result.missing_keys)}" if result.missing_keys else ""
    raise TrainingDivergedError(
        f"{description}: the training loss became {loss_value} at epoch {state.epoch + 1}, step {state.step + 1} "
        f"(lr {lr:.3g}); the model's parameters and buffers are restored to their values before training{added}. "
        "Lower 'lr' or set 'grad_clip'.",
        epoch=state.epoch + 1,
        step=state.step + 1,
        lr=lr,
    )


@dataclass
class _Run:
    """One training run's fixed parts, shared by the epoch and step functions."""

    model: nn.Module
    data: DataBundle
    cfg: TrainConfig
    loader: Any
    state: TrainState
    callbacks: list[Callback]
    criterion: LossFn
    console: Console
    description: str
    before: dict[str, torch.Tensor]
    was_training: bool = True
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def _step(run: _Run, x: Any, y: torch.Tensor) -> tuple[float, float]:
    """One optimizer step on ``(x, y)``; returns ``(loss, lr)``. Aborts (restoring the model) on a non-finite loss.

    ``x`` is a tensor, a tuple of tensors (positional arguments) or a dict of tensors (keyword arguments).
    """
    state, cfg = run.state, run.cfg
    x, y = move(x, run.device), y.to(run.device, non_blocking=True)
    lr = cfg.lr * lr_factor(cfg, state.step, state.total_steps, len(run.loader))
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    loss = run.criterion(call_model(run.model, x), y)
    for cb in run.callbacks:
        loss = cb.on_loss(state, loss)
    loss_value = float(loss.detach())
    if not math.isfinite(loss_value):
        _abort(run.model, run.before, run.callbacks, state, run.was_training, run.description, loss_value, lr)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for cb in run.callbacks:
        cb.on_before_step(state)
    if cfg.grad_clip is not None:
        nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    state.optimizer.step()
    state.step += 1
    state.loss = loss_value
    for cb in run.callbacks:
        cb.on_step(state)
    return loss_value, lr


def _epoch(run: _Run, epoch: int, advance: Callable[[float], None]) -> None:
    """One pass over the training split (until the step budget or a callback stops it), then validation."""
    state = run.state
    state.epoch = epoch
    run.model.train()
    run.loader.set_epoch(epoch)
    t_epoch, loss_sum, n_batches, lr = time.perf_counter(), 0.0, 0, float("nan")
    for i, batch in enumerate(run.loader):
        if state.step >= state.total_steps or state.stop:
            break
        x, y = split_batch(batch, i)
        if y is None:
            raise TorchslimError(
                f"{run.description}: training batch {i} has no labels; give (inputs, labels) pairs or dicts with a 'labels' key"
            )
        loss_value, lr = _step(run, x, y)
        loss_sum, n_batches = loss_sum + loss_value, n_batches + 1
        advance(loss_value)
    val_acc = evaluate_accuracy(run.model, run.data.loader("val", 512)) if len(run.data.val) else float("nan")
    row = {
        "epoch": epoch + 1,
        "loss": loss_sum / max(1, n_batches),
        "val_accuracy": val_acc,
        "lr": lr if n_batches else float("nan"),
        "seconds": time.perf_counter() - t_epoch,
    }
    state.history.append(row)
    run.console.log(
        f"{run.description} epoch {epoch + 1}/{run.cfg.epochs}: loss {row['loss']:.4f}, "
        + ("no validation split, " if math.isnan(val_acc) else f"val acc {100 * val_acc:.2f}%, ")
        + f"{row['seconds']:.1f}s",
        markup=False,  # the description is a stage's name: plain text
    )
    for cb in run.callbacks:
        cb.on_epoch_end(state)


def _cross_entropy(label_smoothing: float) -> LossFn:
    """Cross-entropy on the logits of any model output (a tensor, a Hugging Face output, a tuple)."""
    ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def loss(output: Any, labels: torch.Tensor) -> torch.Tensor:
        return ce(output if isinstance(output, torch.Tensor) else logits_of(output), labels)

    return loss


def as_bundle(data: DataBundle | Iterable[Any]) -> DataBundle:
    """``data`` as a :class:`DataBundle`: a bundle as it is; any iterable of batches (a torch ``DataLoader``)
    as the training split of one, with no validation split.

    Example:
        >>> len(as_bundle([(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))]).train)
        4
    """
    if isinstance(data, DataBundle):
        return data
    if not isinstance(data, Iterable) or isinstance(data, (str, bytes, torch.Tensor)):
        raise TorchslimError(f"data must be a DataBundle or an iterable of batches (a DataLoader), got {type(data).__name__}")
    return DataBundle("batches", LoaderSplit(data), LoaderSplit([]), LoaderSplit([]), 0, ())


def finetune(
    model: nn.Module,
    data: DataBundle | Iterable[Any],
    config: TrainConfig | dict[str, Any] | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    loss_fn: LossFn | None = None,
    progress: bool = True,
    description: str = "finetune",
) -> Report:
    """Train ``model`` on ``data``'s training split; masks stay applied throughout.

    Args:
        model: trained in place.
        data: a :class:`DataBundle` (train split used; val split evaluated each epoch), or any
            iterable of batches (a torch ``DataLoader``; tensors with labels, ``(x, y)`` pairs or
            dicts of tensors with ``labels``), trained on as it is, without validation.
        config: a :class:`TrainConfig` or a mapping validated into one.
        callbacks: technique hooks, called in order.
        loss_fn: ``(logits, labels) -> loss``; cross-entropy by default.
        progress: show a progress bar on a terminal.

    Returns:
        A :class:`Report` whose ``meta["history"]`` has one row per epoch
        (``epoch``, ``loss``, ``val_accuracy``, ``lr``, ``seconds``).

    Raises:
        TrainingDivergedError: the loss became NaN or infinite; the model's
            parameters and buffers were restored to their values before training
            (a copy of them is kept while training runs).

    Example:
        >>> model = ts.create_model("lenet300", in_features=64)
        >>> report = ts.finetune(model, ts.load_data("digits"), {"epochs": 2, "lr": 0.05})
        >>> [sorted(row) for row in report.meta["history"]][0]
        ['epoch', 'loss', 'lr', 'seconds', 'val_accuracy']
        >>> [row["epoch"] for row in report.meta["history"]]
        [1, 2]
    """
    cfg = TrainConfig.parse(config)
    data = as_bundle(data)
    console = Console(stderr=True)
    torch.manual_seed(cfg.seed)
    loader = data.loader("train", cfg.batch_size, shuffle=True, seed=cfg.seed)
    total = len(loader) * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    optimizer = build_optimizer(model.parameters(), cfg)
    all_callbacks = list(callbacks)
    if constraints.active(model) and not any(isinstance(c, KeepConstraints) for c in all_callbacks):
        all_callbacks.append(KeepConstraints())
    run = _Run(
        model, data, cfg, loader, TrainState(model, optimizer, cfg, total_steps=total), all_callbacks,
        loss_fn or _cross_entropy(cfg.label_smoothing), console, description,
        before={k: v.detach().clone() for k, v in model.state_dict().items()},  # restored if the loss diverges
    )
    for cb in all_callbacks:
        cb.on_train_start(run.state)
    run.was_training = model.training
    run.device = next((p.device for p in model.parameters()), torch.device("cpu"))  # batches follow the model
    t_start = time.perf_counter()
    with _progress(progress and console.is_terminal, console) as bar:
        task = bar.add_task(description, total=total, loss=float("nan"))
        for epoch in range(cfg.epochs):
            if run.state.step >= total or run.state.stop:
                break
            _epoch(run, epoch, lambda loss: bar.update(task, advance=1, loss=loss))
    for cb in all_callbacks:
        cb.on_finalize(run.state)
    model.train(run.was_training)
    state = run.state
    return Report(
        title=description,
        technique="finetune",
        layers=[],
        skipped=[],
        meta={"history": state.history, "steps": state.step, "seconds": time.perf_counter() - t_start, "config": cfg.model_dump()},
    )
