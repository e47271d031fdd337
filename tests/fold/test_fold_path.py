"""One BatchNorm fold path: quantization's ``find_conv_bn_pairs``/``fold_batchnorms_`` and ``fold_`` decide alike,
and every part of a model torch.fx cannot trace is reported."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.fx
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.fold import FOLD, find_conv_bn_pairs, fold_, fold_batchnorms_, plan_folds
from torchslim.fold.bnmath import BATCHNORMS, FOLDABLE
from torchslim.technique import Technique
from torchslim.zoo import create_model


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval()


def previous_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """The rule quantization folded by before it shared fold_'s planner (kept here as the reference)."""
    graph = torch.fx.Tracer().trace(model)
    modules = dict(model.named_modules())
    bn_uses: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules.get(str(node.target)), BATCHNORMS):
            bn_uses[str(node.target)] = bn_uses.get(str(node.target), 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), FOLDABLE):
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module":
            continue
        bn_name = str(users[0].target)
        if isinstance(modules.get(bn_name), BATCHNORMS) and bn_uses.get(bn_name) == 1 and users[0].args[0] is node:
            pairs.append((str(node.target), bn_name))
    return pairs


ZOO = {
    "lenet5": (lambda: create_model("lenet5"), 0),
    "resnet_cifar20": (lambda: create_model("resnet_cifar", depth=20), 21),
    "mobilenet_v2": (lambda: create_model("mobilenet_v2", width_mult=0.5, num_classes=10), 52),
    "densenet_small": (lambda: create_model("densenet_small"), 0),
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_pairs_are_the_previous_ones_and_fold_s(name):
    build, n = ZOO[name]
    torch.manual_seed(0)
    model = randomise_bn(build())
    pairs = find_conv_bn_pairs(model)
    assert pairs == previous_pairs(model) and len(pairs) == n
    plan = plan_folds(model, {"linear": "never"})
    assert [(f.name, f.absorbed) for f in plan.folds] == pairs  # the same planner decides both


def test_fold_batchnorms_is_bit_identical_to_folding_each_pair_and_leaves_the_rng_alone():
    torch.manual_seed(0)
    model = randomise_bn(create_model("resnet_cifar", depth=20))
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    expected = copy.deepcopy(model)
    for layer, bn in previous_pairs(expected):  # the in-place fold as quantization did it before
        conv, norm = expected.get_submodule(layer), expected.get_submodule(bn)
        k = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
        w = (conv.weight.double() * k.reshape(-1, 1, 1, 1)).to(conv.weight.dtype)
        b = ((torch.zeros_like(k) - norm.running_mean.double()) * k + norm.bias.double()).to(conv.weight.dtype)
        conv.weight.data.copy_(w)
        conv.bias = nn.Parameter(b)
    state = torch.random.get_rng_state()
    fold_batchnorms_(model)
    assert torch.equal(torch.random.get_rng_state(), state)  # deciding makes no module: no weight init drawn
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected.state_dict()[key]), key
    torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4)


class ConvIdentityBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.drop, self.bn = nn.Conv2d(3, 4, 3), nn.Identity(), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.drop(self.conv(x)))


class SharedConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn1, self.bn2 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn1(self.conv(x)) + self.bn2(self.conv(x))  # one conv, two calls: no fold may change it


class TwoBatchNorms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn1, self.bn2 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn2(self.bn1(self.conv(x)))


@pytest.mark.parametrize(
    "build,train,pairs",
    [
        (ConvIdentityBN, False, [("conv", "bn")]),  # an identity between is skipped (fold_'s rule)
        (ConvIdentityBN, True, []),  # training mode: batch statistics, no fold
        (SharedConv, False, []),
        (TwoBatchNorms, False, [("conv", "bn1"), ("conv", "bn2")]),
        (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)), False, []),
    ],
)
def test_quantization_folds_by_fold_s_rules(build, train, pairs):
    torch.manual_seed(0)
    model = randomise_bn(build()).train(train)
    assert find_conv_bn_pairs(model) == pairs
    assert [(f.name, f.absorbed) for f in plan_folds(model, {"linear": "never"}).folds] == pairs
    if not pairs or train:
        return
    x = torch.randn(2, 3, 9, 9)
    ref = model(x)
    m2 = copy.deepcopy(model)
    assert fold_batchnorms_(model) == pairs  # pairs into one layer fold one after the other
    fold_(m2)
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m2(x), ref, rtol=1e-5, atol=1e-5)


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


class LeavesOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return y if y.sum() > 0 else -y


def test_untraced_parts_are_reported_never_swallowed():
    torch.manual_seed(0)
    model = randomise_bn(Untraceable())
    assert find_conv_bn_pairs(model) == [("a.0", "a.1"), ("b.0", "b.1")]  # the parts that trace
    report = fold_(copy.deepcopy(model))
    assert report.meta["traced"] == ["a", "b"] and report.meta["not_traced"] == ["<root>"]
    (skip,) = report.skipped
    assert skip.name == "<root>" and "torch.fx cannot trace Untraceable" in skip.reason and "control flow" in skip.reason
    leaves = randomise_bn(LeavesOnly())
    with pytest.raises(TorchslimError, match="finding BatchNorms to fold: torch.fx cannot trace LeavesOnly"):
        find_conv_bn_pairs(leaves)  # nothing traces: quantization records the reason as a note
    report = fold_(leaves)
    assert report.layers == [] and report.meta["not_traced"] == ["<root>"] and report.meta["traced"] == []
    assert report.skipped[0].name == "<root>" and "LeavesOnly" in report.skipped[0].reason


def test_fold_is_a_technique_and_its_plan_reads_only():
    assert isinstance(FOLD, Technique) and FOLD.name == "fold"
    torch.manual_seed(0)
    model = randomise_bn(create_model("resnet_cifar", depth=8))
    state = copy.deepcopy(model.state_dict())
    classes = [(n, type(m)) for n, m in model.named_modules()]
    cfg = FOLD.config.parse({})
    assert [name for name, _ in FOLD.candidates(model)][:2] == ["conv1", "bn1"]
    plan = FOLD.plan(model, cfg, FOLD.select(model, cfg, None), None)  # type: ignore[arg-type]
    assert plan.meta["folded"] == len(plan.folds) == 9
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert [(n, type(m)) for n, m in model.named_modules()] == classes
    layers = FOLD.apply(model, plan)
    assert [l.name for l in layers] == [f.name for f in plan.folds] and all(l.action == "folded" for l in layers)
    assert [name for name, _ in FOLD.candidates(model)][:2] == ["conv1", "layer1.0.conv1"]  # bn1 is an Identity now
