"""BatchNorm recalibration: statistics re-estimated, nothing else changed."""

import copy

import torch
from torch import nn

from torchslim.train.recalibrate import recalibrate_batchnorm


def test_statistics_are_the_average_over_the_batches_and_nothing_else_changes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3), nn.ReLU(), nn.Flatten(),
                          nn.LazyLinear(2), nn.Dropout(0.5)).eval()
    model(torch.randn(1, 3, 6, 6))
    params = copy.deepcopy(dict(model.named_parameters()))
    batches = [(torch.randn(8, 3, 6, 6) * 2 + 1, torch.zeros(8, dtype=torch.long)) for _ in range(5)]
    assert recalibrate_batchnorm(model, batches, max_batches=3) == 1
    bn = model[1]
    with torch.no_grad():  # momentum None: the plain average of the three batches' statistics
        feats = [model[0](x) for x, _ in batches[:3]]
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    assert torch.allclose(bn.running_mean, mean, atol=1e-5) and torch.allclose(bn.running_var, var, atol=1e-4)
    assert int(bn.num_batches_tracked) == 3 and bn.momentum == 0.3
    assert not model.training and not any(m.training for m in model.modules())
    assert all(torch.equal(params[k], p) for k, p in model.named_parameters())


def test_a_model_without_batchnorm_runs_nothing():
    model = nn.Linear(3, 2).train()
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    assert recalibrate_batchnorm(model, [torch.randn(2, 3)]) == 0
    assert calls == [] and model.training
