"""GPU path: training, masks, structured surgery and measurement on CUDA.

These run only where CUDA is present (CI has none; they were run on a lent H100).
"""

import copy

import pytest
import torch

from torchslim.data import load_data
from torchslim.distill import distill_from
from torchslim.measure import evaluate_accuracy, measure
from torchslim.prune import prune_
from torchslim.train import finetune, load_checkpoint, save_checkpoint
from torchslim.zoo import create_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_train_prune_finetune_measure_on_cuda(tmp_path):
    data = load_data("digits")
    torch.manual_seed(0)
    m = create_model("lenet300", in_features=64).cuda()
    finetune(m, data, {"epochs": 10, "lr": 0.05, "batch_size": 32}, progress=False)
    assert evaluate_accuracy(m, data.loader("test", 512)) > 0.93
    prune_(m, {"sparsity": 0.8, "keep_first_last": False})
    zero = {n: p == 0 for n, p in m.named_parameters() if n.endswith("weight")}
    finetune(m, data, {"epochs": 2, "lr": 0.01, "batch_size": 32, "optimizer": "adam"}, progress=False)
    for n, p in m.named_parameters():
        if n in zero:
            assert int((p[zero[n]] != 0).sum()) == 0
    rec = measure(m, data.loader("test", 512), example_input=data.example_input().cuda(), latency_batch=32, latency_runs=5)
    assert rec.accuracy > 0.9 and rec.latency_ms > 0 and rec.nonzeros < rec.params
    save_checkpoint(m, tmp_path / "ck")
    fresh = create_model("lenet300", in_features=64)
    load_checkpoint(fresh, tmp_path / "ck")
    assert torch.equal(fresh.fc1.weight, m.fc1.weight.cpu())


def test_structured_pruning_on_cuda():
    torch.manual_seed(0)
    m = create_model("resnet_cifar", depth=20, in_channels=1).cuda().eval()
    x = torch.randn(4, 1, 28, 28, device="cuda")
    ref = copy.deepcopy(m)
    r = prune_(m, {"granularity": "channel", "macs_target": 0.5, "keep_first_last": False}, example_input=x[:1])
    assert r.meta["macs_ratio"] > 1.9 and m(x).shape == ref(x).shape
    assert all(p.is_cuda for p in m.parameters())


def test_distill_on_cuda():
    data = load_data("digits")
    torch.manual_seed(0)
    teacher = create_model("mlp", in_features=64, hidden=[128]).cuda()
    finetune(teacher, data, {"epochs": 5, "lr": 0.05, "batch_size": 32}, progress=False)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = create_model("mlp", in_features=64, hidden=[32]).cuda()
    distill_from(student, teacher, data, {"epochs": 5, "lr": 0.05, "batch_size": 32, "temperature": 4.0}, progress=False)
    assert evaluate_accuracy(student, data.loader("test", 512)) > 0.9
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
