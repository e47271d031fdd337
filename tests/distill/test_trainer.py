
import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim.data import DataBundle, Split, load_data
from torchslim.distill import DistillConfig, Distiller, distill_from
from torchslim.errors import ConfigError, TorchslimError
from torchslim.measure import evaluate_accuracy
from torchslim.zoo import create_model


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


@pytest.fixture(scope="module")
def teacher(digits):
    torch.manual_seed(0)
    t = create_model("mlp", in_features=64, hidden=[256, 256], dropout=0.2)
    ts.finetune(t, digits, {"epochs": 15, "lr": 0.05, "batch_size": 32, "schedule": "cosine"}, progress=False)
    t.eval()
    return t


def _student(seed=1, hidden=(32,)):
    torch.manual_seed(seed)
    return create_model("mlp", in_features=64, hidden=list(hidden))


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_gradients_flow_only_to_student_and_adapters(digits, teacher):
    teacher.zero_grad(set_to_none=True)  # the fixture's own training left gradients behind
    student = _student()
    cfg = DistillConfig(hints=[{"student": "act1", "teacher": "act2", "loss": "mse"}])
    d = Distiller.prepare(student, teacher, digits, cfg)
    assert "0" in d.adapters and isinstance(d.adapters["0"], nn.Linear)
    try:
        d._attach()
        student.train()
        x, y = digits.train.x[:16], digits.train.y[:16]
        loss = d.loss(student(x), y)
        loss.backward()
    finally:
        d.close()
    assert set(d.last_terms) == {"kd", "hint0"} and all(v > 0 for v in d.last_terms.values())
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.adapters.parameters())


def test_teacher_bit_identical_after_distillation_even_with_batchnorm_and_dropout(digits):
    torch.manual_seed(0)
    teacher = create_model("resnet_cifar", depth=8, in_channels=1, num_classes=10, width=4)
    teacher.train()  # left in training mode on purpose: distill must still freeze BN statistics
    before = _state(teacher)
    student = create_model("resnet_cifar", depth=8, in_channels=1, num_classes=10, width=2)
    s_before = _state(student)
    distill_from(
        student,
        teacher,
        digits,
        {"epochs": 1, "lr": 0.05, "batch_size": 64, "hints": [{"student": "layer3", "teacher": "layer3", "loss": "mse"},
                                                              {"student": "layer2", "teacher": "layer2", "loss": "attention"}]},
        progress=False,
    )
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running stats
    assert teacher.training  # its mode is restored
    assert not all(torch.equal(s_before[k], v) for k, v in student.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in [*teacher.modules(), *student.modules()])


def test_different_number_of_classes_is_refused_before_training(digits, teacher):
    torch.manual_seed(0)
    student = create_model("mlp", in_features=64, hidden=[32], num_classes=5)
    before = _state(student)
    with pytest.raises(TorchslimError, match="teacher has 10 classes but the student has 5"):
        distill_from(student, teacher, digits, {"epochs": 1}, progress=False)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_teacher_on_another_device_is_refused_before_training(digits):
    torch.manual_seed(0)
    teacher = create_model("mlp", in_features=64, hidden=[16]).to("meta")
    student = _student()
    before = _state(student)
    with pytest.raises(TorchslimError, match="the student is on cpu and the teacher on meta"):
        distill_from(student, teacher, digits, {"epochs": 1}, progress=False)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_unknown_hint_layers_are_reported_together_before_training(digits, teacher):
    student = _student()
    before = _state(student)
    with pytest.raises(ConfigError) as info:
        distill_from(student, teacher, digits, {"hints": [{"student": "fc9", "teacher": "nope"}]}, progress=False)
    msg = str(info.value)
    assert "hints.0.student" in msg and "'fc9'" in msg and "hints.0.teacher" in msg and "'nope'" in msg and "fc1" in msg
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_incompatible_hint_shapes_and_bad_config_values_are_clear(digits, teacher):
    with pytest.raises(TorchslimError, match="attention transfer needs conv maps"):
        distill_from(_student(), teacher, digits, {"hints": [{"student": "act1", "teacher": "act1", "loss": "attention"}]}, progress=False)
    with pytest.raises(ConfigError, match="temperature"):
        distill_from(_student(), teacher, digits, {"temperature": 0}, progress=False)
    with pytest.raises(ConfigError, match="loss"):
        distill_from(_student(), teacher, digits, {"loss": "kld"}, progress=False)
    with pytest.raises(TorchslimError, match="same module"):
        distill_from(teacher, teacher, digits, {}, progress=False)


def test_distilled_student_beats_the_same_student_trained_alone(digits, teacher):
    """Same 150 labelled images, same epochs, same init: the teacher's soft targets carry what the labels lack."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(digits.train), generator=g)[:150]
    small = DataBundle("digits-150", Split(digits.train.x[idx], digits.train.y[idx]), digits.val, digits.test, 10, digits.input_shape)
    cfg = {"epochs": 30, "lr": 0.05, "batch_size": 32, "schedule": "cosine"}
    gains = []
    for seed in (1, 2):
        alone, distilled = _student(seed, (64,)), _student(seed, (64,))
        ts.finetune(alone, small, cfg, progress=False)
        distill_from(distilled, teacher, small, {**cfg, "temperature": 4.0, "alpha": 0.9}, progress=False)
        acc_alone = evaluate_accuracy(alone, digits.loader("test"))
        acc_kd = evaluate_accuracy(distilled, digits.loader("test"))
        gains.append(acc_kd - acc_alone)
    assert evaluate_accuracy(teacher, digits.loader("test")) > 0.95
    assert min(gains) > 0.01, gains


def test_adapter_is_trained_and_hint_loss_falls(digits, teacher):
    student = _student(hidden=(48,))
    d_cfg = {"epochs": 3, "lr": 0.05, "batch_size": 32, "loss": "none",
             "hints": [{"student": "act1", "teacher": "act1", "loss": "cosine", "weight": 1.0}]}
    cfg = DistillConfig.parse(d_cfg)
    d = Distiller.prepare(student, teacher, digits, cfg)
    w0 = d.adapters["0"].weight.detach().clone()
    ts.finetune(student, digits, cfg.train_config(), callbacks=[d], loss_fn=d.loss, progress=False)
    assert not torch.equal(w0, d.adapters["0"].weight)
    report = distill_from(student, teacher, digits, d_cfg, progress=False)
    assert report.technique == "distill" and report.layers[0].name == "act1"
    assert report.layers[0].details["adapter"] == "Linear" and report.layers[0].details["teacher_layer"] == "act1"


def test_masks_stay_applied_while_distilling(digits, teacher):
    student = _student(hidden=(64,))
    ts.prune_(student, {"sparsity": 0.7, "keep_first_last": False})
    zero = student.fc1.weight == 0
    distill_from(student, teacher, digits, {"epochs": 1, "lr": 0.05, "batch_size": 32}, progress=False)
    assert int((student.fc1.weight[zero] != 0).sum()) == 0


def test_diverging_distillation_is_stopped_and_cleaned_up(digits, teacher):
    from torchslim.errors import TrainingDivergedError

    student = _student()
    before, t_before = _state(student), _state(teacher)
    with pytest.raises(TrainingDivergedError, match="student: the training loss became"):
        distill_from(student, teacher, digits, {"epochs": 2, "lr": 1e12, "hints": [{"student": "act1", "teacher": "act2"}]},
                progress=False, description="student")
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())
    assert all(torch.equal(v, t_before[k]) for k, v in teacher.state_dict().items())
    assert not student._forward_pre_hooks and not student._forward_hooks  # the distiller's hooks are gone
    assert all(not m._forward_hooks for m in teacher.modules())
    assert not teacher.training
