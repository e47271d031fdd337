import pytest
import torch

from torchslim.errors import TorchslimError
from torchslim.measure import count_macs, count_params
from torchslim.zoo import create_model


def test_hinton_teacher_and_student_shapes_and_sizes():
    teacher = create_model("mlp", hidden=[1200, 1200], dropout=0.5, input_dropout=0.2)
    student = create_model("mlp", hidden=(800, 800))
    assert count_params(teacher) == 784 * 1200 + 1200 + 1200 * 1200 + 1200 + 1200 * 10 + 10
    assert count_params(student) == 784 * 800 + 800 + 800 * 800 + 800 + 800 * 10 + 10
    assert count_macs(student, torch.zeros(1, 1, 28, 28)) == 784 * 800 + 800 * 800 + 800 * 10
    assert teacher(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert [n for n, _ in teacher.named_children() if n.startswith("fc")] == ["fc1", "fc2", "fc3"]


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    m = create_model("mlp", in_features=16, hidden=[64], dropout=0.5, input_dropout=0.2, num_classes=3)
    x = torch.randn(4, 16)
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    assert not torch.equal(m(x), m(x))


def test_bad_arguments_are_clear():
    with pytest.raises(TorchslimError, match="dropout"):
        create_model("mlp", dropout=1.0)
    with pytest.raises(TorchslimError, match="widths"):
        create_model("mlp", hidden=[0])
    with pytest.raises(TorchslimError, match="allowed"):
        create_model("mlp", widths=[3])
