"""Channel pruning through concatenated grouped/depthwise branches, squeeze-excite gates, residuals across a concat,
MobileNetV3 blocks and attention built on nn.MultiheadAttention; beside Torch-Pruning where it is installed."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchslim.errors import TransformRefusedError
from torchslim.graph.mha import PrunedMultiheadAttention
from torchslim.measure import count_macs
from torchslim.prune.channels import dense_attention
from torchslim.prune.structured import prune_structured_
from torchslim.testing.architectures import ConcatSE
from torchslim.train import load_checkpoint, save_checkpoint


class MobileNetV3Block(nn.Module):
    """Hardswish expansion, depthwise conv, Hardsigmoid squeeze-excite, projection, residual; a Linear SE gate
    reshaped with view (the other common way to write it)."""

    def __init__(self, c: int = 16, e: int = 64, linear_se: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 2, 1), nn.BatchNorm2d(c), nn.Hardswish())
        self.exp = nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(e, e, 3, 1, 1, groups=e, bias=False), nn.BatchNorm2d(e), nn.Hardswish())
        self.linear_se = linear_se
        se = nn.Linear if linear_se else (lambda i, o: nn.Conv2d(i, o, 1))
        self.fc1, self.fc2 = se(e, e // 4), se(e // 4, e)
        self.proj = nn.Sequential(nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))
        self.head = nn.Sequential(nn.Conv2d(c, 64, 1), nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x):
        x = self.stem(x)
        h = self.dw(self.exp(x))
        if self.linear_se:
            s = F.hardsigmoid(self.fc2(F.relu(self.fc1(h.mean((2, 3))))))
            h = h * s.view(s.shape[0], s.shape[1], 1, 1)
        else:
            h = h * F.hardsigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(h, 1)))))
        return self.head(x + self.proj(h))


class MHAViT(nn.Module):
    """Patches → (pre-norm nn.MultiheadAttention + MLP) blocks, or nn.TransformerEncoderLayer blocks → mean → head."""

    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 4, torch_layers: bool = False) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.torch_layers = torch_layers
        if torch_layers:
            self.blocks = nn.ModuleList([nn.TransformerEncoderLayer(dim, heads, 64, dropout=0.0, batch_first=True) for _ in range(depth)])
        else:
            self.attn = nn.ModuleList([nn.MultiheadAttention(dim, heads, batch_first=True) for _ in range(depth)])
            self.norm = nn.ModuleList([nn.LayerNorm(dim) for _ in range(depth)])
            self.mlp = nn.ModuleList([nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim)) for _ in range(depth)])
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        if self.torch_layers:
            for block in self.blocks:
                t = block(t)
        else:
            for attn, norm, mlp in zip(self.attn, self.norm, self.mlp):
                h = norm(t)
                t = t + attn(h, h, h, need_weights=False)[0]
                t = t + mlp(t)
        return self.head(t.mean(1))


def macs(model, x):
    with dense_attention():
        return count_macs(model, x)


def tp_macs(model, x, ratio):
    """Torch-Pruning's MACs at ``ratio`` (L2 magnitude, the last Linear kept); infinity when it is not installed."""
    try:
        import torch_pruning as tp
    except ImportError:
        return float("inf")
    model = copy.deepcopy(model)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio, ignored_layers=[last]).step()
    return macs(model, x)


def zero_removed(ref, step):
    """The unpruned reference with every removed output channel's producer zeroed (conv/linear rows and bias,
    BatchNorm scale and shift): each removed channel is then exactly 0 wherever it goes."""
    with torch.no_grad():
        for name, dims in step["modules"].items():
            mod = ref.get_submodule(name)
            if "out" not in dims or isinstance(mod, (nn.LayerNorm, nn.MultiheadAttention)):
                continue
            n = mod.weight.shape[0]
            gone = [i for i in range(n) if i not in set(dims["out"])]
            mod.weight[gone] = 0.0
            if mod.bias is not None:
                mod.bias[gone] = 0.0


BLOCKS = {
    "concat_se": (ConcatSE, (3, 16, 16)),
    "mobilenet_v3": (MobileNetV3Block, (3, 32, 32)),
    "mobilenet_v3_linear_se": (lambda: MobileNetV3Block(linear_se=True), (3, 32, 32)),
}


@pytest.mark.parametrize("key", list(BLOCKS))
def test_branches_gates_and_residuals_prune_exactly_with_the_macs_of_torch_pruning(key, tmp_path):
    make, shape = BLOCKS[key]
    torch.manual_seed(0)
    model = make().eval()
    ref, fresh_state = copy.deepcopy(model), copy.deepcopy(model.state_dict())
    x = torch.randn(1, *shape)
    macs0 = macs(model, x)
    report = prune_structured_(model, {"sparsity": 0.5, "keep_first_last": False, "round_to": 1}, example_input=x)
    assert [s.reason for s in report.skipped] == [
        "partly pruned (see its layer row); this group's channels were kept: frozen: reaches the model output"
    ]
    ratio = macs(model, x) / macs0
    assert ratio < 0.4  # the whole block shrinks, not only the squeeze-excite's hidden layer
    xs = torch.randn(3, *shape)
    zero_removed(ref, report.meta["structure_step"])
    with torch.no_grad():
        assert torch.allclose(model(xs), ref(xs), atol=1e-5)
    if key == "concat_se":
        g = model.grouped[0]
        assert g.groups == 4 and g.in_channels == 16 and g.out_channels == 8 and model.dw[0].groups == 8
    save_checkpoint(model, tmp_path / "ck")  # the structure step replays on a fresh instance
    fresh = make().eval()
    fresh.load_state_dict(fresh_state)
    load_checkpoint(fresh, tmp_path / "ck")
    with torch.no_grad():
        assert torch.equal(fresh(xs), model(xs))
    assert ratio <= 1.1 * tp_macs(make().eval(), x, 0.5) / macs0


@pytest.mark.parametrize("torch_layers", [False, True])
def test_vit_on_multihead_attention_prunes_width_heads_features_and_mlp(torch_layers):
    torch.manual_seed(0)
    model = MHAViT(torch_layers=torch_layers).eval()
    x = torch.randn(1, 3, 16, 16)
    xs = torch.randn(4, 3, 16, 16)
    macs0 = macs(model, x)
    r = prune_structured_(model, {"sparsity": 0.5, "keep_first_last": False, "round_to": 1}, example_input=x)
    attn = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    assert all(isinstance(m, PrunedMultiheadAttention) and (m.embed_dim, m.num_heads, m.head_dim) == (16, 4, 4) for m in attn)
    with torch.no_grad():
        assert model(xs).shape == (4, 10)
    ratio = macs(model, x) / macs0
    assert ratio < 0.35 and r.meta["macs_after"] < r.meta["macs_before"]
    assert ratio <= 1.1 * tp_macs(MHAViT(torch_layers=torch_layers).eval(), x, 0.5) / macs0


@pytest.mark.parametrize("torch_layers", [False, True])
def test_heads_of_multihead_attention_are_removed_exactly(torch_layers):
    torch.manual_seed(0)
    model = MHAViT(torch_layers=torch_layers).eval()
    ref = copy.deepcopy(model)
    x = torch.randn(2, 3, 16, 16)
    r = prune_structured_(model, {"granularity": "head", "sparsity": 0.5}, example_input=x[:1])
    with torch.no_grad():
        for name, kept in r.meta["structure_step"]["heads"].items():
            gone = [h * 8 + i for h in range(4) if h not in kept for i in range(8)]
            ref.get_submodule(name).out_proj.weight[:, gone] = 0.0
        assert torch.allclose(model(x), ref(x), atol=1e-5)
    assert all(m.num_heads == 2 for m in model.modules() if isinstance(m, nn.MultiheadAttention))
    assert macs(model, x[:1]) < macs(ref, x[:1])


def test_grouped_conv_prunes_inside_its_groups_and_a_one_channel_group_input_refuses():
    class G(nn.Module):
        def __init__(self, multiplier: bool = False):
            super().__init__()
            self.a = nn.Conv2d(3, 16, 3)
            self.g = nn.Conv2d(16, 32 if multiplier else 16, 3, groups=16 if multiplier else 4)
            self.b = nn.Conv2d(32 if multiplier else 16, 8, 1)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.b(self.g(self.a(x))).mean((2, 3)))

    torch.manual_seed(0)
    m, x = G().eval(), torch.randn(2, 3, 8, 8)
    ref = copy.deepcopy(m)
    r = prune_structured_(m, {"sparsity": 0.5, "round_to": 1, "targets": {"a": {}, "g": {}}}, example_input=x[:1])
    assert (m.a.out_channels, m.g.in_channels, m.g.out_channels, m.g.groups, m.b.in_channels) == (8, 8, 8, 4, 8)
    kept_in = r.meta["structure_step"]["modules"]["g"]["in"]
    assert len({tuple(k - j * 4 for k in kept_in if j * 4 <= k < j * 4 + 4) for j in range(4)}) == 1  # alike in every group
    zero_removed(ref, r.meta["structure_step"])
    with torch.no_grad():
        assert torch.allclose(m(x), ref(x), atol=1e-5)
    # a depthwise multiplier (one input channel per group): its input cannot shrink; naming the producer refuses
    m = G(multiplier=True)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(TransformRefusedError, match=r"layer a cannot be pruned structurally: grouped convolution g \(groups=16\) reads 1 channel"):
        prune_structured_(m, {"sparsity": 0.5, "targets": {"a": {}}}, example_input=x[:1])
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    r = prune_structured_(m, {"sparsity": 0.5, "round_to": 1, "keep_first_last": False}, example_input=x[:1])
    assert m.g.groups == 16 and m.g.out_channels == 16 and m.a.out_channels == 16


class SplitGLU(nn.Module):
    """A SwiGLU Linear cut by ``split(out_features // 2)`` (or by a hard-coded size, which pruning must refuse)."""

    def __init__(self, hard_coded: bool = False) -> None:
        super().__init__()
        self.inp, self.w13, self.w2, self.out = nn.Linear(6, 8), nn.Linear(8, 32), nn.Linear(16, 8), nn.Linear(8, 2)
        self.hard_coded = hard_coded

    def forward(self, x):
        h = self.inp(x)
        g, u = self.w13(h).split(16 if self.hard_coded else self.w13.out_features // 2, dim=-1)
        return self.out(h + self.w2(F.silu(g) * u))


def test_a_split_into_equal_halves_prunes_like_chunk_and_a_hard_coded_size_refuses_untouched():
    torch.manual_seed(0)
    model, x = SplitGLU().eval(), torch.randn(3, 6)
    ref = copy.deepcopy(model)
    r = prune_structured_(model, {"sparsity": 0.5, "round_to": 1, "targets": {"w13": {}}}, example_input=x[:1])
    kept = r.meta["structure_step"]["modules"]["w2"]["in"]
    assert len(kept) == 8 and r.meta["structure_step"]["modules"]["w13"]["out"] == kept + [c + 16 for c in kept]
    with torch.no_grad():
        ref.w2.weight[:, [c for c in range(16) if c not in kept]] = 0.0
        assert torch.allclose(model(x), ref(x), atol=1e-6)
    model = SplitGLU(hard_coded=True).eval()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(TransformRefusedError, match="breaks the model's forward pass"):
        prune_structured_(model, {"sparsity": 0.5, "round_to": 1, "targets": {"w13": {}}}, example_input=x[:1])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and model.w13.out_features == 32


class TokenNet(nn.Module):
    """Patches, a class token expanded over the batch and positions held by the model (joined by cat and add), a
    residual MLP, then the class token read by ``x[:, 0]``: no norm, so pruning equals zeroing the channels."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, 17, d))
        self.fc1, self.fc2, self.head = nn.Linear(d, 2 * d), nn.Linear(2 * d, d), nn.Linear(d, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        x = x + self.fc2(F.gelu(self.fc1(x)))
        return self.head(x[:, 0])


def test_a_class_token_and_positions_held_by_the_model_are_cut_with_the_stream_exactly(tmp_path):
    torch.manual_seed(0)
    model = TokenNet().eval()
    ref, fresh_state = copy.deepcopy(model), copy.deepcopy(model.state_dict())
    x, xs = torch.randn(1, 3, 16, 16), torch.randn(3, 3, 16, 16)
    r = prune_structured_(model, {"sparsity": 0.5, "keep_first_last": False, "round_to": 1}, example_input=x)
    step = r.meta["structure_step"]
    assert [s.reason for s in r.skipped] == [
        "partly pruned (see its layer row); this group's channels were kept: frozen: reaches the model output"
    ]
    assert model.patch.out_channels == 8 and model.cls.shape == (1, 1, 8) and model.pos.shape == (1, 17, 8)
    assert step["params"]["cls"] == step["params"]["pos"] == step["modules"]["patch"]["out"] == step["modules"]["head"]["in"]
    zero_removed(ref, step)
    with torch.no_grad():
        gone = [i for i in range(16) if i not in step["params"]["cls"]]
        ref.cls[..., gone] = 0.0
        ref.pos[..., gone] = 0.0
        assert torch.allclose(model(xs), ref(xs), atol=1e-5)
    save_checkpoint(model, tmp_path / "ck")  # the parameters' cut replays on a fresh instance
    fresh = TokenNet().eval()
    fresh.load_state_dict(fresh_state)
    load_checkpoint(fresh, tmp_path / "ck")
    with torch.no_grad():
        assert torch.equal(fresh(xs), model(xs))
    assert macs(model, x) < 0.6 * macs(ref, x)
