"""Distillation as callbacks of the training loop, and the ``distill`` verb.

The :class:`Distiller` is a :class:`~torchslim.train.Callback` plus the loop's
``loss_fn``: a :class:`~torchslim.distill.tap.TeacherTap` on the student runs the
frozen teacher (eval mode, ``no_grad``) on the same batch, forward hooks capture
hinted features by layer name, and the loss mixes soft targets (or an embedding loss), the hard
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
from torchslim.distill.tap import TeacherTap
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


def _check_pair(student: nn.Module, teacher: nn.Module, config: DistillConfig) -> None:
    """Refuse a student that is (or shares tensors with) the teacher, unknown hint layers, or two devices."""
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


class Distiller(Callback):
    """Runs the teacher alongside the student and computes the distillation loss.

    Build it with :meth:`prepare`, which checks teacher and student against each
    other on a probe batch (and raises before any training); pass
    :meth:`callbacks` to :func:`~torchslim.train.finetune` and :meth:`loss` as
    ``loss_fn``; call :meth:`close` afterwards (``distill_from`` does all of this).
    Like a technique's ``callbacks(cfg)``, the distiller says what to do during
    training and the loop decides when: ``on_train_start`` puts the teacher in
    eval mode, attaches a :class:`~torchslim.distill.tap.TeacherTap` and the hint
    hooks and adds the adapters to the optimizer; ``on_finalize``/``on_abort``
    remove them and restore the teacher's mode.

    Example:
        >>> data = ts.load_data("digits")
        >>> teacher = ts.create_model("mlp", in_features=64, hidden=[128, 128])
        >>> student = ts.create_model("mlp", in_features=64, hidden=[32, 32])
        >>> d = Distiller.prepare(student, teacher, data, DistillConfig(epochs=1))
        >>> try:
        ...     report = finetune(student, data, d.config.train_config(), callbacks=d.callbacks(), loss_fn=d.loss)
        ... finally:
        ...     d.close()
        >>> sorted(d.last_terms)                        # the terms of the last batch's loss
        ['kd']
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, config: DistillConfig, adapters: nn.ModuleDict) -> None:
        self.student, self.teacher, self.config, self.adapters = student, teacher, config, adapters
        self.tap = TeacherTap(teacher)
        self._handles: list[RemovableHandle] = []
        self._s_feats: dict[int, torch.Tensor] = {}
        self._t_feats: dict[int, torch.Tensor] = {}
        self.last_terms: dict[str, float] = {}

    # ----------------------------------------------------------------- set-up
    @classmethod
    def prepare(cls, student: nn.Module, teacher: nn.Module, data: DataBundle, config: DistillConfig) -> Distiller:
        """Validate the pair on a probe batch and build the adapters; raises before training on any mismatch."""
        _check_pair(student, teacher, config)
        self = cls(student, teacher, config, nn.ModuleDict())
        s_out, t_out, s_feats, t_feats = self._probe(_probe_batch(data).to(_device_of(student)))
        self._check_outputs(s_out, t_out, data)
        self._build_adapters(s_feats, t_feats, _device_of(student))
        return self

    def _probe(self, x: torch.Tensor) -> tuple[Any, Any, dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """Both models' outputs and hinted features on ``x``, in eval mode (every module's mode restored)."""
        s_modes = {m: m.training for m in self.student.modules()}
        try:
            self.student.eval()
            self._attach(probe=True)  # the tap puts the teacher in eval mode and restores it on detach
            with torch.no_grad():
                s_out = call_model(self.student, x)
            found = (s_out, self.tap.output, dict(self._s_feats), dict(self._t_feats))
        finally:
            self._detach()
            for m, mode in s_modes.items():
                m.training = mode
        self.tap.output = None
        self._s_feats.clear()
        self._t_feats.clear()
        return found

    def _build_adapters(self, s_feats: dict[int, torch.Tensor], t_feats: dict[int, torch.Tensor], device: torch.device) -> None:
        """One adapter per hint whose student features do not have the teacher's shape (checked on the probe)."""
        for i, h in enumerate(self.config.hints):
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
        """The teacher tap (the teacher runs on training batches only, or on every call for the probe) and the hint hooks."""
        self.tap.training_only = not probe
        self.tap.attach(self.student)
        for i, h in enumerate(self.config.hints):
            self._handles.append(get_module(self.student, h.student).register_forward_hook(self._capture(self._s_feats, i, probe)))
            self._handles.append(get_module(self.teacher, h.teacher).register_forward_hook(self._capture(self._t_feats, i, True)))

    def _capture(self, store: dict[int, torch.Tensor], i: int, always: bool) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if always or self.student.training:
                store[i] = _tensor_of(output)

        return hook

    def _detach(self) -> None:
        """Remove the tap (restoring the teacher's modes) and the hint hooks (idempotent)."""
        self.tap.detach()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def close(self) -> None:
        """Remove every hook and restore the teacher's training mode (idempotent)."""
        self._detach()
        self.tap.output = None
        self._s_feats.clear()
        self._t_feats.clear()

    # -------------------------------------------------------------- callbacks
    def callbacks(self) -> list[Callback]:
        """What the training loop runs for distillation (with :meth:`loss` as its ``loss_fn``): this distiller."""
        return [self]

    def on_train_start(self, state: TrainState) -> None:
        """Add the adapters to the optimizer; attach the teacher tap (teacher in eval mode) and the hint hooks."""
        params = [p for p in self.adapters.parameters() if p.requires_grad]
        if params:
            state.optimizer.add_param_group({"params": params})
        self._attach()

    def on_finalize(self, state: TrainState) -> None:
        """Remove the hooks and restore the teacher's mode."""
        self.close()

    def on_abort(self, state: TrainState) -> None:
        """Remove the hooks and restore the teacher's mode."""
        self.close()

    # ------------------------------------------------------------------- loss
    def loss(self, output: Any, labels: torch.Tensor) -> torch.Tensor:
        """The distillation loss of the batch just run (``loss_fn`` of the training loop)."""
        cfg = self.config
        teacher_out = self.tap.output
        if teacher_out is None:
            raise TorchslimError("the distillation loss was called before the student ran on a batch in training mode")
        terms: dict[str, torch.Tensor] = {}
        if cfg.loss == "kl":
            terms["kd"] = hinton_loss(logits_of(output), logits_of(teacher_out), labels, cfg.temperature, cfg.alpha)
        else:
            if cfg.loss in ("cosine", "mse") and cfg.alpha > 0:
                terms["embedding"] = cfg.alpha * embedding_loss(pooled(output), pooled(teacher_out).detach(), cfg.loss)
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
        self.tap.output = None
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
            callbacks=[*distiller.callbacks(), *callbacks],
            loss_fn=distiller.loss,
            progress=progress,
            description=description,
        )
    finally:
        distiller.close()
    layers = _hint_reports(student, distiller)
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


def _hint_reports(student: nn.Module, distiller: Distiller) -> list[LayerReport]:
    """One ``distilled`` entry per hinted student layer: its weight, the teacher layer, the loss and the adapter."""
    layers = []
    s_modules = dict(student.named_modules())
    for i, h in enumerate(distiller.config.hints):
        module = s_modules[h.student]
        adapter = distiller.adapters[str(i)] if str(i) in distiller.adapters else None
        details = {"teacher_layer": h.teacher, "loss": h.loss, "weight": h.weight, "adapter": type(adapter).__name__ if adapter is not None else None}
        if isinstance(getattr(module, "weight", None), torch.Tensor):
            layers.append(LayerReport.of(h.student, module, "distilled", details))
        else:
            layers.append(LayerReport(h.student, type(module).__name__, (), 0, 0, "distilled", details))
    return layers
