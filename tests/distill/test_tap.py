"""The one teacher hook: TeacherTap runs the frozen teacher on the student's inputs."""

import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim.distill import Distiller, TeacherTap
from torchslim.errors import TorchslimError


class _Keywords(nn.Module):
    """A model called with a keyword argument (as Hugging Face models are)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.scale = scale

    def forward(self, x, *, shift=0.0):
        return self.fc(x) * self.scale + shift


def test_the_teacher_runs_on_training_batches_only_without_gradients():
    torch.manual_seed(0)
    teacher, student = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3)), nn.Linear(4, 3)
    tap = TeacherTap(teacher)
    tap.attach(student)
    try:
        x = torch.randn(5, 4)
        student(x)
        assert not teacher.training and tap.output is not None and not tap.output.requires_grad
        assert torch.equal(tap.output, teacher(x))  # eval mode: dropout off, deterministic
        assert torch.equal(tap.logits, tap.output)
        tap.output = None
        student.eval()(x)
        assert tap.output is None and tap.logits is None
    finally:
        tap.detach()
    assert teacher.training and not student._forward_pre_hooks


def test_probe_mode_runs_the_teacher_on_every_call():
    teacher, student = nn.Linear(4, 3), nn.Linear(4, 3).eval()
    tap = TeacherTap(teacher, training_only=False)
    tap.attach(student)
    student(torch.randn(2, 4))
    tap.detach()
    assert tap.output is not None  # kept after detach


def test_keyword_arguments_reach_the_teacher():
    torch.manual_seed(0)
    teacher, student = _Keywords(2.0), _Keywords(1.0)
    tap = TeacherTap(teacher)
    tap.attach(student)
    x = torch.randn(2, 4)
    student(x, shift=10.0)
    tap.detach()
    assert torch.equal(tap.output, teacher(x, shift=10.0))


def test_each_teacher_module_gets_its_own_mode_back_and_nothing_changes():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    teacher.train()
    teacher[1].eval()  # a frozen BatchNorm inside a training model
    modes = [m.training for m in teacher.modules()]
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    tap = TeacherTap(teacher)
    tap.attach(nn.Linear(4, 3))
    assert not any(m.training for m in teacher.modules())  # in eval mode while attached
    with pytest.raises(TorchslimError, match="already attached"):
        tap.attach(nn.Linear(4, 3))
    tap.detach()
    tap.detach()  # idempotent
    assert [m.training for m in teacher.modules()] == modes
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # BN statistics untouched


def test_the_distiller_uses_the_tap_and_gives_its_callbacks():
    data = ts.load_data("digits")
    torch.manual_seed(0)
    teacher = ts.create_model("mlp", in_features=64, hidden=[32])
    student = ts.create_model("mlp", in_features=64, hidden=[16])
    teacher.train()
    teacher.fc1.eval()  # mixed modes come back as they were
    modes = [m.training for m in teacher.modules()]
    d = Distiller.prepare(student, teacher, data, ts.DistillConfig(epochs=1))
    assert d.callbacks() == [d] and isinstance(d.tap, TeacherTap) and not d.tap.attached
    try:
        ts.finetune(student, data, d.config.train_config(), callbacks=d.callbacks(), loss_fn=d.loss, progress=False)
    finally:
        d.close()
    assert [m.training for m in teacher.modules()] == modes
    assert not student._forward_pre_hooks and d.tap.output is None
