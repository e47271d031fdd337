"""Quantization of any model: Hugging Face BERT with dict batches, nn.MultiheadAttention, Embedding + GRU/LSTM,
ReLU6 networks; every parameter quantized or skipped with its reason; export and ONNX Runtime against the simulation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from torchslim.deploy import OrtModel, export_fp32, export_qdq
from torchslim.quant import quantize_
from torchslim.quant.attention import QuantMultiheadAttention
from torchslim.quant.coverage import unaccounted_parameters
from torchslim.quant.metrics import comparable_output
from torchslim.quant.ptq import quant_info, rebuild_quantized
from torchslim.quant.weight_only import QuantEmbedding, QuantGRU, QuantLSTM
from torchslim.report import Report, SkippedLayer
from torchslim.testing.architectures import TextModel, TorchEncoder

STATIC = {"mode": "static", "guard": {"enabled": False}}


class TinyViT(nn.Module):
    """Patch conv, class token and positions held by the model itself, pre-LN blocks on nn.MultiheadAttention."""

    def __init__(self, d: int = 32, heads: int = 4, depth: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, 4)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, 17, d) * 0.02)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"ln1": nn.LayerNorm(d), "attn": nn.MultiheadAttention(d, heads, batch_first=True),
                           "ln2": nn.LayerNorm(d), "mlp": nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))})
            for _ in range(depth)
        )
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        for b in self.blocks:
            h = b["ln1"](x)
            x = x + b["attn"](h, h, h, need_weights=False)[0]
            x = x + b["mlp"](b["ln2"](x))
        return self.head(self.norm(x[:, 0]))


def _bert() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32)
    return transformers.BertModel(config).eval()


def _token_batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (8, 12), generator=g)
    mask = torch.ones(8, 12, dtype=torch.long)
    mask[::2, 8:] = 0  # padded sentences
    return {"input_ids": ids, "attention_mask": mask}


def _ort_close(model: nn.Module, proto: object, x: object) -> tuple[float, float]:
    """(max |ONNX Runtime - simulation| / max |simulation|, top-1 agreement) on ``x``."""
    with torch.no_grad():
        sim = model(**x) if isinstance(x, dict) else model(x)
    out = OrtModel(proto, threads=1)(x)
    ref = comparable_output(sim)[0]
    got = out[0] if isinstance(out, tuple) else out
    return float((got - ref).abs().max() / ref.abs().max()), float((got.argmax(-1) == ref.argmax(-1)).float().mean())


def test_bert_model_with_dict_batches_quantizes_exports_and_matches_onnx_runtime() -> None:
    model = _bert()
    report = quantize_(model, STATIC, calibration=[_token_batch(i) for i in range(4)])
    kinds = {layer.name: layer.kind for layer in report.layers}
    assert kinds["embeddings.word_embeddings"] == "Embedding" and kinds["encoder.layer.0.attention.self.query"] == "Linear"
    assert report.meta["output_compared"] == "last_hidden_state" and report.meta["output_sqnr_db"] > 20
    assert unaccounted_parameters(model, report) == []
    assert all(s.reason.startswith("LayerNorm: normalisation") for s in report.skipped)
    proto = export_qdq(model, _token_batch(0))
    rel, _ = _ort_close(model, proto, _token_batch(99))
    assert rel < 1e-5  # the int8 graph computes the simulation


def test_multihead_attention_is_quantized_and_exports() -> None:
    torch.manual_seed(0)
    model = TinyViT().eval()
    float_model = copy.deepcopy(model)
    x = torch.randn(16, 3, 16, 16)
    proto_fp32 = export_fp32(model, x[:1])  # the fast path is off while exporting (it used to fail here)
    assert torch.backends.mha.get_fastpath_enabled()
    rel_fp32, _ = _ort_close(model, proto_fp32, x)
    assert rel_fp32 < 1e-5
    report = quantize_(model, STATIC, calibration=[torch.randn(16, 3, 16, 16) for _ in range(4)])
    attn = next(layer for layer in report.layers if layer.name == "blocks.0.attn")
    assert attn.details["weights"] == ["in_proj_weight", "out_proj.weight"] and attn.details["act_bits"] == 8
    assert isinstance(model.blocks[0]["attn"], QuantMultiheadAttention) and attn.params == 4 * 32 * 32
    assert unaccounted_parameters(model, report) == []
    skipped = {s.name: s.reason for s in report.skipped}
    assert skipped[""] == "TinyViT: no quantized version of this layer; parameters (cls, pos) kept in float"
    with torch.no_grad():
        ref, sim = float_model(x), model(x)
    assert float(((ref - sim) ** 2).sum() / (ref**2).sum()) < 0.05  # the simulation is near the float model
    proto = export_qdq(model, x[:1])
    assert sum(n.op_type == "DequantizeLinear" for n in proto.graph.node) >= 8
    rel, agree = _ort_close(model, proto, x)
    assert agree >= 0.99 and rel < 0.05  # a rounding boundary or two apart: one step, not a different model


@pytest.mark.parametrize("mode", ["weight_only", "static"])
def test_torch_transformer_encoder_runs_its_quantized_layers(mode: str) -> None:
    """PyTorch's ``nn.TransformerEncoder`` in eval mode without gradients takes a fused kernel that reads the layers'
    float weights and never calls them: quantize_ keeps it off that path, so the quantized layers are the ones that
    run (2-bit weights move the output), static calibration observes every point, and the model rebuilds."""
    torch.manual_seed(0)
    model = TorchEncoder().eval()
    ids = [torch.randint(1, 100, (4, 12), generator=torch.Generator().manual_seed(s)) for s in range(4)]
    with torch.no_grad():
        ref = model(ids[0])
    report = quantize_(model, {**STATIC, "mode": mode, "weight": {"bits": 2}}, calibration=ids)
    assert report.meta["fused_path_off"] == ["enc.layers.0", "enc.layers.1"]
    with torch.no_grad():
        out = model(ids[0])
    assert float((out - ref).abs().max()) > 0.05  # 2-bit weights: the quantized layers ran
    layers = {r.name for r in report.layers}
    assert {"enc.layers.0.self_attn", "enc.layers.0.linear1", "enc.layers.1.linear2"} <= layers
    rebuilt = TorchEncoder().eval()
    rebuild_quantized(rebuilt, quant_info(model), model.state_dict())
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(ids[0]), out, rtol=0, atol=0)


@pytest.mark.parametrize("rnn", [nn.GRU, nn.LSTM])
def test_embedding_and_recurrent_layers_quantize_weight_only_and_export(rnn: type[nn.Module]) -> None:
    torch.manual_seed(0)
    model = TextModel(rnn).eval()
    float_model = copy.deepcopy(model)
    batches = [torch.randint(0, 100, (8, 10)) for _ in range(4)]
    report = quantize_(model, STATIC, calibration=batches)
    details = {layer.name: layer.details for layer in report.layers}
    assert isinstance(model.emb, QuantEmbedding) and isinstance(model.rnn, (QuantGRU, QuantLSTM))
    assert details["emb"]["act_bits"] is None and details["emb"]["note"].startswith("weight-only: one scale per row")
    assert details["rnn"]["weights"] == ["weight_ih_l0", "weight_hh_l0"] and details["fc"]["act_bits"] == 8
    assert model.emb.weight_fq.qparams().scale.shape == (100,)
    assert report.skipped == [] and unaccounted_parameters(model, report) == []
    x = torch.randint(0, 100, (8, 10))
    with torch.no_grad():
        assert float((float_model(x) - model(x)).abs().max()) < 0.05
    proto = export_qdq(model, batches[0])
    tables = [i for i in proto.graph.initializer if tuple(i.dims) == (100, 16)]
    assert [t.data_type for t in tables] == [3]  # the embedding table is stored as int8
    rel, _ = _ort_close(model, proto, x)
    assert rel < 1e-5


def test_a_quantized_text_model_rebuilds_from_its_record() -> None:
    torch.manual_seed(0)
    model = TextModel(nn.GRU).eval()
    quantize_(model, {"mode": "weight_only"})
    fresh = TextModel(nn.GRU).eval()
    rebuild_quantized(fresh, quant_info(model), model.state_dict())
    fresh.load_state_dict(model.state_dict())
    x = torch.randint(0, 100, (4, 6))
    assert torch.equal(fresh(x), model(x))


def test_unaccounted_parameters_names_what_no_entry_covers() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.PReLU(), nn.Sequential(nn.Linear(2, 2)))
    report = Report(title="t", technique="t", layers=[], skipped=[SkippedLayer("0", "x"), SkippedLayer("2", "y")])
    assert unaccounted_parameters(model, report) == ["1.weight"]
    weight_only = quantize_(copy.deepcopy(model), {"mode": "weight_only"})
    assert [(s.name, s.reason) for s in weight_only.skipped] == [
        ("1", "PReLU: no quantized version of this layer; parameters (weight) kept in float")]


def test_relu6_outputs_are_quantized_after_the_clamp_only() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(inplace=True),
                          nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).eval()
    for bn in (model[1], model[4]):  # wide pre-activation ranges, as MobileNetV2's folded depthwise convs have
        bn.running_var.fill_(0.01)
    x = torch.randn(8, 3, 8, 8)
    report = quantize_(model, STATIC, calibration=[x, torch.randn(8, 3, 8, 8)])
    points = report.meta["activation_placement"]["points"]
    assert {"_2", "_5"} <= set(points) and not {"_0", "_3"} & set(points)  # after each ReLU6, never before it
    acts = report.meta["activations"]
    assert all(acts[p]["zero_point"] == 0 and acts[p]["scale"] * 255 <= 6.0 + 1e-6 for p in ("_2", "_5"))
    proto = export_qdq(model, x[:1])
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    clips = [n for n in proto.graph.node if n.op_type == "Clip"]
    assert clips and all(producers[n.input[0]] == "Conv" for n in clips)  # no QuantizeLinear between Conv and Clip
    assert _ort_close(model, proto, x)[0] < 1e-5
