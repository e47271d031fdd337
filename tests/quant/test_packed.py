"""Packed storage: bit-exact round trip, smaller files, corrupt files refused."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from torchslim.errors import CheckpointError
from torchslim.quant import load_packed, packed_bytes, quantize_, save_packed
from torchslim.quant.packed import pack_bits, unpack_bits
from torchslim.train import save_checkpoint
from torchslim.zoo import create_model


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 7, 8])
def test_pack_unpack_round_trip(bits: int) -> None:
    gen = torch.Generator().manual_seed(bits)
    v = torch.randint(0, 2**bits, (1001,), generator=gen)
    packed = pack_bits(v, bits)
    assert packed.numel() == -(-1001 * bits // 8)
    assert torch.equal(unpack_bits(packed, bits, 1001), v.to(torch.int32))


def test_static_model_round_trip_bit_exact(trained, digits, tmp_path, _trained) -> None:
    fresh = copy.deepcopy(_trained)  # same architecture, float, untouched
    quantize_(trained, {"mode": "static", "weight": {"bits": 4}}, calibration=digits.loader("train", 128))
    save_packed(trained, tmp_path / "q")
    loaded = load_packed(fresh, tmp_path / "q")
    x = digits.test.x
    with torch.no_grad():
        assert torch.equal(loaded(x), trained(x))


def test_4bit_lenet5_is_at_most_015_of_fp32(tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model("lenet5")
    fp32 = save_checkpoint(model, tmp_path / "fp32").stat().st_size + (tmp_path / "fp32.json").stat().st_size
    reference = copy.deepcopy(model)
    quantize_(model, {"mode": "weight_only", "weight": {"bits": 4}})
    save_packed(model, tmp_path / "w4")
    ratio = packed_bytes(tmp_path / "w4") / fp32
    assert ratio <= 0.15, ratio
    loaded = load_packed(reference, tmp_path / "w4")
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_corrupt_file_refused_and_model_untouched(trained, tmp_path, _trained) -> None:
    quantize_(trained, {"mode": "weight_only", "weight": {"bits": 3}})
    save_packed(trained, tmp_path / "q")
    blob = bytearray((tmp_path / "q.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (tmp_path / "q.safetensors").write_bytes(bytes(blob))
    fresh = copy.deepcopy(_trained)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError, match="checksum"):
        load_packed(fresh, tmp_path / "q")
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    sidecar = json.loads((tmp_path / "q.json").read_text())
    assert sidecar["layers"]["conv1"]["bits"] == 3
