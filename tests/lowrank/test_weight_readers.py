"""factorize_ on layers whose parent reads ``.weight`` directly (issue 18, acceptance 3), and its selection order."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from torchslim.errors import TransformRefusedError
from torchslim.lowrank import FACTORIZE, LowRank, factorize_, weight_read_by_parent
from torchslim.technique import Technique


class TinyAttention(nn.Module):
    """Embedding, one nn.MultiheadAttention with a residual, an FFN (low-rank weights), a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(32, 128), nn.GELU(), nn.Linear(128, 32))
        self.head = nn.Linear(32, 4)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():  # rank-4 FFN weights (plus a little noise): high energy at a low rank
            for lin in (self.ffn[0], self.ffn[2]):
                out_f, in_f = lin.weight.shape
                low = torch.randn(out_f, 4, generator=g) @ torch.randn(4, in_f, generator=g) / in_f**0.5
                lin.weight.copy_(low + 1e-4 * torch.randn(out_f, in_f, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        h = h + self.ffn(h)
        return self.head(h.mean(1))


OUT_PROJ_REASON = "its parent attn (MultiheadAttention) reads it directly (F.multi_head_attention_forward"


@pytest.mark.parametrize("config", [None, {"energy": 0.999}])
def test_attention_out_proj_is_skipped_and_the_model_still_works(config):
    torch.manual_seed(0)
    model = TinyAttention().eval()
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        ref = model(x)
    report = factorize_(model, config)
    assert [l.name for l in report.layers] == ["ffn.0", "ffn.2"]
    skipped = {s.name: s.reason for s in report.skipped}
    assert skipped["attn.out_proj"].startswith(OUT_PROJ_REASON) and "a low-rank replacement would break" in skipped["attn.out_proj"]
    assert isinstance(model.attn.out_proj, nn.Linear) and isinstance(model.ffn[0], nn.Sequential)
    with torch.no_grad():
        out = model(x)
    assert float((out - ref).norm() / ref.norm()) < 1e-3
    model.train()
    model(x).sum().backward()  # the training path (no fast path) works too


def test_naming_out_proj_in_targets_refuses_and_leaves_the_model_bit_identical():
    torch.manual_seed(0)
    model = TinyAttention().eval()
    state = copy.deepcopy(model.state_dict())
    classes = [(n, type(m)) for n, m in model.named_modules()]
    with pytest.raises(TransformRefusedError, match=r"cannot factorise attn\.out_proj: its parent attn \(MultiheadAttention\)"):
        factorize_(model, {"targets": {"attn.out_proj": {"rank": 4}, "re:ffn\\..*": {}}})
    assert [(n, type(m)) for n, m in model.named_modules()] == classes
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    # a pattern that only happens to match it skips it, with the reason
    report = factorize_(model, {"targets": {"re:.*(proj|ffn\\.\\d)": {}}, "keep_first_last": False})
    assert [l.name for l in report.layers] == ["ffn.0", "ffn.2"]
    assert [s.name for s in report.skipped if s.reason.startswith(OUT_PROJ_REASON)] == ["attn.out_proj"]


def test_transformer_encoder_layers_are_protected_on_their_fast_path():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    model = nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Linear(32, 32)).eval()
    readers = weight_read_by_parent(model)
    assert sorted(readers) == sorted(
        f"0.layers.{i}.{n}" for i in range(2) for n in ("self_attn.out_proj", "linear1", "linear2")
    )
    x = torch.randn(2, 6, 32)
    encoder = copy.deepcopy(model[0])
    with torch.no_grad():
        ref = model(x)
    report = factorize_(model, {"rank": 8, "keep_first_last": False})
    assert [l.name for l in report.layers] == ["1"]
    with torch.no_grad():  # eval + no grad: the encoder's fast path reads linear1.weight, out_proj.weight
        out = model(x)
        torch.testing.assert_close(model[0](x), encoder(x), rtol=0, atol=0)  # the encoder itself is untouched
    assert out.shape == ref.shape and bool(torch.isfinite(out).all())


def test_selection_order_and_technique():
    assert isinstance(FACTORIZE, Technique) and FACTORIZE.name == "factorize"
    # a depthwise first layer is reported as depthwise (why it can never be factorised), not as "first layer kept"
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Flatten(), nn.Linear(8, 64), nn.Linear(64, 64), nn.Linear(64, 4))
    report = factorize_(model, {"rank": 2})
    assert [(s.name, s.reason.split(" (")[0]) for s in report.skipped] == [
        ("0", "grouped/depthwise convolution"),
        ("4", "last layer kept"),
    ]
    assert [l.name for l in report.layers] == ["2", "3"]


class Readers(nn.Module):
    """Code that reads more than a layer's output: a head count from ``q.out_features``, a decoder tied to
    ``enc.weight`` transposed, a conv's weight passed to ``F.conv2d`` again (issue 20, item 5)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.q = nn.Linear(16, 16)
        self.enc = nn.Linear(16, 32)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x) + nn.functional.conv2d(x, self.conv.weight, self.conv.bias, padding=1)
        t = h.mean((2, 3))
        heads = self.q.out_features // 4
        t = self.q(t).view(-1, heads, 4).flatten(1)
        t = nn.functional.linear(torch.tanh(self.enc(t)), self.enc.weight.t())
        return self.head(t)


def test_a_factorised_layer_keeps_its_attributes_and_a_weight_its_readers_use():
    torch.manual_seed(0)
    model = Readers().eval()
    x = torch.randn(2, 3, 8, 8)
    report = factorize_(model, {"ratio": 0.9, "keep_first_last": False})
    assert sorted(l.name for l in report.layers) == ["conv", "enc", "head", "q"]
    assert isinstance(model.q, LowRank) and (model.q.in_features, model.q.out_features) == (16, 16)
    assert model.conv.kernel_size == (3, 3) and model.conv.out_channels == 16
    dense_conv = nn.functional.conv2d(x, model.conv.weight, model.conv.bias, padding=1)
    torch.testing.assert_close(model.conv(x), dense_conv, rtol=1e-4, atol=1e-5)  # weight: the product of the factors
    enc = model.enc
    torch.testing.assert_close(enc.weight, enc[1].weight @ enc[0].weight)
    assert enc.bias is enc[1].bias
    out = model(x)  # forward and backward through the readers
    out.sum().backward()
    assert out.shape == (2, 4) and enc[0].weight.grad is not None


def test_a_layer_tied_to_an_embedding_is_skipped_and_refused_when_named():
    class TiedHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.mid, self.head = nn.Embedding(50, 16), nn.Linear(16, 16), nn.Linear(16, 50, bias=False)
            self.head.weight = self.emb.weight  # a language model's tied output head

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.mid(self.emb(ids))))

    torch.manual_seed(0)
    model = TiedHead().eval()
    params = sum(p.numel() for p in model.parameters())
    report = factorize_(model, {"rank": 2, "keep_first_last": False})
    assert [l.name for l in report.layers] == ["mid"] and model.head.weight is model.emb.weight
    assert {s.name: s.reason for s in report.skipped}["head"].startswith("its weight is tied to emb.weight (the same tensor)")
    assert sum(p.numel() for p in model.parameters()) < params
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(TransformRefusedError, match=r"cannot factorise head: its weight is tied to emb\.weight"):
        factorize_(model, {"targets": {"head": {"rank": 2}}})
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items()) and model.head.weight is model.emb.weight


def test_gpt2_conv1d_layers_factorise_and_read_back_as_conv1d():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 100, (2, 8))
    params = sum(p.numel() for p in model.parameters())
    report = factorize_(model, {"keep_first_last": False}, example_input=ids)
    names = [l.name for l in report.layers]
    assert "transformer.h.0.attn.c_attn" in names and "transformer.h.1.mlp.c_fc" in names and "lm_head" not in names
    assert {s.name: s.reason for s in report.skipped}["lm_head"].startswith("its weight is tied to transformer.wte.weight")
    c_attn = model.transformer.h[0].attn.c_attn
    assert isinstance(c_attn, LowRank) and (c_attn.nx, c_attn.nf) == (32, 96) and c_attn.weight.shape == (32, 96)
    x = torch.randn(3, 32)
    torch.testing.assert_close(c_attn(x), torch.addmm(c_attn.bias, x, c_attn.weight), rtol=1e-4, atol=1e-5)  # Conv1D's own formula
    with torch.no_grad():
        out = model(ids).logits
    assert out.shape == (2, 8, 100) and bool(torch.isfinite(out).all()) and sum(p.numel() for p in model.parameters()) < params
