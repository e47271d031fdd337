"""A model to and from a .tslim file: bit-exact round trips, recorded structure replayed on a fresh model."""

import torch
from torch import nn

import torchslim as ts
from torchslim.encode.kmeans import iter_shared
from torchslim.encode.tslim import encode_model
from torchslim.io.tslim import model as tslim_model
from torchslim.io.tslim.format import parse
from torchslim.prune.mask import iter_masks


def test_save_load_is_bit_exact_and_outputs_identical(tmp_path, compressed_lenet300, same_state):
    model = compressed_lenet300()
    path = ts.save(model, tmp_path / "m.tslim", arch="zoo:lenet300")
    restored = ts.load(path)  # builds zoo:lenet300 from the file's arch
    same_state(model, restored)
    x = torch.randn(64, 784)
    assert torch.equal(model(x), restored(x))
    assert len(list(iter_masks(restored))) == 3 and len(list(iter_shared(restored))) == 3
    via_builder = ts.load(path, lambda: ts.create_model("lenet300"))
    assert torch.equal(model(x), via_builder(x))


def test_odd_tensors_round_trip_bit_for_bit(tmp_path, same_state):
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
    same_state(container, restored)


def test_structured_pruning_is_replayed_on_a_fresh_model(tmp_path, same_state):
    torch.manual_seed(0)
    model = ts.create_model("resnet_cifar", depth=8, in_channels=1, num_classes=10)
    x = torch.randn(2, 1, 28, 28)
    ts.prune_(model, {"granularity": "channel", "sparsity": 0.5}, example_input=x)
    model.eval()
    path = ts.save(model, tmp_path / "r.tslim", arch={"model": "zoo:resnet_cifar", "args": {"depth": 8, "in_channels": 1}})
    restored = ts.load(path)
    assert torch.equal(model(x), restored(x))
    same_state(model, restored)


def test_the_container_alone_stores_what_it_is_given(tmp_path, compressed_lenet300):
    """Without offers io/ writes the same bytes as ts.save for a model that is not quantized."""
    model = compressed_lenet300()
    assert tslim_model.encode_model(model, arch="zoo:lenet300") == encode_model(model, arch="zoo:lenet300")
    path = tslim_model.save(model, tmp_path / "m.tslim", meta={"note": "x"})
    assert parse(path.read_bytes()).meta == {"note": "x"}
    builder_result = tslim_model.load(path, lambda: ts.create_model("lenet300"))
    assert torch.equal(builder_result(torch.ones(1, 784)), model(torch.ones(1, 784)))
