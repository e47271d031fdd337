"""Structured pruning: the architecture matrix, refusals, replay, quality."""

import copy

import pytest
import torch
from torch import nn

from torchslim.data import load_data
from torchslim.errors import ConfigError, TransformRefusedError
from torchslim.measure import count_macs, evaluate_accuracy
from torchslim.prune.structured import StructuredPruneConfig, prune_structured_
from torchslim.train import finetune, load_checkpoint, save_checkpoint
from torchslim.zoo import create_model

MATRIX = {
    "resnet_cifar": (dict(depth=20, in_channels=1), (2, 1, 28, 28), "channel"),
    "densenet_small": (dict(in_channels=1), (2, 1, 28, 28), "channel"),
    "mobilenet_v2": (dict(num_classes=10, width_mult=0.5), (2, 3, 64, 64), "channel"),
    "lenet5": ({}, (2, 1, 28, 28), "channel"),
    "transformer_encoder": (dict(in_channels=1), (2, 1, 28, 28), "channel"),
    "transformer_encoder-heads": (dict(in_channels=1), (2, 1, 28, 28), "head"),
}


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("key", list(MATRIX))
def test_architecture_matrix_prunes_shrinks_and_replays(key, tmp_path):
    name = key.split("-")[0]
    kwargs, shape, gran = MATRIX[key]
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    x = torch.randn(*shape)
    y0 = model(x)
    p0, macs0 = n_params(model), count_macs(model, x[:1])
    cfg = {"granularity": gran, "sparsity": 0.5, "keep_first_last": False}
    report = prune_structured_(model, cfg, example_input=x[:1])
    assert report.layers or report.meta["structure_step"].get("heads")
    y1 = model(x)
    assert y1.shape == y0.shape
    assert n_params(model) < p0 and count_macs(model, x[:1]) < macs0
    # save -> load into a fresh instance: identical outputs
    save_checkpoint(model, tmp_path / "ck")
    fresh = create_model(name, **kwargs).eval()
    load_checkpoint(fresh, tmp_path / "ck")
    assert torch.equal(fresh(x), y1)


def test_resnet_half_the_macs_with_widths_rounded_to_8():
    torch.manual_seed(0)
    m = create_model("resnet_cifar", depth=20, in_channels=1)
    x = torch.randn(1, 1, 28, 28)
    r = prune_structured_(m, {"macs_target": 0.5, "keep_first_last": False}, example_input=x)
    assert 1.95 <= r.meta["macs_ratio"] <= 2.6
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d) and mod.in_channels > 1:
            assert mod.out_channels % 8 == 0 and mod.in_channels % 8 == 0
    # the residual stream is pruned as one: every add still lines up
    assert m(torch.randn(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("target", [0.8, 0.7, 0.65, 0.6])
def test_macs_target_is_met_closely_despite_rounded_widths(target):
    """Rounding to 8 makes the MACs jump with the sparsity (a 16-channel group keeps 16 or 8): without giving
    channels back after the bisection, ResNet-20 asked for 0.65 or 0.7 of its MACs kept 0.45."""
    torch.manual_seed(0)
    m = create_model("resnet_cifar", depth=20, in_channels=1)
    x = torch.randn(1, 1, 28, 28)
    macs0 = count_macs(m, x)
    prune_structured_(m, {"macs_target": target, "keep_first_last": False}, example_input=x)
    assert target - 0.03 <= count_macs(m, x) / macs0 <= target
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d) and mod.in_channels > 1:
            assert mod.out_channels % 8 == 0 and mod.in_channels % 8 == 0


def test_unreachable_macs_target_refused_model_untouched():
    m = create_model("lenet300")
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(TransformRefusedError, match="cannot be reached"):
        prune_structured_(m, {"macs_target": 0.01, "targets": {"fc2": {}}}, example_input=torch.randn(1, 784))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_config_errors():
    with pytest.raises(ConfigError, match="exactly one of sparsity or macs_target"):
        StructuredPruneConfig.parse({"granularity": "channel"})
    with pytest.raises(ConfigError) as exc:
        StructuredPruneConfig.parse({"granularity": "filter", "sparsity": 0.5})
    assert exc.value.issues[0].path == "granularity" and "'channel', 'head' or 'block'" in exc.value.issues[0].message


def test_block_removal_picks_the_least_influential_residual_block():
    torch.manual_seed(0)
    m = create_model("resnet_cifar", depth=20, in_channels=1).eval()
    # make one block almost the identity: its residual branch outputs ~0
    with torch.no_grad():
        m.layer2[2].bn2.weight.zero_()
        m.layer2[2].bn2.bias.zero_()
    r = prune_structured_(m, {"granularity": "block", "sparsity": 0.15}, example_input=torch.randn(4, 1, 28, 28))
    assert [l.name for l in r.layers][0] == "layer2.2"
    assert isinstance(m.layer2[2], nn.Identity)


def test_blocks_then_channels_meet_the_macs_target_and_replay(tmp_path):
    torch.manual_seed(0)
    m = create_model("resnet_cifar", depth=20, in_channels=1).eval()
    with torch.no_grad():  # one near-identity block: it must be among the removed ones
        m.layer3[1].bn2.weight.zero_()
        m.layer3[1].bn2.bias.zero_()
    x = torch.randn(4, 1, 28, 28)
    macs0 = count_macs(m, x[:1])
    r = prune_structured_(m, {"macs_target": 0.5, "remove_blocks": 3 / 7, "keep_first_last": False}, example_input=x)
    removed = [l.name for l in r.layers if l.details.get("influence") is not None]
    assert len(removed) == 3 and "layer3.1" in removed
    assert all(isinstance(m.get_submodule(n), nn.Identity) for n in removed)
    assert count_macs(m, x[:1]) <= 0.5 * macs0
    assert r.meta["macs_ratio"] >= 2.0 and "block_step" in r.meta
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d) and mod.in_channels > 1:
            assert mod.out_channels % 8 == 0 and mod.in_channels % 8 == 0
    save_checkpoint(m, tmp_path / "ck")
    fresh = create_model("resnet_cifar", depth=20, in_channels=1).eval()
    load_checkpoint(fresh, tmp_path / "ck")
    xb = torch.randn(3, 1, 28, 28)
    assert torch.equal(m(xb), fresh(xb))
    # a block holding a layer named in targets is never removed
    m2 = create_model("resnet_cifar", depth=20, in_channels=1).eval()
    with torch.no_grad():
        m2.layer3[1].bn2.weight.zero_()
        m2.layer3[1].bn2.bias.zero_()
    r2 = prune_structured_(m2, {"sparsity": 0.5, "remove_blocks": 3 / 7, "targets": {"layer3.1.conv1": {}}}, example_input=x)
    removed2 = [l.name for l in r2.layers if l.details.get("influence") is not None]
    assert len(removed2) == 3 and "layer3.1" not in removed2
    assert m2.layer3[1].conv1.out_channels < 64
    with pytest.raises(ConfigError, match="remove_blocks"):
        StructuredPruneConfig.parse({"granularity": "block", "sparsity": 0.2, "remove_blocks": 0.2})


def test_l2_beats_random_on_real_data():
    data = load_data("digits")
    torch.manual_seed(0)
    base = create_model("lenet300", in_features=64)
    finetune(base, data, {"epochs": 15, "lr": 0.05, "batch_size": 32}, progress=False)
    acc = {}
    for crit in ("l2", "random"):
        m = copy.deepcopy(base)
        cfg = {"sparsity": 0.7, "criterion": crit, "round_to": 1, "keep_first_last": False}
        prune_structured_(m, cfg, example_input=data.example_input())
        acc[crit] = evaluate_accuracy(m, data.loader("test", 512))
    assert acc["l2"] > 0.85 and acc["l2"] > acc["random"] + 0.1, acc  # measured 0.886 vs 0.675


class ChunkGated(nn.Module):
    """A conv whose output is split into a GLU-style gate ``a * sigmoid(b)`` (issue 18)."""

    def __init__(self, slice_gate: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)
        self.slice_gate = slice_gate

    def forward(self, x):
        a, b = torch.chunk(self.conv(x), 2, dim=1)
        if self.slice_gate:  # a channel slice the engine does not follow
            b = torch.cat([b[:, :2], b[:, 2:]], dim=1)[:, [1, 0, 2, 3]]
        return self.fc(self.pool(self.conv2(a * torch.sigmoid(b))).flatten(1))


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_chunk_gated_conv_with_default_settings_prunes_only_the_consumer():
    torch.manual_seed(0)
    m = ChunkGated().eval()
    x = torch.randn(2, 3, 8, 8)
    r = prune_structured_(m, {"sparsity": 0.5, "round_to": 1}, example_input=x[:1])
    assert [l.name for l in r.layers] == ["conv2", "fc"]
    assert {s.name: s.reason for s in r.skipped}["conv"].startswith("fed by the first layer")
    assert m.conv.out_channels == 8 and m.conv2.in_channels == 4 and m.conv2.out_channels == 2 and m.fc.in_features == 2
    assert m(x).shape == (2, 2)


def test_chunk_gated_conv_named_in_targets_prunes_both_halves_with_the_gate():
    torch.manual_seed(0)
    m = ChunkGated().eval()
    ref = copy.deepcopy(m)
    x = torch.randn(2, 3, 8, 8)
    macs0 = count_macs(m, x[:1])
    r = prune_structured_(m, {"sparsity": 0.5, "round_to": 1, "targets": {"conv": {}}}, example_input=x[:1])
    assert [l.name for l in r.layers] == ["conv", "conv2"]
    # by hand: channel c of the gate is row c (a) and row c + 4 (b) of conv and column c of conv2
    w1, w2 = ref.conv.weight.detach(), ref.conv2.weight.detach()
    score = torch.stack([w1[c].pow(2).sum() + w1[c + 4].pow(2).sum() + w2[:, c].pow(2).sum() for c in range(4)])
    kept = sorted(torch.sort(score, descending=True, stable=True).indices[:2].tolist())
    rows = kept + [c + 4 for c in kept]
    assert r.meta["structure_step"]["modules"] == {"conv": {"out": rows}, "conv2": {"in": kept}}
    assert torch.equal(m.conv.weight, w1[rows]) and torch.equal(m.conv.bias, ref.conv.bias.detach()[rows])
    assert torch.equal(m.conv2.weight, w2[:, kept])
    # the reference: the unpruned model with the dropped gate channels cut from conv2's input
    dropped = [c for c in range(4) if c not in kept]
    with torch.no_grad():
        ref.conv2.weight[:, dropped] = 0.0
    assert torch.allclose(m(x), ref(x), atol=1e-6)
    assert count_macs(m, x[:1]) < macs0


def test_chunk_gate_the_engine_cannot_follow_refuses_naming_the_layer_model_untouched():
    torch.manual_seed(0)
    m = ChunkGated(slice_gate=True).eval()
    x = torch.randn(2, 3, 8, 8)
    before, y0 = _state(m), m(x)
    with pytest.raises(TransformRefusedError, match="layer conv cannot be pruned structurally: "):
        prune_structured_(m, {"sparsity": 0.5, "round_to": 1, "targets": {"conv": {}}}, example_input=x[:1])
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items()) and torch.equal(m(x), y0)
    assert m.conv.out_channels == 8


def test_untraceable_model_refuses_naming_it_and_stays_untouched():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(h if h.sum() > 0 else -h)

    m = Branchy()
    before = _state(m)
    with pytest.raises(TransformRefusedError, match=r"structured pruning: torch.fx cannot trace Branchy"):
        prune_structured_(m, {"sparsity": 0.5}, example_input=torch.randn(1, 4))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_a_failure_after_slicing_leaves_the_model_bit_identical(monkeypatch):
    import torchslim.prune.structured as structured

    m = create_model("resnet_cifar", depth=8).eval()
    x = torch.randn(1, 3, 16, 16)
    before, y0 = _state(m), m(x)
    calls = []

    def count_macs_then_fail(model, example_input):  # plan counts once; the report's count fails
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("injected after apply")
        return 1

    monkeypatch.setattr(structured, "count_macs", count_macs_then_fail)
    with pytest.raises(RuntimeError, match="injected after apply"):
        prune_structured_(m, {"sparsity": 0.5, "keep_first_last": False}, example_input=x)
    assert len(calls) == 2
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items()) and torch.equal(m(x), y0)
    assert m.layer1[0].conv1.out_channels == 16


def test_deprecated_loader_keyword_warns_and_means_calibration():
    data = load_data("digits")
    m1, m2 = create_model("lenet300", in_features=64), create_model("lenet300", in_features=64)
    m2.load_state_dict(m1.state_dict())
    cfg = {"sparsity": 0.5, "criterion": "taylor", "round_to": 1}  # no example_input: the first batch is traced
    with pytest.warns(DeprecationWarning, match=r"prune_structured_\(..., calibration=...\)"):
        r1 = prune_structured_(m1, cfg, loader=data.loader("train", 64, shuffle=True, seed=0))
    r2 = prune_structured_(m2, cfg, calibration=data.loader("train", 64, shuffle=True, seed=0))
    assert r1.meta["structure_step"] == r2.meta["structure_step"] and r1.layers
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))


def test_swiglu_linear_chunk_prunes_both_halves_and_fixed_split_sizes_refuse():
    class SwiGLU(nn.Module):
        def __init__(self, split: bool = False):
            super().__init__()
            self.inp, self.w13, self.w2, self.out = nn.Linear(6, 6), nn.Linear(6, 16), nn.Linear(8, 6), nn.Linear(6, 2)
            self.split = split

        def forward(self, x):
            h = self.inp(x)
            g, u = self.w13(h).split([8, 8], dim=-1) if self.split else self.w13(h).chunk(2, dim=-1)
            return self.out(h + self.w2(nn.functional.silu(g) * u))

    torch.manual_seed(0)
    m, x = SwiGLU(), torch.randn(3, 6)
    ref = copy.deepcopy(m)
    r = prune_structured_(m, {"sparsity": 0.5, "round_to": 1, "targets": {"w13": {}}}, example_input=x[:1])
    kept = r.meta["structure_step"]["modules"]["w2"]["in"]
    assert r.meta["structure_step"]["modules"]["w13"]["out"] == kept + [c + 8 for c in kept] and len(kept) == 4
    with torch.no_grad():
        ref.w2.weight[:, [c for c in range(8) if c not in kept]] = 0.0
    assert torch.allclose(m(x), ref(x), atol=1e-6)
    m = SwiGLU(split=True)
    before = _state(m)
    with pytest.raises(TransformRefusedError, match="layer w13 cannot be pruned structurally: torch.split at split has sizes fixed"):
        prune_structured_(m, {"sparsity": 0.5, "round_to": 1, "targets": {"w13": {}}}, example_input=x[:1])
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
