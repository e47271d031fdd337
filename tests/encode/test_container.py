"""The .tslim container: bit-exact round trips, compactness, and clear errors on every kind of damage."""

import hashlib
import json
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim.encode.container import FORMAT_VERSION, MAGIC, TslimFormatError, encode_model, layer_table, parse
from torchslim.encode.kmeans import iter_shared, share_weights_
from torchslim.prune.mask import iter_masks


def _compressed_lenet300(sparsity=0.9, bits=5):
    torch.manual_seed(0)
    model = ts.create_model("lenet300")
    ts.prune_(model, {"sparsity": sparsity, "keep_first_last": False})
    share_weights_(model, {"bits": bits})
    return model.eval()


def _same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape, k
        x, y = sa[k].contiguous(), sb[k].contiguous()
        if x.is_floating_point():
            bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
            x, y = x.view(bits), y.view(bits)
        assert torch.equal(x, y), k


def test_save_load_is_bit_exact_and_outputs_identical(tmp_path):
    model = _compressed_lenet300()
    path = ts.save(model, tmp_path / "m.tslim", arch="zoo:lenet300")
    restored = ts.load(path)  # builds zoo:lenet300 from the file's arch
    _same_state(model, restored)
    x = torch.randn(64, 784)
    assert torch.equal(model(x), restored(x))
    assert len(list(iter_masks(restored))) == 3 and len(list(iter_shared(restored))) == 3
    via_builder = ts.load(path, lambda: ts.create_model("lenet300"))
    assert torch.equal(model(x), via_builder(x))


def test_saving_twice_gives_the_same_bytes_and_huffman_beats_fixed_width():
    model = _compressed_lenet300()
    a, b = encode_model(model), encode_model(model)
    assert a == b
    fixed = encode_model(model, coding="fixed")
    assert len(a) < len(fixed)
    assert torch.equal(model(torch.ones(1, 784)), _load_bytes(fixed)(torch.ones(1, 784)))


def _load_bytes(data: bytes) -> nn.Module:
    f = parse(data)
    model = ts.create_model("lenet300")
    from torchslim.train.checkpoint import load_structured_state

    load_structured_state(model, f.structure, f.state, source="bytes")
    return model.eval()


def test_a_90_percent_sparse_shared_lenet300_is_over_30x_smaller():
    model = _compressed_lenet300(0.9, 5)
    data = encode_model(model, arch="zoo:lenet300")
    assert 266_610 * 4 / len(data) > 30, len(data)
    rows = {r.layer: r for r in layer_table(parse(data))}
    assert rows["fc1"].encoding == "shared" and 0.05 < rows["fc1"].kept < 0.15
    assert rows["fc1"].weight_bits < 5.5 and rows["fc1"].index_bits < 8  # Huffman-coded codes and gaps


def test_odd_tensors_round_trip_bit_for_bit(tmp_path):
    """Dense, sparse and mixed dtypes; -0.0 and NaN payloads; BN integer buffers; a mask over live zeros."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    model[1].running_mean.normal_()
    model[1].num_batches_tracked.fill_(7)
    ts.prune_(model, {"sparsity": 0.7, "keep_first_last": False})
    with torch.no_grad():
        w = model[3].weight
        live = torch.nonzero(w.flatten() != 0).flatten()
        w.view(-1)[live[0]] = 0.0  # a live weight that is exactly zero (mask and non-zeros differ)
        w.view(-1)[live[1]] = -0.0
        model[0].bias[0] = float("nan")
        model[0].bias.view(torch.int32)[1] = 0x7FC00001  # a NaN with a payload
    half = nn.Linear(40, 30).to(torch.float16)
    with torch.no_grad():
        half.weight[half.weight.abs() < 0.1] = 0
    container = nn.ModuleDict({"net": model, "h16": half, "bf": nn.Linear(20, 20).to(torch.bfloat16)})
    data = encode_model(container)
    f = parse(data)
    encs = {r["name"]: r["enc"] for r in f.records}
    assert encs["net.3.weight"] == "sparse" and encs["h16.weight"] == "sparse" and encs["net.1.num_batches_tracked"] == "raw"
    restored = nn.ModuleDict(
        {
            "net": nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)),
            "h16": nn.Linear(40, 30).to(torch.float16),
            "bf": nn.Linear(20, 20).to(torch.bfloat16),
        }
    )
    (tmp_path / "odd.tslim").write_bytes(data)
    ts.load(tmp_path / "odd.tslim", restored)
    _same_state(container, restored)


def test_structured_pruning_is_replayed_on_a_fresh_model(tmp_path):
    torch.manual_seed(0)
    model = ts.create_model("resnet_cifar", depth=8, in_channels=1, num_classes=10)
    x = torch.randn(2, 1, 28, 28)
    ts.prune_(model, {"granularity": "channel", "sparsity": 0.5}, example_input=x)
    model.eval()
    path = ts.save(model, tmp_path / "r.tslim", arch={"model": "zoo:resnet_cifar", "args": {"depth": 8, "in_channels": 1}})
    restored = ts.load(path)
    assert torch.equal(model(x), restored(x))
    _same_state(model, restored)


def _resign(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def _with_header(data: bytes, edit) -> bytes:
    """Re-encode the header through ``edit(header_dict)`` and re-sign the file."""
    _, version, flags, hlen = struct.unpack_from("<8sHHI", data, 0)
    header = json.loads(zlib.decompress(data[16 : 16 + hlen]))
    edit(header)
    new = zlib.compress(json.dumps(header).encode())
    return _resign(struct.pack("<8sHHI", MAGIC, version, flags, len(new)) + new + data[16 + hlen : -32])


def test_damage_is_reported_clearly(tmp_path):
    model = _compressed_lenet300()
    data = encode_model(model, arch="zoo:lenet300")
    cases = {
        "truncated": (data[:10], "truncated"),
        "cut": (data[:-100], "checksum"),
        "flipped": (data[:500] + bytes([data[500] ^ 0x10]) + data[501:], "checksum"),
        "magic": (b"NOTTSLIM" + data[8:], "not a .tslim file"),
        "version": (_resign(data[:8] + struct.pack("<H", FORMAT_VERSION + 1) + data[10:-32]), "unsupported .tslim format version 2"),
        "payload": (_resign(data[:-40] + bytes([data[-40] ^ 1]) + data[-39:-32]), "CRC-32 mismatch"),
        "nnz": (_with_header(data, lambda h: h["records"][0].update(nnz=1)), "fc1.weight"),
        "enc": (_with_header(data, lambda h: h["records"][1].update(enc="zip")), "unknown encoding 'zip'"),
    }
    for name, (blob, message) in cases.items():
        with pytest.raises(TslimFormatError, match=message):
            parse(blob, name)
    path = tmp_path / "m.tslim"
    path.write_bytes(data)
    wrong = ts.create_model("lenet5")
    before = {k: v.clone() for k, v in wrong.state_dict().items()}
    with pytest.raises(TslimFormatError, match="does not match the model architecture.*fc1.weight"):
        ts.load(path, wrong)
    assert all(torch.equal(before[k], v) for k, v in wrong.state_dict().items())  # left untouched
    other = _with_header(data, lambda h: h.update(arch={"model": "os:system", "args": {}}))
    path.write_bytes(other)
    with pytest.raises(TslimFormatError, match="names no zoo architecture"):
        ts.load(path)


def test_fuzzed_files_never_crash_hang_or_load_wrong():
    model = _compressed_lenet300(0.95, 4)
    data = encode_model(model, arch="zoo:lenet300")
    reference = parse(data).state
    rng = np.random.default_rng(0)
    for trial in range(300):
        blob = bytearray(data)
        kind = trial % 4
        if kind == 0:  # random byte flips
            for pos in rng.integers(0, len(blob), rng.integers(1, 4)):
                blob[pos] ^= int(rng.integers(1, 256))
        elif kind == 1:  # truncation
            blob = blob[: int(rng.integers(0, len(blob)))]
        elif kind == 2:  # inserted garbage
            pos = int(rng.integers(0, len(blob)))
            blob[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
        else:  # damage behind a valid checksum: the parser itself must hold
            body = bytearray(data[:-32])
            for pos in rng.integers(0, len(body), rng.integers(1, 4)):
                body[pos] ^= int(rng.integers(1, 256))
            blob = bytearray(_resign(bytes(body)))
        t0 = time.perf_counter()
        try:
            f = parse(bytes(blob), f"trial {trial}")
        except TslimFormatError:
            pass
        else:
            assert kind == 3, f"trial {trial}: a damaged file was accepted"
            # behind a re-signed checksum the per-record CRC-32s still guard the tensors
            for k, v in f.state.items():
                assert torch.equal(v, reference[k]) or k.endswith(("_mask", "_codes")), k
        assert time.perf_counter() - t0 < 2.0, f"trial {trial} took too long"


def test_cli_inspect_prints_the_paper_table(tmp_path):
    from typer.testing import CliRunner

    from torchslim.cli import app

    model = _compressed_lenet300()
    path = ts.save(model, tmp_path / "m.tslim", arch="zoo:lenet300")
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["file_bytes"] == path.stat().st_size
    assert out["ratio"] == pytest.approx(266_610 * 4 / path.stat().st_size)
    assert [r["layer"] for r in out["layers"]] == ["fc1", "fc2", "fc3"]
    table = runner.invoke(app, ["inspect", str(path)])
    assert table.exit_code == 0 and "fc1" in table.output and "shared" in table.output
    path.write_bytes(path.read_bytes()[:-1])
    bad = runner.invoke(app, ["inspect", str(path)])
    assert bad.exit_code == 2 and "checksum" in bad.output


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
