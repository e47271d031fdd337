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
    whitening_factor,
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
    assert {s.name for s in report.skipped if not s.reason.startswith("BatchNorm2d: ")} == {"conv1", "fc"}


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
    cfg = spec.config.parse({"energy": 0.5})
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


# --- data-aware (activation-whitened) SVD, SVD-LLM's truncation-aware data whitening ---


def _correlated(gen: torch.Generator, mix: torch.Tensor, n: int) -> torch.Tensor:
    """Inputs ``z @ mix`` plus small noise: strongly anisotropic, almost rank ``mix.shape[0]``."""
    return torch.randn(n, mix.shape[0], generator=gen) @ mix + 0.05 * torch.randn(n, mix.shape[1], generator=gen)


def _one_linear(lin: nn.Linear) -> nn.Sequential:
    model = nn.Sequential(nn.Linear(lin.in_features, lin.out_features))
    model[0].load_state_dict(lin.state_dict())
    return model


@torch.no_grad()
def test_whitened_svd_beats_plain_svd_on_held_out_inputs():
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(6, 64, generator=gen) * torch.linspace(3, 0.5, 6)[:, None]
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    calibration = [(_correlated(gen, mix, 128), torch.zeros(128)) for _ in range(4)]  # (x, y) batches
    held = _correlated(gen, mix, 512)
    ref = lin(held)
    plain, white = _one_linear(lin), _one_linear(lin)
    factorize_(plain, {"rank": 8, "keep_first_last": False})
    report = factorize_(white, {"rank": 8, "keep_first_last": False, "data_aware": True}, calibration=calibration)
    d = report.layers[0].details
    assert d["data_aware"] and d["ranks"] == [8] and d["calibration_rows"] == 512
    assert report.meta["calibration_batches"] == 4
    err_plain = float((plain(held) - ref).norm() / ref.norm())
    err_white = float((white(held) - ref).norm() / ref.norm())
    assert err_white * 2 <= err_plain, (err_plain, err_white)  # measured 0.757 vs 0.0083 (≈ 90×)
    # full rank: W L L⁻¹ = W, the layer's outputs come back exactly
    x = torch.cat([b[0] for b in calibration]).double()
    whitener, eps = whitening_factor(x.T @ x)
    assert eps == 1e-6
    full = svd_linear(lin, 48, whitener=whitener)
    assert float((full(held) - ref).norm() / ref.norm()) < 1e-5


@pytest.mark.parametrize("seed,rank", [(0, 1), (1, 3), (2, 5)])
@torch.no_grad()
def test_whitened_truncation_is_optimal_on_the_calibration_inputs(seed, rank):
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(4, 16, generator=gen) * torch.tensor([4.0, 2.0, 1.0, 0.5])[:, None]
    torch.manual_seed(seed)
    lin = nn.Linear(16, 12)
    x = _correlated(gen, mix, 200)
    plain, white = _one_linear(lin), _one_linear(lin)
    factorize_(plain, {"rank": rank, "keep_first_last": False})
    factorize_(white, {"rank": rank, "keep_first_last": False, "data_aware": True}, calibration=[x[:100], x[100:]])
    ref = lin(x).double()
    err_plain = float((plain(x).double() - ref).norm())
    err_white = float((white(x).double() - ref).norm())
    assert err_white <= err_plain * (1 + 1e-5), (err_plain, err_white)
    # Eckart–Young in the whitened space: the error is the tail of the singular values of W L
    xd = x.double()
    s = torch.linalg.svdvals(lin.weight.double() @ torch.linalg.cholesky(xd.T @ xd))
    assert err_white == pytest.approx(float(s[rank:].norm()), rel=1e-3)


@torch.no_grad()
def test_data_aware_convs_and_report():
    torch.manual_seed(0)
    # 3×3 (Tucker-2, not whitened) → 1×1 with stride 2 and padding 1 (whitened over the pixels it sees) → Linear
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 24, 1, stride=2, padding=1),
        nn.Flatten(),
        nn.Linear(24 * 25, 10),
    ).eval()
    x = torch.randn(16, 3, 8, 8)
    dense = copy.deepcopy(model)
    report = factorize_(model, {"rank": 4, "keep_first_last": False, "data_aware": True}, calibration=[x])
    aware = {l.name: l.details["data_aware"] for l in report.layers}
    assert aware == {"0": False, "2": True, "4": True}
    # the 1×1 conv is truncated against the strided, padded pixels it really sees
    seen = nn.functional.pad(dense[1](dense[0](x)), (1, 1, 1, 1))[:, :, ::2, ::2]
    rows = seen.permute(0, 2, 3, 1).reshape(-1, 16).double()
    s = torch.linalg.svdvals(dense[2].weight.flatten(1).double() @ torch.linalg.cholesky(rows.T @ rows))
    err = float((model[2](dense[1](dense[0](x))) - dense[2](dense[1](dense[0](x)))).double().norm())
    assert err == pytest.approx(float(s[4:].norm()), rel=1e-3)


def test_data_aware_refusals_leave_the_model_unchanged():
    class TwoUsed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.unused = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.relu(self.fc1(x)))

    torch.manual_seed(0)
    model = TwoUsed().train()
    state = copy.deepcopy(model.state_dict())
    cfg = {"rank": 2, "keep_first_last": False, "data_aware": True}
    with pytest.raises(TransformRefusedError, match=r"calibration=loader"):
        factorize_(model, cfg)
    with pytest.raises(TransformRefusedError, match="empty"):
        factorize_(model, cfg, calibration=[])
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.fc1, nn.Linear) and model.training and model.fc1.training
    assert not any(m._forward_pre_hooks for m in model.modules())
    report = factorize_(model, {**cfg, "calibration": {"batches": 2}}, calibration=[torch.randn(8, 16) for _ in range(5)])
    assert report.meta["calibration_batches"] == 2 and [l.name for l in report.layers] == ["fc1", "fc2"]
    never = "data_aware: the calibration batches never reached this layer"
    assert [(s.name, s.reason) for s in report.skipped] == [("unused", never)]
    assert model.training and model.fc1[0].training  # modes restored, hooks gone
    assert not any(m._forward_pre_hooks for m in model.modules())


@torch.no_grad()
def test_data_aware_stage_uses_training_batches():
    spec = STAGES.get("factorize")
    data = load_data("digits")

    class Ctx:
        pass

    ctx = Ctx()
    ctx.data = data  # type: ignore[attr-defined]
    torch.manual_seed(0)
    dense = create_model("lenet300", in_features=64).eval()
    x = data.split("test").x
    ref = dense(x)
    errors = {}
    for aware in (False, True):
        model = copy.deepcopy(dense)
        cfg = spec.config.parse({"rank": 16, "keep_first_last": False, "data_aware": aware})
        report = spec.run(model, cfg, ctx)  # type: ignore[arg-type]
        assert [l.name for l in report.layers] == ["fc1", "fc2"]
        assert all(l.details["data_aware"] is aware for l in report.layers)
        errors[aware] = float((model(x) - ref).norm() / ref.norm())
    assert report.meta["calibration_batches"] == 8 and report.layers[0].details["calibration_rows"] == 8 * 128
    assert errors[True] < 0.6 * errors[False], errors  # measured 0.295 vs 0.719
