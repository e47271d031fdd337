"""factorize_: SVD and Tucker-2 math, rank rules, MAC budget, healing on real data."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchslim.stages  # noqa: F401  (registers the factorize stage)
from torchslim.data import load_data
from torchslim.errors import ConfigError, TransformRefusedError
from torchslim.lowrank import (
    FactorizeConfig,
    factorize_,
    rank_for_energy,
    svd_linear,
    tucker2_conv,
    tucker2_ranks_for_ratio,
)
from torchslim.measure import count_macs, count_params, evaluate_accuracy
from torchslim.stages import STAGES
from torchslim.train import finetune
from torchslim.zoo import create_model


@pytest.fixture(autouse=True)
def one_thread():
    """Small models on a shared, loaded 2-core machine run far faster (and steadier) on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_full_rank_factorisations_are_exact():
    torch.manual_seed(0)
    lin = nn.Linear(20, 12)
    x = torch.randn(5, 20)
    torch.testing.assert_close(svd_linear(lin, 12)(x), lin(x), rtol=1e-5, atol=1e-5)
    conv = nn.Conv2d(6, 10, 3, stride=2, padding=1)
    xc = torch.randn(2, 6, 9, 9)
    torch.testing.assert_close(tucker2_conv(conv, 6, 10)(xc), conv(xc), rtol=1e-5, atol=1e-5)
    one = nn.Conv2d(8, 8, 1)
    x1 = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(svd_linear(one, 8)(x1), one(x1), rtol=1e-5, atol=1e-5)


def test_truncated_svd_is_the_optimal_low_rank_approximation():
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(30, 30))
    v, _ = torch.linalg.qr(torch.randn(20, 20))
    s = torch.tensor([10.0, 5.0, 2.0] + [0.01] * 17)
    lin = nn.Linear(20, 30)
    with torch.no_grad():
        lin.weight.copy_(u[:, :20] @ torch.diag(s) @ v.T)
    low = svd_linear(lin, 3)
    w = low[1].weight @ low[0].weight
    err = torch.linalg.matrix_norm((w - lin.weight).detach(), 2)
    assert float(err) == pytest.approx(0.01, rel=1e-3)  # Eckart–Young: the 4th singular value
    assert rank_for_energy(s, 0.95) == 2 and rank_for_energy(s, 0.99) == 3  # 125/129 and 129/129.002


def test_rank_rules_hit_their_budgets():
    torch.manual_seed(0)
    r_in, r_out = tucker2_ranks_for_ratio(64, 64, 9, 0.5)
    assert 0.45 <= (64 * r_in + r_in * r_out * 9 + r_out * 64) / (64 * 64 * 9) <= 0.5
    model = create_model("resnet_cifar", depth=20, in_channels=1).eval()
    x = torch.randn(1, 1, 28, 28)
    before = count_params(model)
    report = factorize_(model, {"ratio": 0.5})
    assert {l.details["method"] for l in report.layers} == {"tucker2", "svd"}
    for l in report.layers:
        assert l.details["params_after"] <= 0.5 * l.details["params_before"] + 1
    assert count_params(model) < 0.6 * before
    model = create_model("resnet_cifar", depth=20, in_channels=1).eval()
    report = factorize_(model, {"macs_ratio": 0.5}, example_input=x)
    assert report.meta["macs_after"] <= 0.5 * report.meta["macs_before"]
    assert report.meta["macs_after"] >= 0.4 * report.meta["macs_before"]  # the budget is used, not overshot
    assert count_macs(model, x) == report.meta["macs_after"]
    assert {s.name for s in report.skipped} == {"conv1", "fc"}


def test_refusals_and_config_errors_leave_the_model_unchanged():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Flatten(), nn.Linear(8, 4))
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(TransformRefusedError, match="no layer to factorise"):
        factorize_(model, {"keep_first_last": False, "rank": 4})  # depthwise skipped; 8→4 at rank 4 not smaller
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(TransformRefusedError, match="example_input"):
        factorize_(model, {"macs_ratio": 0.5})
    with pytest.raises(ConfigError, match="at most one"):
        FactorizeConfig.parse({"ratio": 0.5, "energy": 0.9})
    with pytest.raises(ConfigError, match="method"):
        FactorizeConfig.parse({"method": "cp"})


def test_targets_and_stage():
    model = create_model("lenet300")
    report = factorize_(model, {"targets": {"fc1": {"rank": 20}, "fc2": None}})
    assert [l.name for l in report.layers] == ["fc1"] and report.layers[0].details["ranks"] == [20]
    assert model.fc1[0].weight.shape == (20, 784)
    spec = STAGES.get("factorize")
    cfg = spec.config.parse({"energy": 0.5, "name": "svd"})
    data = load_data("digits")
    m = create_model("lenet300", in_features=64)

    class Ctx:
        pass

    ctx = Ctx()
    ctx.data = data  # type: ignore[attr-defined]
    report = spec.run(m, cfg, ctx)  # type: ignore[arg-type]
    assert report.technique == "factorize" and report.meta["macs_after"] < report.meta["macs_before"]


def test_factorised_cnn_heals_on_digits():
    data = load_data("digits")
    torch.manual_seed(0)
    model = create_model("resnet_cifar", depth=8, in_channels=1, width=16)
    finetune(model, data, {"epochs": 6, "lr": 0.05, "batch_size": 64, "schedule": "cosine"}, progress=False)
    base = evaluate_accuracy(model, data.loader("test", 512))
    x = data.example_input()
    report = factorize_(model, {"macs_ratio": 0.5}, example_input=x)
    assert report.meta["macs_after"] <= 0.5 * report.meta["macs_before"]
    raw = evaluate_accuracy(model, data.loader("test", 512))
    finetune(model, data, {"epochs": 4, "lr": 0.02, "batch_size": 64, "schedule": "cosine"}, progress=False)
    healed = evaluate_accuracy(model, data.loader("test", 512))
    assert base > 0.9
    assert healed >= base - 0.02 and healed > raw, (base, raw, healed)
