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


def test_recipe_runs_with_device_cuda_from_the_cli(tmp_path):
    import json

    import yaml
    from typer.testing import CliRunner

    from torchslim.cli import app

    recipe = {
        "name": "cuda", "model": {"name": "zoo:lenet300", "args": {"in_features": 64}}, "data": "digits",
        "measure": {"latency_runs": 3, "latency_batch": 8},
        "stages": [
            {"type": "train", "epochs": 3, "lr": 0.1},
            {"type": "prune", "sparsity": 0.5, "criterion": "taylor", "keep_first_last": False,
             "calibration": {"batches": 2, "batch_size": 32}, "finetune": {"epochs": 1, "lr": 0.01}},
            {"type": "quantize", "weight": {"bits": 8}, "calibration": {"batches": 2, "batch_size": 32}},
        ],
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    res = CliRunner().invoke(app, ["run", str(tmp_path / "r.yaml"), "--device", "cuda", "--output", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["meta"]["device"] == "cuda:0" and report["after"]["accuracy"] > 0.85
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert {d["device"] for d in state["completed"]} == {"cuda:0"}
