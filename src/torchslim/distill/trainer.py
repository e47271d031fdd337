"""Distillation as callbacks of the training loop, and the ``distill`` verb.

The :class:`Distiller` is a :class:`~torchslim.train.Callback` plus the loop's
``loss_fn``: a forward pre-hook on the student runs the frozen teacher (eval
mode, ``no_grad``) on the same batch, forward hooks capture hinted features by
layer name, and the loss mixes soft targets (or an embedding loss), the hard
label loss and the hints. Adapters are added to the optimizer as an extra
parameter group in ``on_train_start``, trained, and dropped afterwards.

Example:
    >>> data = ts.load_data("digits")
    >>> teacher = ts.create_model("mlp", in_features=64, hidden=[128, 128])
    >>> student = ts.create_model("mlp", in_features=64, hidden=[32, 32])
    >>> report = ts.distill_from(student, teacher, data, {"epochs": 1, "lr": 0.05, "temperature": 4,
    ...                     "hints": [{"student": "act2", "teacher": "act2"}]})
    >>> report.layers[0].details["adapter"]        # 32 -> 128 features: a linear adapter, trained then dropped
    'Linear'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from torchslim.data import DataBundle
from torchslim.distill.config import DistillConfig
from torchslim.distill.losses import (
    attention_transfer_loss,
    embedding_loss,
    feature_loss,
    hinton_loss,
    make_adapter,
    pooled,
)
from torchslim.errors import ConfigError, ConfigIssue, TorchslimError
from torchslim.graph import get_module
from torchslim.measure import evaluate_accuracy, logits_of
from torchslim.measure.macs import call_model
from torchslim.report import LayerReport, Report
from torchslim.train.loop import Callback, TrainState, finetune


def _tensor_of(output: Any) -> torch.Tensor:
    """The feature tensor of a module output (first tensor of a tuple, ``last_hidden_state`` of an HF output)."""
    if isinstance(output, torch.Tensor):
        return output
    for attr in ("last_hidden_state", "logits"):
        if isinstance(getattr(output, attr, None), torch.Tensor):
            return getattr(output, attr)
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TorchslimError(f"cannot use a module output of type {type(output).__name__} as a hint feature")


def _device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _probe_batch(data: DataBundle, n: int = 2) -> torch.Tensor:
    split = data.train if len(data.train) else data.test
    if not len(split):
        raise TorchslimError("distillation needs a non-empty training split")
    return split.x[:n].clone()


class Distiller(Callback):
    """Runs the teacher alongside the student and computes the distillation loss.

    Build it with :meth:`prepare`, which checks teacher and student against each
    other on a probe batch (and raises before any training); pass it to
    :func:`~torchslim.train.finetune` as a callback and its :meth:`loss` as
    ``loss_fn``; call :meth:`close` afterwards (``distill`` does all of this).

    Example:
        >>> data = ts.load_data("digits")
        >>> teacher = ts.create_model("mlp", in_features=64, hidden=[128, 128])
        >>> student = ts.create_model("mlp", in_features=64, hidden=[32, 32])
        >>> d = Distiller.prepare(student, teacher, data, DistillConfig(epochs=1))
        >>> try:
        ...     report = finetune(student, data, d.config.train_config(), callbacks=[d], loss_fn=d.loss)
        ... finally:
        ...     d.close()
        >>> sorted(d.last_terms)                        # the terms of the last batch's loss
        ['kd']
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, config: DistillConfig, adapters: nn.ModuleDict) -> None:
        self.student, self.teacher, self.config, self.adapters = student, teacher, config, adapters
        self._handles: list[RemovableHandle] = []
        self._teacher_out: Any = None
        self._s_feats: dict[int, torch.Tensor] = {}
        self._t_feats: dict[int, torch.Tensor] = {}
        self._teacher_was_training = teacher.training
        self.last_terms: dict[str, float] = {}

    # ----------------------------------------------------------------- set-up
    @classmethod
    def prepare(cls, student: nn.Module, teacher: nn.Module, data: DataBundle, config: DistillConfig) -> Distiller:
        """Validate the pair on a probe batch and build the adapters; raises before training on any mismatch."""
        if student is teacher:
            raise TorchslimError("the student and the teacher are the same module; distil from a copy (copy.deepcopy)")
        shared = {id(p) for p in teacher.parameters()} & {id(p) for p in student.parameters()}
        if shared:
            raise TorchslimError(f"the student shares {len(shared)} parameter tensor(s) with the teacher; distil from a copy")
        issues = []
        s_names, t_names = dict(student.named_modules()), dict(teacher.named_modules())
        for i, h in enumerate(config.hints):
            if h.student not in s_names:
                issues.append(ConfigIssue(f"hints.{i}.student", f"no such layer in the student; layers: {_some(s_names)}", h.student))
            if h.teacher not in t_names:
                issues.append(ConfigIssue(f"hints.{i}.teacher", f"no such layer in the teacher; layers: {_some(t_names)}", h.teacher))
        if issues:
            raise ConfigError(issues, "distill config")
        s_dev, t_dev = _device_of(student), _device_of(teacher)
        if s_dev != t_dev:
            raise TorchslimError(
                f"the student is on {s_dev} and the teacher on {t_dev}; the teacher reads the student's batches, "
                f"so move both to one device (teacher.to({str(s_dev)!r}))"
            )
        self = cls(student, teacher, config, nn.ModuleDict())
        x = _probe_batch(data).to(s_dev)
        s_modes = {m: m.training for m in student.modules()}
        t_modes = {m: m.training for m in teacher.modules()}
        try:
            student.eval()
            teacher.eval()
            self._attach(probe=True)
            with torch.no_grad():
                s_out = call_model(student, x)
            s_feats, t_feats, t_out = dict(self._s_feats), dict(self._t_feats), self._teacher_out
        finally:
            self._detach()
            for m, mode in s_modes.items():
                m.training = mode
            for m, mode in t_modes.items():
                m.training = mode
        self._check_outputs(s_out, t_out, data)
        device = s_dev
        for i, h in enumerate(config.hints):
            s, t = s_feats.get(i), t_feats.get(i)
            if s is None or t is None:
                missing = h.student if s is None else h.teacher
                raise TorchslimError(f"hint {i}: layer {missing!r} is never called in the forward pass, so it has no features")
            if h.loss == "attention":
                if s.dim() != 4 or t.dim() != 4:
                    raise TorchslimError(
                        f"hint {i} ({h.student} -> {h.teacher}): attention transfer needs conv maps (N, C, H, W), "
                        f"got student {tuple(s.shape)}, teacher {tuple(t.shape)}"
                    )
                continue
            try:
                adapter = make_adapter(tuple(s.shape), tuple(t.shape), h.adapter)
            except TorchslimError as exc:
                raise TorchslimError(f"hint {i} ({h.student} -> {h.teacher}): {exc}") from None
            if adapter is not None:
                self.adapters[str(i)] = adapter.to(device)
        self._teacher_out = None
        self._s_feats.clear()
        self._t_feats.clear()
        return self

    def _check_outputs(self, s_out: Any, t_out: Any, data: DataBundle) -> None:
        kind, alpha = self.config.loss, self.config.alpha
        if kind == "kl":
            s, t = logits_of(s_out), logits_of(t_out)
            if s.dim() != 2 or t.dim() != 2:
                raise TorchslimError(
                    f"loss 'kl' needs logits (N, classes) from both models, got student {tuple(s.shape)}, teacher {tuple(t.shape)}"
                )
            if s.shape[1] != t.shape[1]:
                raise TorchslimError(
                    f"the teacher has {t.shape[1]} classes but the student has {s.shape[1]}; "
                    "soft targets need the same classes (use an embedding loss or hints instead)"
                )
        elif kind in ("cosine", "mse"):
            s, t = pooled(s_out), pooled(t_out)
            if s.shape[1] != t.shape[1]:
                raise TorchslimError(
                    f"student embeddings have {s.shape[1]} dimensions but the teacher's have {t.shape[1]}; "
                    "an embedding loss needs equal widths"
                )
        if kind == "none" or alpha < 1:
            s = logits_of(s_out)
            if s.dim() != 2 or s.shape[1] != data.num_classes:
                raise TorchslimError(
                    f"the hard-label loss needs student logits (N, {data.num_classes}) for data set {data.name!r}, "
                    f"got {tuple(s.shape)} (set alpha: 1 to train on the teacher alone)"
                )

    # ------------------------------------------------------------------ hooks
    def _attach(self, probe: bool = False) -> None:
        def run_teacher(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if not (module.training or probe):
                return
            with torch.no_grad():
                self._teacher_out = self.teacher(*args, **kwargs)

        self._handles.append(self.student.register_forward_pre_hook(run_teacher, with_kwargs=True))
        for i, h in enumerate(self.config.hints):
            self._handles.append(get_module(self.student, h.student).register_forward_hook(self._capture(self._s_feats, i, probe)))
            self._handles.append(get_module(self.teacher, h.teacher).register_forward_hook(self._capture(self._t_feats, i, True)))

    def _capture(self, store: dict[int, torch.Tensor], i: int, always: bool) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if always or self.student.training:
                store[i] = _tensor_of(output)

        return hook

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def close(self) -> None:
        """Remove every hook and restore the teacher's training mode (idempotent)."""
        self._detach()
        self._teacher_out = None
        self._s_feats.clear()
        self._t_feats.clear()
        self.teacher.train(self._teacher_was_training)

    # -------------------------------------------------------------- callbacks
    def on_train_start(self, state: TrainState) -> None:
        self._teacher_was_training = self.teacher.training
        self.teacher.eval()
        params = [p for p in self.adapters.parameters() if p.requires_grad]
        if params:
            state.optimizer.add_param_group({"params": params})
        self._attach()

    def on_finalize(self, state: TrainState) -> None:
        self.close()

    def on_abort(self, state: TrainState) -> None:
        self.close()

    # ------------------------------------------------------------------- loss
    def loss(self, output: Any, labels: torch.Tensor) -> torch.Tensor:
        """The distillation loss of the batch just run (``loss_fn`` of the training loop)."""
        cfg = self.config
        if self._teacher_out is None:
            raise TorchslimError("the distillation loss was called before the student ran on a batch in training mode")
        terms: dict[str, torch.Tensor] = {}
        if cfg.loss == "kl":
            terms["kd"] = hinton_loss(logits_of(output), logits_of(self._teacher_out), labels, cfg.temperature, cfg.alpha)
        else:
            if cfg.loss in ("cosine", "mse") and cfg.alpha > 0:
                terms["embedding"] = cfg.alpha * embedding_loss(pooled(output), pooled(self._teacher_out).detach(), cfg.loss)
            if cfg.loss == "none" or cfg.alpha < 1:
                weight = 1.0 if cfg.loss == "none" else 1 - cfg.alpha
                terms["ce"] = weight * F.cross_entropy(logits_of(output), labels)
        for i, h in enumerate(cfg.hints):
            s, t = self._s_feats[i], self._t_feats[i].detach()
            if h.loss == "attention":
                value = attention_transfer_loss(s, t)
            else:
                if str(i) in self.adapters:
                    s = self.adapters[str(i)](s)
                value = feature_loss(s, t, h.loss)
            terms[f"hint{i}"] = h.weight * value
        self._teacher_out = None
        self._s_feats.clear()
        self._t_feats.clear()
        total = sum(terms.values(), start=torch.zeros((), device=labels.device))
        self.last_terms = {k: float(v.detach()) for k, v in terms.items()}
        return total


def _some(names: dict[str, Any], limit: int = 12) -> str:
    shown = [n for n in names if n][:limit]
    more = len([n for n in names if n]) - len(shown)
    return ", ".join(shown) + (f", ... ({more} more)" if more > 0 else "")


def distill_from(
    student: nn.Module,
    teacher: nn.Module,
    data: DataBundle,
    config: DistillConfig | dict[str, Any] | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    description: str = "distill",
) -> Report:
    """Train ``student`` in place to match the frozen ``teacher`` on ``data``'s training split.

    The teacher runs in eval mode under ``no_grad`` and is left bit-identical.
    Teacher and student are checked against each other first (classes, hint
    layer names and shapes) so a mismatch raises before any training. The
    student may carry pruning masks (they stay applied) or fake-quant modules.

    Args:
        student: trained in place.
        teacher: the frozen teacher (not modified).
        data: a :class:`DataBundle`; its ``train_transform`` (e.g. jitter) applies.
        config: a :class:`DistillConfig` or a mapping validated into one.
        callbacks: more training callbacks (pruning schedules, QAT...).
        progress: show a progress bar on a terminal.

    Returns:
        A :class:`Report`: one layer entry per hinted student layer, and in
        ``meta`` the training history, the settings and the teacher's and
        student's validation accuracy.

    Raises:
        ConfigError: a bad config value or a hint layer name that does not exist.
        TorchslimError: teacher and student do not fit (classes, widths, shapes).

    Example:
        Hinton et al.'s MNIST setting uses ``hidden=[1200, 1200]`` (teacher, trained
        first) and ``[800, 800]`` on ``ts.load_data("mnist")``; the same call on
        the small ``digits`` set:

        >>> data = ts.load_data("digits")
        >>> teacher = ts.create_model("mlp", in_features=64, hidden=[256, 256], dropout=0.5)
        >>> _ = ts.finetune(teacher, data, {"epochs": 3, "lr": 0.05})
        >>> student = ts.create_model("mlp", in_features=64, hidden=[32, 32])
        >>> report = ts.distill_from(student, teacher, data,
        ...                     {"epochs": 3, "lr": 0.05, "temperature": 20, "alpha": 0.9})
        >>> report.technique, report.meta["temperature"], len(report.meta["history"])
        ('distill', 20.0, 3)
    """
    cfg = DistillConfig.parse(config)
    distiller = Distiller.prepare(student, teacher, data, cfg)
    try:
        train_report = finetune(
            student,
            data,
            cfg.train_config(),
            callbacks=[distiller, *callbacks],
            loss_fn=distiller.loss,
            progress=progress,
            description=description,
        )
    finally:
        distiller.close()
    layers = []
    s_modules = dict(student.named_modules())
    for i, h in enumerate(cfg.hints):
        module = s_modules[h.student]
        weight = getattr(module, "weight", None)
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else ()
        params = weight.numel() if isinstance(weight, torch.Tensor) else 0
        nonzeros = int(torch.count_nonzero(weight.detach())) if isinstance(weight, torch.Tensor) else 0
        adapter = distiller.adapters[str(i)] if str(i) in distiller.adapters else None
        layers.append(
            LayerReport(
                h.student,
                type(module).__name__,
                shape,
                params,
                nonzeros,
                "distilled",
                {"teacher_layer": h.teacher, "loss": h.loss, "weight": h.weight, "adapter": type(adapter).__name__ if adapter is not None else None},
            )
        )
    meta = dict(train_report.meta)
    meta.update(
        {
            "loss": cfg.loss,
            "temperature": cfg.temperature,
            "alpha": cfg.alpha,
            "hints": [h.model_dump(exclude={"version"}) for h in cfg.hints],
            "config": cfg.model_dump(),
        }
    )
    if len(data.val) and cfg.loss in ("kl", "none"):
        meta["teacher_val_accuracy"] = evaluate_accuracy(teacher, data.loader("val", 512))
        meta["student_val_accuracy"] = evaluate_accuracy(student, data.loader("val", 512))
    return Report(title=description, technique="distill", layers=layers, skipped=[], meta=meta)
