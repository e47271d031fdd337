"""The teacher hook: run a frozen teacher on the batch the student is about to see.

:class:`TeacherTap` is a forward pre-hook on the student. Each time the student
runs in training mode, the tap runs the teacher (put in eval mode when attached,
under ``no_grad``) on the same positional and keyword arguments and keeps the
teacher's output in :attr:`TeacherTap.output` for the loss. Every
teacher-student technique uses it: :class:`~torchslim.distill.Distiller` and
quantization-aware training with a teacher.

Example:
    >>> teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
    >>> tap = TeacherTap(teacher)
    >>> handle = tap.attach(student)
    >>> x = torch.randn(2, 4)
    >>> _ = student(x)                                  # training mode: the teacher runs too
    >>> torch.equal(tap.output, teacher(x)), tap.output.requires_grad, teacher.training
    (True, False, False)
    >>> tap.output = None
    >>> _ = student.eval()(x)                           # eval mode: the teacher is not run
    >>> tap.output is None
    True
    >>> tap.detach()
    >>> teacher.training, len(student._forward_pre_hooks)   # the teacher's mode is restored
    (True, 0)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from torchslim.errors import TorchslimError
from torchslim.measure import logits_of


class TeacherTap:
    """Forward pre-hook running the frozen ``teacher`` on the student's inputs.

    Attributes:
        teacher: the teacher (run in eval mode under ``no_grad``; its parameters
            and buffers are never changed).
        training_only: run the teacher only when the student is in training mode
            (``False``: on every student call, e.g. a probe batch in eval mode).
        output: the teacher's output on the last batch it ran on (``None`` before
            the first, or after the user clears it).
    """

    def __init__(self, teacher: nn.Module, *, training_only: bool = True) -> None:
        self.teacher = teacher
        self.training_only = training_only
        self.output: Any = None
        self._handle: RemovableHandle | None = None
        self._modes: dict[nn.Module, bool] = {}

    @property
    def logits(self) -> torch.Tensor | None:
        """The logits of :attr:`output` (:func:`~torchslim.measure.logits_of`), or ``None`` when there is none."""
        return None if self.output is None else logits_of(self.output)

    @property
    def attached(self) -> bool:
        """Whether the tap is on a student now."""
        return self._handle is not None

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> None:
        """The pre-hook: run the teacher on ``args``/``kwargs`` when ``module`` trains (or always)."""
        if self.training_only and not module.training:
            return
        with torch.no_grad():
            self.output = self.teacher(*args, **(kwargs or {}))

    def attach(self, student: nn.Module) -> RemovableHandle:
        """Hook onto ``student`` and put the teacher in eval mode (each module's mode is kept for :meth:`detach`).

        Raises:
            TorchslimError: the tap is already attached (detach it first).
        """
        if self._handle is not None:
            raise TorchslimError("this TeacherTap is already attached to a student; call detach() first")
        self._modes = {m: m.training for m in self.teacher.modules()}
        self.teacher.eval()
        self._handle = student.register_forward_pre_hook(self, with_kwargs=True)
        return self._handle

    def detach(self) -> None:
        """Remove the hook and restore every teacher module's mode (idempotent); :attr:`output` is kept."""
        if self._handle is None:
            return
        self._handle.remove()
        self._handle = None
        for m, mode in self._modes.items():
            m.training = mode
        self._modes = {}
