"""fold_: exact BatchNorm folds and linear merges, and the patterns it must leave alone."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchslim.stages  # noqa: F401  (registers the fold stage)
from torchslim.errors import ConfigError
from torchslim.fold import FoldConfig, fold_, fold_batchnorms_, merge_linear
from torchslim.report import unaccounted_parameters
from torchslim.stages import STAGES
from torchslim.zoo import create_model


@pytest.fixture(autouse=True)
def one_thread():
    """Small models on a shared, loaded 2-core machine run far faster (and steadier) on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval()


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs().max() / b.abs().max()).detach())


class Seq(nn.Module):
    def __init__(self, *mods: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(*mods)

    def forward(self, x):
        return self.body(x)


CASES = {
    "conv_bn": (lambda: Seq(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)), (4, 3, 10, 10), 1),
    "conv_nobias_bn_stride": (lambda: Seq(nn.Conv2d(3, 8, 3, 2, bias=False), nn.BatchNorm2d(8)), (4, 3, 11, 11), 1),
    "depthwise_bn": (lambda: Seq(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8)), (4, 8, 9, 9), 1),
    "grouped_bn": (lambda: Seq(nn.Conv2d(8, 12, 3, groups=4), nn.BatchNorm2d(12)), (4, 8, 9, 9), 1),
    "conv1d_bn": (lambda: Seq(nn.Conv1d(4, 6, 3), nn.BatchNorm1d(6)), (4, 4, 20), 1),
    "linear_bn": (lambda: Seq(nn.Linear(10, 6), nn.BatchNorm1d(6)), (8, 10), 1),
    "linear_linear": (lambda: Seq(nn.Linear(32, 8), nn.Linear(8, 4)), (8, 32), 1),
    "linear_chain": (lambda: Seq(nn.Linear(40, 10), nn.Linear(10, 6), nn.Linear(6, 3)), (8, 40), 2),
    "conv_conv1x1": (lambda: Seq(nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 1)), (4, 3, 9, 9), 1),
    "conv_bn_conv1x1": (lambda: Seq(nn.Conv2d(3, 16, 3, 2, padding=1), nn.BatchNorm2d(16), nn.Conv2d(16, 4, 1)), (4, 3, 9, 9), 2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_foldable_pattern_is_exact(case):
    build, shape, n_folds = CASES[case]
    torch.manual_seed(0)
    model = randomise_bn(build())
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = model(x)
    report = fold_(model)
    assert len(report.layers) == n_folds and all(l.action == "folded" for l in report.layers)
    with torch.no_grad():
        out = model(x)
    assert rel_diff(out, ref) <= 1e-5
    live = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    assert len(live) == 1  # everything collapsed into one layer
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_folded_models_from_the_zoo_are_exact():
    torch.manual_seed(0)
    resnet = randomise_bn(create_model("resnet_cifar", depth=20, in_channels=1))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        ref = resnet(x)
    report = fold_(resnet)
    assert len(report.layers) == 21  # 19 conv-BN + 2 shortcut conv-BN
    assert [(s.name, s.reason) for s in report.skipped] == [
        ("fc", "Linear: nothing to fold with (no BatchNorm after it, no layer to merge it with); weight, bias left as they were")
    ]
    with torch.no_grad():
        assert rel_diff(resnet(x), ref) <= 1e-5


class NonLinearBetween(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SharedConvOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y  # the conv output is used twice: folding would change the residual


class PreActivation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu, self.bn = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.relu(self.conv(x)))


@pytest.mark.parametrize(
    "build,train,reason",
    [
        (NonLinearBetween, False, "not merged with fc2: non-linearity act \\(ReLU\\) between"),
        (SharedConvOutput, False, "output of conv is also used by add"),
        (PreActivation, False, "input comes from relu \\(ReLU\\), not a Conv/Linear"),
        (lambda: Seq(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), True, "training mode"),
        (lambda: Seq(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)), False, "no running statistics"),
        (lambda: Seq(nn.Linear(32, 8), nn.Linear(8, 32)), False, "not smaller than the pair"),
    ],
)
def test_patterns_that_must_not_fold_are_left_alone_and_reported(build, train, reason):
    torch.manual_seed(0)
    model = build()
    if any(isinstance(m, nn.BatchNorm2d) and m.track_running_stats for m in model.modules()):
        randomise_bn(model)
    model.train(train)
    before = copy.deepcopy(model.state_dict())
    modules_before = [type(m) for m in model.modules()]
    report = fold_(model)
    assert report.layers == []
    assert __import__("re").search(reason, report.skipped[0].reason), report.skipped[0].reason
    modules = dict(model.named_modules())  # then every other layer, named with its kind (no silent skip)
    assert all(s.reason.startswith(type(modules[s.name]).__name__ + ": ") for s in report.skipped[1:])
    assert unaccounted_parameters(model, report) == []
    assert [type(m) for m in model.modules()] == modules_before
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_merge_always_and_never():
    torch.manual_seed(0)
    model = Seq(nn.Linear(32, 8), nn.Linear(8, 32))  # merged 32×32 is larger than the pair
    x = torch.randn(5, 32)
    ref = model(x)
    assert fold_(copy.deepcopy(model), {"linear": "never"}).layers == []
    report = fold_(model, {"linear": "always"})
    assert len(report.layers) == 1 and report.layers[0].details == {"pattern": "linear_merge", "absorbed": "body.0"}
    assert rel_diff(model(x), ref) <= 1e-5


def test_targets_filter_and_config_errors():
    model = randomise_bn(Seq(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)))
    report = fold_(copy.deepcopy(model), {"targets": {"body.4": None, "re:body\\.\\d": {}}})
    assert [l.name for l in report.layers] == ["body.0"]
    assert any(s.name == "body.4" and "targets" in s.reason for s in report.skipped)
    report = fold_(copy.deepcopy(model), filter_fn=lambda m, n: n != "body.1")
    assert [l.name for l in report.layers] == ["body.3"]
    with pytest.raises(ConfigError, match="linear"):
        FoldConfig.parse({"linear": "sometimes"})
    with pytest.raises(ConfigError, match="unknown key"):
        FoldConfig.parse({"bn": True})


def test_untraceable_model_folds_inside_traceable_children():
    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
            self.b = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))

        def forward(self, x):
            y = self.a(x)
            if y.sum() > 0:  # data-dependent control flow: fx cannot trace the whole model
                y = y * 2
            return self.b(y)

    torch.manual_seed(0)
    model = randomise_bn(Untraceable())
    x = torch.randn(2, 3, 12, 12)
    ref = model(x)
    report = fold_(model)
    assert sorted(l.name for l in report.layers) == ["a.0", "b.0"]
    assert report.meta["traced"] == ["a", "b"]
    assert rel_diff(model(x), ref) <= 1e-5


def test_fold_stage_and_legacy_helper_agree():
    spec = STAGES.get("fold")
    cfg = spec.config.parse({"linear": "never"})
    torch.manual_seed(0)
    m1 = randomise_bn(create_model("resnet_cifar", depth=20, in_channels=1)).train()
    m2 = copy.deepcopy(m1).eval()
    report = spec.run(m1, cfg, None)  # type: ignore[arg-type]
    assert len(report.layers) == 21 and not m1.training
    pairs = fold_batchnorms_(m2)
    assert len(pairs) == 21
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(m1(x), m2(x), rtol=1e-5, atol=1e-5)


def test_merge_linear_math():
    a, b = nn.Linear(6, 5), nn.Linear(5, 3)
    m = merge_linear(a, b)
    x = torch.randn(4, 6)
    torch.testing.assert_close(m(x), b(a(x)), rtol=1e-5, atol=1e-6)
