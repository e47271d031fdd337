"""Hostile checkpoints, sparse and packed saves (issue 19): every failure is a CheckpointError naming the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from torchslim.errors import CheckpointError
from torchslim.io.bundle import decode_budget, json_cost, parse_json, read_sidecar_file
from torchslim.prune import load_sparse, prune_, save_sparse
from torchslim.quant import load_packed, quantize_, save_packed
from torchslim.train import load_checkpoint, load_weights, save_checkpoint
from torchslim.zoo import create_model


def _edit(sidecar: Path, edit) -> None:
    info = json.loads(sidecar.read_text())
    edit(info)
    sidecar.write_text(json.dumps(info))


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    model = create_model("lenet300", in_features=64)
    prune_(model, {"sparsity": 0.5, "keep_first_last": False})
    save_checkpoint(model, tmp_path / "ck", {"stage": 1, "note": "meta passes through"})
    return tmp_path / "ck"


def _fresh():
    return create_model("lenet300", in_features=64)


def test_a_valid_checkpoint_still_loads_with_its_meta(checkpoint):
    assert load_checkpoint(_fresh(), checkpoint) == {"stage": 1, "note": "meta passes through"}


@pytest.mark.parametrize(
    "edit",
    [
        lambda i: i.update(provenance=[{"kind": "structure", "data": {"modules": [1, 2]}}]),
        lambda i: i.update(provenance=[{"kind": "structure", "data": {"modules": {"fc1": {"out": "abc"}}}}]),
        lambda i: i.update(provenance=[{"kind": "structure", "data": {"modules": {"fc1": {"out": [10**6]}}}}]),
        lambda i: i.update(provenance=[{"kind": "quant", "data": {"config": [], "layers": {}}}]),
        lambda i: i.update(provenance=[{"kind": "nope", "data": None}]),
        lambda i: i.update(provenance={"kind": "structure"}),
        lambda i: (i.pop("provenance"), i.update(structure=5)),
        lambda i: (i.pop("provenance"), i.update(structure=[], quant=[1])),
        lambda i: i.update(meta=[["a", 1]]),
        lambda i: i.update(bytes=10**30),
        lambda i: i.update(sha256=["x"]),
    ],
    ids=["modules-list", "indices-str", "indices-range", "quant-config", "kind", "not-a-list", "legacy-int",
         "legacy-quant", "meta-list", "bytes", "sha-list"],
)
def test_garbage_in_a_sidecar_is_a_checkpoint_error(checkpoint, edit):
    _edit(checkpoint.with_suffix(".json"), edit)
    model = _fresh()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError):
        load_checkpoint(model, checkpoint)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "text",
    [b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000, b'{"format": ' + b"9" * 5000 + b"}", b"[" * 70 + b"]" * 70],
    ids=["non-utf8", "deep", "digits", "nested-70"],
)
def test_unreadable_sidecars_are_checkpoint_errors(checkpoint, text):
    checkpoint.with_suffix(".json").write_bytes(text)
    with pytest.raises(CheckpointError, match="checkpoint sidecar .*ck.json is corrupt"):
        load_checkpoint(_fresh(), checkpoint)


def test_a_tensors_file_or_sidecar_that_is_a_directory_or_a_device(checkpoint):
    tensors = checkpoint.with_suffix(".safetensors")
    tensors.unlink()
    tensors.mkdir()
    with pytest.raises(CheckpointError, match="cannot read checkpoint tensors .*ck.safetensors"):
        load_checkpoint(_fresh(), checkpoint)
    with pytest.raises(CheckpointError):
        load_weights(_fresh(), tensors)
    sidecar = checkpoint.with_suffix(".json")
    sidecar.unlink()
    if Path("/dev/zero").exists():
        os.symlink("/dev/zero", sidecar)  # never read: it would never end
        with pytest.raises(CheckpointError, match="not a regular file"):
            read_sidecar_file(sidecar, "torchslim-checkpoint", 1, "checkpoint")


def test_a_text_file_given_as_weights_is_named_clearly(tmp_path):
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    for path in (text, Path("/etc/passwd")):
        if path.exists():
            with pytest.raises(CheckpointError, match="not a safetensors file, torchslim checkpoint or PyTorch state dict"):
                load_weights(_fresh(), path)
    with pytest.raises(CheckpointError, match="cannot read weights file .*: not a regular file"):
        load_weights(_fresh(), tmp_path)


def test_json_limits():
    assert parse_json(b'{"a": [1, 2.5, "x", null]}') == {"a": [1, 2.5, "x", None]}
    assert json_cost(b"[" + b"{}," * 1000 + b"{}]") > 100_000
    with pytest.raises(ValueError, match="too many values"):
        parse_json(b"[" + b"[]," * 1000 + b"[]]", max_cost=10_000)
    assert decode_budget(1 << 20) > 1 << 30


@pytest.fixture
def sparse(tmp_path) -> Path:
    torch.manual_seed(0)
    model = create_model("lenet300", in_features=64)
    prune_(model, {"sparsity": 0.9, "keep_first_last": False})
    save_sparse(model, tmp_path / "s")
    return tmp_path / "s"


@pytest.mark.parametrize(
    "edit",
    [
        lambda e: e["fc1.weight"].update(dtype="load"),
        lambda e: e["fc1.weight"].update(dtype=["float32"]),
        lambda e: e["fc1.weight"].update(shape=[1 << 40]),
        lambda e: e["fc1.weight"].update(shape=[300, 65]),
        lambda e: e["fc1.weight"].update(shape="x"),
        lambda e: e["fc1.weight"].update(encoding="gap16"),
        lambda e: e["fc2.weight"].update(encoding="bitmap"),
        lambda e: e["fc1.weight"].update(encoding="zip"),
        lambda e: e["fc1.bias"].update(dtype="int32"),
        lambda e: e["fc1.weight_mask"].update(of="fc2.weight"),
        lambda e: e["fc1.weight_mask"].update(of=5),
        lambda e: e["fc1.weight_mask"].update(encoding="mask_xor", inner="zip"),
        lambda e: e.update(x=5),
    ],
    ids=["dtype-attr", "dtype-list", "huge", "shape", "shape-str", "enc", "enc2", "enc-unknown", "relabel", "of", "of-int",
         "inner", "entry-int"],
)
def test_garbage_in_a_sparse_sidecar_is_a_checkpoint_error(sparse, edit):
    _edit(sparse.with_suffix(".json"), lambda info: edit(info["entries"]))
    with pytest.raises(CheckpointError):
        load_sparse(_fresh(), sparse)


@pytest.fixture
def packed(tmp_path) -> Path:
    torch.manual_seed(0)
    model = create_model("lenet300", in_features=64)
    quantize_(model, {"weight": {"bits": 4}}, calibration=[torch.randn(8, 64)])
    save_packed(model, tmp_path / "p")
    return tmp_path / "p"


@pytest.mark.parametrize(
    "edit",
    [
        lambda i: i["layers"]["fc1"].update(shape=[1 << 40]),
        lambda i: i["layers"]["fc1"].update(bits=99),
        lambda i: i["layers"]["fc1"].update(bits="4"),
        lambda i: i["layers"]["fc1"].update(qmin="x"),
        lambda i: i["layers"].update(fc9=i["layers"]["fc1"]),
        lambda i: i.update(layers=[]),
        lambda i: i.pop("quantize"),
        lambda i: i["quantize"].update(config=[1]),
        lambda i: i["quantize"].update(layers={"fc1": 5}),
    ],
    ids=["huge", "bits", "bits-str", "qmin", "extra-layer", "layers-list", "no-quantize", "config", "wcfg"],
)
def test_garbage_in_a_packed_sidecar_is_a_checkpoint_error(packed, edit):
    _edit(packed.with_suffix(".json"), edit)
    model = _fresh()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError):
        load_packed(model, packed)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
