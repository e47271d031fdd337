import pytest
import torch
from torch import nn

from torchslim.graph.deps import dependency_groups
from torchslim.zoo import create_model


def members(g):
    return sorted((m.module, m.role) for m in g.members)


def test_resnet_residual_stream_is_one_group_and_output_is_frozen():
    d = dependency_groups(create_model("resnet_cifar", depth=20, in_channels=1), torch.randn(1, 1, 28, 28))
    stage2 = [g for g in d.groups if ("layer2.0.conv2", "out") in members(g)][0]
    outs = {m for m, r in members(stage2) if r == "out"}
    assert outs == {"layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2", "layer2.0.shortcut.0"}
    assert stage2.prunable and stage2.channels == 32
    fc = [g for g in d.groups if ("fc", "out") in members(g)][0]
    assert fc.frozen == "reaches the model output"


def test_flatten_to_linear_and_concat_offsets():
    d = dependency_groups(create_model("lenet5"), torch.randn(1, 1, 28, 28))
    g = [g for g in d.groups if ("conv2", "out") in members(g)][0]
    fc1 = [m for m in g.members if m.module == "fc1"][0]
    assert fc1.role == "in" and fc1.inner == 16  # 50 channels x 4x4

    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1)
            self.c = nn.Conv2d(10, 5, 1)
            self.fc = nn.Linear(5, 2)

        def forward(self, x):
            return self.fc(self.c(torch.cat([self.a(x), self.b(x)], 1)).mean((2, 3)))

    d = dependency_groups(Cat(), torch.randn(1, 3, 4, 4))
    ga = [g for g in d.groups if ("a", "out") in members(g)][0]
    gb = [g for g in d.groups if ("b", "out") in members(g)][0]
    assert [m.offset for m in ga.members if m.module == "c"] == [0]
    assert [m.offset for m in gb.members if m.module == "c"] == [4]


def test_unknown_ops_freeze_instead_of_guessing():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(8, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(torch.roll(h, 1, dims=-1))

    d = dependency_groups(Odd(), torch.randn(1, 4))
    g = [g for g in d.groups if ("a", "out") in members(g)][0]
    assert not g.prunable and "roll" in g.frozen


def test_a_squeeze_excite_gate_follows_the_tensor_it_scales_and_a_residual_lines_up_across_a_concat():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 1)
            self.a, self.b = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)
            self.se1, self.se2 = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            x = self.stem(x)
            y = torch.cat([self.a(x), self.b(x)], 1)
            y = y * torch.sigmoid(self.se2(torch.relu(self.se1(y.mean((2, 3), keepdim=True)))))
            return self.head((x + y).mean((2, 3)))

    d = dependency_groups(Block(), torch.randn(1, 3, 4, 4))
    stream = [g for g in d.groups if g.prunable and "stem" in g.producers]
    # the residual x + cat(a, b) cuts the stem's channels in two halves: a's with the first, b's with the second
    assert sorted(sorted(g.producers) for g in stream) == [["a", "se2", "stem"], ["b", "se2", "stem"]]
    assert all(g.channels == 4 for g in stream)
    assert sorted(m.offset for g in stream for m in g.members if m.module == "se2") == [0, 4]


def test_a_grouped_convolution_couples_position_c_of_every_group():
    class G(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.g, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1, groups=2), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.b(self.g(self.a(x)))

    d = dependency_groups(G(), torch.randn(1, 3, 4, 4))
    inputs = next(g for g in d.groups if "a" in g.producers)
    assert inputs.channels == 4 and [(m.module, m.role, m.offset) for m in inputs.members] == [("a", "out", 0), ("a", "out", 4), ("g", "in", 0), ("g", "in", 4)]
    outputs = next(g for g in d.groups if "g" in g.producers)
    assert outputs.channels == 2 and [(m.module, m.offset) for m in outputs.members] == [("g", 0), ("g", 2), ("b", 0), ("b", 2)]


def test_transpose_and_a_transformer_encoder_layer_keep_the_stream_prunable():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = nn.Conv2d(3, 8, 2, 2)
            self.layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.layer(self.patch(x).flatten(2).transpose(1, 2)).mean(1))

    d = dependency_groups(Tiny(), torch.randn(1, 3, 4, 4))
    stream = next(g for g in d.groups if "patch" in g.producers)
    assert stream.prunable and {m.module for m in stream.members} >= {"layer.self_attn", "layer.norm1", "layer.linear2", "head"}
    assert next(g for g in d.groups if "layer.linear1" in g.producers).channels == 16  # the feed-forward hidden channels
    inner = next(g for g in d.groups if any(m.role == "mha_inner" for m in g.members))
    assert inner.channels == 4 and [m.offset for m in inner.members] == [0, 4]  # feature i of both heads


def test_a_spatial_gate_of_one_channel_leaves_the_channels_it_scales_prunable():
    class Spatial(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.map, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 1, 3, padding=1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            h = self.a(x)
            return self.b(h * torch.sigmoid(self.map(h)))

    d = dependency_groups(Spatial(), torch.randn(1, 3, 4, 4))
    g = next(g for g in d.groups if "a" in g.producers)
    assert g.prunable and sorted((m.module, m.role) for m in g.members) == [("a", "out"), ("b", "in"), ("map", "in")]


def test_an_embedding_produces_its_columns_unless_its_table_is_read_directly():
    """An Embedding feeding a stream is that stream's producer (its columns prunable, as Torch-Pruning prunes them);
    tied to an output projection (its table read through ``.weight``) the group is frozen, naming the reader."""
    from torchslim.testing.architectures import TorchEncoder

    torch.manual_seed(0)
    ids = torch.randint(1, 100, (2, 6))
    d = dependency_groups(TorchEncoder().eval(), ids)
    stream = [g for g in d.groups if ("emb", "emb") in members(g)][0]
    assert stream.prunable and stream.channels == 32
    assert {"enc.layers.0.linear1", "enc.layers.1.norm2", "head"} <= {m for m, _ in members(stream)}

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.mix = nn.Embedding(50, 16), nn.Linear(16, 16)

        def forward(self, ids):
            return nn.functional.linear(torch.relu(self.mix(self.emb(ids))), self.emb.weight)

    d = dependency_groups(Tied().eval(), ids % 50)
    group = [g for g in d.groups if ("emb", "emb") in members(g)][0]
    assert not group.prunable and "the table of emb is also read directly" in group.frozen


def test_a_parametrized_layer_freezes_its_groups_and_unstructured_pruning_names_it():
    """``weight_norm`` computes the weight from two parameters: slicing or masking it would break the
    parametrization, so its groups are frozen (naming it) and prune_ leaves it dense with the reason."""
    from torchslim.prune import prune_
    from torchslim.testing.architectures import WeightNormNet

    torch.manual_seed(0)
    model, x = WeightNormNet().eval(), torch.randn(2, 3, 8, 8)
    d = dependency_groups(model, x)
    c1 = [g for g in d.groups if ("c1", "out") in members(g)][0]
    assert not c1.prunable and c1.frozen.startswith("c1: its weight is computed by a parametrization (_WeightNorm)")
    assert [g for g in d.groups if ("c2", "out") in members(g)][0].prunable
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("c1.")}
    report = prune_(model, {"sparsity": 0.5, "keep_first_last": False})
    assert {layer.name for layer in report.layers} == {"c2", "fc"}
    reasons = {s.name: s.reason for s in report.skipped}
    assert "computed by a parametrization" in reasons["c1"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


class Optional(nn.Module):
    """``mask`` and ``scale`` default to None: called with ``x`` alone, neither branch runs."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 4)

    def forward(self, x, mask=None, scale=None):
        h = torch.relu(self.c1(x))
        if mask is not None:
            h = h * mask
        out = self.fc(torch.relu(self.c2(h)).mean((2, 3)))
        return out if scale is None else out * scale


def test_arguments_the_example_does_not_give_are_traced_at_their_defaults():
    """torch.fx traced `mask is not None` as true (a proxy is not None): the graph read a mask never given and
    the shape propagation crashed. Traced at their defaults, both branches drop out and c1 prunes."""
    from torchslim.prune.structured import prune_structured_
    from torchslim.quant import quantize_

    model, x = Optional().eval(), torch.randn(2, 3, 8, 8)
    d = dependency_groups(model, x)
    g = [g for g in d.groups if ("c1", "out") in members(g)][0]
    assert g.prunable and members(g) == [("c1", "out"), ("c2", "in")]
    pruned = Optional().eval()
    pruned.load_state_dict(model.state_dict())
    prune_structured_(pruned, {"granularity": "channel", "sparsity": 0.5, "keep_first_last": False}, example_input=x)
    assert pruned.c1.out_channels == 4 and pruned(x).shape == (2, 4)
    report = quantize_(model, {"mode": "static"}, calibration=[torch.randn(4, 3, 8, 8) for _ in range(2)])
    assert report.meta["inputs"] == ["x"] and model(x).shape == (2, 4)


def test_a_layer_called_twice_freezes_its_groups():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.body, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 2)

        def forward(self, x):
            h = torch.relu(self.body(torch.relu(self.stem(x))))
            return self.fc(torch.relu(self.body(h)).mean((2, 3)))  # the same conv on its own output

    d = dependency_groups(Twice(), torch.randn(1, 3, 8, 8))
    for g in d.groups:
        if any(m.module == "body" for m in g.members):
            assert not g.prunable
    g = [g for g in d.groups if ("stem", "out") in members(g)][0]
    assert g.frozen == "body: called 2 times in the forward (one set of weights read by several inputs)"


def test_a_shape_check_torch_fx_cannot_trace_is_answered_by_the_example_and_moves_no_statistic():
    """Hugging Face's CNNs check their input's channels in Python (``if x.shape[1] != ...``): plain torch.fx fails
    there. Concrete tracing answers the check with the example; the example's run is in eval mode."""

    class Checked(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.conv2, self.fc = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3), nn.Linear(8, 2)

        def forward(self, x):
            if x.shape[1] != self.conv.in_channels:
                raise ValueError("wrong channels")
            h = torch.relu(self.bn(self.conv(x)))
            return self.fc(torch.relu(self.conv2(h)).mean((2, 3)))

    model = Checked().train()
    stats = model.bn.running_mean.clone()
    d = dependency_groups(model, torch.randn(2, 3, 8, 8))
    g = [g for g in d.groups if ("conv", "out") in members(g)][0]
    assert g.prunable and members(g) == [("bn", "bn"), ("conv", "out"), ("conv2", "in")]
    assert torch.equal(model.bn.running_mean, stats) and model.training and type(model) is Checked


def test_a_group_norm_keeps_its_groups_equal():
    """GroupNorm(4, 16) after a conv: channel c of each group of 4 is pruned together, so every group keeps as many."""
    from torchslim.prune.structured import prune_structured_

    class GN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.gn, self.conv2, self.fc = nn.Conv2d(3, 16, 3), nn.GroupNorm(4, 16), nn.Conv2d(16, 8, 3), nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.conv2(torch.relu(self.gn(self.conv(x))))).mean((2, 3)))

    x = torch.randn(2, 3, 10, 10)
    d = dependency_groups(GN(), x)
    g = [g for g in d.groups if ("conv", "out") in members(g)][0]
    assert g.prunable and g.channels == 4 and ("gn", "bn") in members(g)
    model = GN().eval()
    prune_structured_(model, {"granularity": "channel", "sparsity": 0.5, "keep_first_last": False}, example_input=x)
    assert model.conv.out_channels == 8 and model.gn.num_channels == 8 and model.gn.weight.shape == (8,)
    assert model.conv2.in_channels == 8 and model(x).shape == (2, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise conv, LayerNorm over permuted channels, an MLP and a layer scale (a 1-D parameter) on the residual."""

    def __init__(self, c=16):
        super().__init__()
        self.dw, self.norm = nn.Conv2d(c, c, 7, padding=3, groups=c), nn.LayerNorm(c)
        self.pw1, self.pw2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.linspace(0.1, 1.0, c))

    def forward(self, x):
        y = self.pw2(torch.nn.functional.gelu(self.pw1(self.norm(self.dw(x).permute(0, 2, 3, 1)))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


def test_a_layer_scale_follows_the_residual_stream_it_scales():
    """gamma (16,) * y (N, H, W, 16) broadcasts along the channels: the stream stays prunable and gamma is cut with
    it (it froze the stream before: 'broadcasting or unknown operand')."""
    from torchslim.prune.structured import prune_structured_

    model = nn.Sequential(nn.Conv2d(3, 16, 2, stride=2), ConvNeXtBlock(), ConvNeXtBlock(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 4)).eval()
    x = torch.randn(2, 3, 16, 16)
    g = [g for g in dependency_groups(model, x).groups if ("0", "out") in members(g)][0]
    assert g.prunable and ("1", "param") in members(g) and ("2.norm", "ln") in members(g)
    prune_structured_(model, {"granularity": "channel", "sparsity": 0.5, "keep_first_last": False}, example_input=x)
    assert model[0].out_channels == 8 and model[1].gamma.shape == (8,) and model[2].norm.normalized_shape == (8,)
    assert model(x).shape == (2, 4)


def test_a_layernorm_subclass_calling_f_layer_norm_is_a_layernorm_of_the_stream():
    transformers = __import__("pytest").importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10)
    model, x = transformers.ConvNextForImageClassification(cfg).eval(), torch.randn(2, 3, 32, 32)
    g = [g for g in dependency_groups(model, x).groups if ("convnext.embeddings.patch_embeddings", "out") in members(g)][0]
    assert g.prunable and ("convnext.embeddings.layernorm", "ln") in members(g)


def test_a_data_parallel_wrapper_is_looked_through_and_its_names_kept():
    from torchslim.deploy import export_fp32
    from torchslim.prune.structured import prune_structured_

    model = nn.DataParallel(create_model("resnet_cifar", depth=8)).eval()
    x = torch.randn(2, 3, 32, 32)
    d = dependency_groups(model, x)
    assert all(m.module.startswith("module.") for g in d.groups for m in g.members)
    report = prune_structured_(model, {"granularity": "channel", "sparsity": 0.5}, example_input=x)
    assert any(layer.name.startswith("module.layer") for layer in report.layers)
    assert model.module.layer1[0].conv1.out_channels == 8 and model(x).shape == (2, 10)
    assert export_fp32(model, x).graph.input[0].name == "input"


def test_concrete_tracing_refuses_questions_on_the_data_and_leaves_the_example_and_buffers_alone():
    """Shape questions are answered by the example; questions whose answer depends on the numbers (a count of
    non-zeros, torch.equal, a boolean mask's length) are refused, or one example's branch would be baked in."""
    import torch.fx as fx

    from torchslim.graph.concrete import concrete_trace
    from torchslim.graph.trace import TraceError

    def model_with(question):
        class Q(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 1)
                self.register_buffer("seen", torch.zeros(()))

            def forward(self, x):
                self.seen += 1
                x.add_(1.0)  # in place: on the tracer's copy of the example, not the caller's
                return self.conv(x) if question(x) else -self.conv(x)
        return Q()

    x = torch.randn(1, 3, 2, 2)
    before = x.clone()
    m = model_with(lambda t: t.shape[1] == 3)
    concrete_trace(m, fx.Tracer, x)
    assert float(m.seen) == 0 and torch.equal(x, before)
    for question in (lambda t: (t > 0).nonzero().shape[0] > 3, lambda t: torch.equal(t, t * 0),
                     lambda t: len(t[t > 0]) > 3, lambda t: t.sum() > 0):
        with pytest.raises(TraceError, match="control flow on the data"):
            concrete_trace(model_with(question), fx.Tracer, x)


def test_a_dict_example_with_a_specialized_default_and_a_wrapped_root_parameter():
    class Flags(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)
            self.scale = nn.Parameter(torch.ones(16))

        def forward(self, input_ids, return_dict: bool = True):
            h = self.scale * torch.relu(self.a(input_ids))
            return self.b(h) if return_dict else -self.b(h)

    x = {"input_ids": torch.randn(2, 8)}
    g = [g for g in dependency_groups(Flags(), x).groups if ("a", "out") in members(g)][0]
    assert g.prunable and ("", "param") in members(g)
    wrapped = [g for g in dependency_groups(nn.DataParallel(Flags()), torch.randn(2, 8)).groups
               if ("module.a", "out") in members(g)][0]
    assert ("module", "param") in members(wrapped)  # the wrapped model's own parameter: 'module', not 'module.'
