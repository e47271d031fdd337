"""Quantized weights in a .tslim file: stored as their integers, loaded to the same outputs."""

import pytest
import torch

import torchslim as ts
from torchslim.encode.tslim import QUANTIZED, quantized_offers
from torchslim.io.tslim import model as tslim_model
from torchslim.io.tslim.codecs import CODECS
from torchslim.io.tslim.format import parse
from torchslim.io.tslim.inspect import layer_table


@pytest.mark.parametrize(
    "config",
    [
        {"mode": "static", "weight": {"bits": 8, "granularity": "channel"}},
        {"mode": "weight_only", "weight": {"bits": 4, "granularity": "tensor"}},
        {"mode": "static", "weight": {"bits": 4}, "learn_scale": True},
    ],
    ids=["w8a8-channel", "w4-tensor", "w4a8-lsq"],
)
def test_pruned_quantized_models_store_their_integers_and_load_identical(tmp_path, config):
    data = ts.load_data("digits")
    torch.manual_seed(0)
    model = ts.create_model("lenet300", in_features=64)
    ts.finetune(model, data, {"epochs": 2, "lr": 0.1}, progress=False)
    ts.prune_(model, {"sparsity": 0.8, "keep_first_last": False})
    ts.quantize_(model, config, calibration=data.loader("train", 64))
    model.eval()
    path = ts.save(model, tmp_path / "q.tslim", arch={"model": "zoo:lenet300", "args": {"in_features": 64}})
    f = parse(path.read_bytes())
    encs = {r["name"]: r["enc"] for r in f.records}
    assert encs["fc1.weight"] == "quantized" and encs["fc1.weight_mask"] == "support_of"
    bits = config["weight"]["bits"]
    # integers Huffman-coded with relative indices: well under the weight's bit width per weight kept
    row = next(r for r in layer_table(f) if r.layer == "fc1")
    assert row.weight_bits < bits + 0.5 and row.index_bits < 3.0
    kept = row.weights * row.kept
    assert row.bytes <= kept * (bits + 0.5 + 3.0) / 8 + 8 * 300 + 256  # + per-channel scale and zero point, tables
    restored = ts.load(path)  # a fresh float lenet300 gets the quantized structure back
    x, _ = next(iter(data.loader("test", 256)))
    assert torch.equal(model(x), restored(x))
    assert type(restored.fc1).__name__ == "QuantLinear"


def test_the_quantized_codec_is_registered_and_offered_only_for_quantized_models():
    assert CODECS.get("quantized") is QUANTIZED and QUANTIZED.derived
    model = ts.create_model("lenet300", in_features=64)
    assert quantized_offers(model, "huffman") == {}
    ts.quantize_(model, {"mode": "weight_only", "weight": {"bits": 4}})
    offers = quantized_offers(model, "huffman")
    assert sorted(offers) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    record, target = offers["fc1.weight"]
    assert record.enc == "quantized" and record.info["of"] == "fc1.weight_fq" and target.shape == model.fc1.weight.shape


def test_without_the_offers_a_quantized_model_is_stored_raw_and_still_loads(tmp_path):
    torch.manual_seed(0)
    model = ts.create_model("lenet300", in_features=64)
    ts.quantize_(model, {"mode": "weight_only", "weight": {"bits": 4}})
    model.eval()
    path = tslim_model.save(model, tmp_path / "q.tslim", arch={"model": "zoo:lenet300", "args": {"in_features": 64}})
    encs = {r["name"]: r["enc"] for r in parse(path.read_bytes()).records}
    assert encs["fc1.weight"] == "raw"
    assert path.stat().st_size > ts.save(model, tmp_path / "small.tslim").stat().st_size
    x = torch.randn(4, 64)
    assert torch.equal(ts.load(path)(x), model(x))
