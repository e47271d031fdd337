import json

import pytest
import torch

from torchslim.errors import CheckpointError
from torchslim.measure import dense_bytes, file_bytes
from torchslim.prune import iter_masks, load_sparse, prune_, save_sparse
from torchslim.prune.sparse import _decode, _encode, read_sparse_state, sparse_file_bytes
from torchslim.train import finetune
from torchslim.zoo import create_model


def bits_equal(a, b):
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.float32:
        return torch.equal(a.view(torch.int32), b.view(torch.int32))
    return torch.equal(a, b)


def assert_state_bit_identical(a, b):
    assert list(a) == list(b)
    for k in a:
        assert bits_equal(a[k], b[k]), k


def lenet_90(seed=0):
    torch.manual_seed(seed)
    m = create_model("lenet300")
    prune_(m, {"sparsity": 0.9, "keep_first_last": False})
    return m


def test_ninety_percent_sparse_lenet300_takes_at_most_15_percent_of_dense_bytes(tmp_path):
    m = lenet_90()
    save_sparse(m, tmp_path / "lenet")
    on_disk = file_bytes(tmp_path / "lenet.safetensors") + file_bytes(tmp_path / "lenet.json")
    assert on_disk == sparse_file_bytes(tmp_path / "lenet")
    assert dense_bytes(m) == 266_610 * 4
    assert on_disk <= 0.15 * dense_bytes(m), on_disk / dense_bytes(m)
    entries = json.loads((tmp_path / "lenet.json").read_text())["entries"]
    assert entries["fc1.weight_mask"]["encoding"] == "mask_of"  # masks cost nothing
    fresh = create_model("lenet300")
    load_sparse(fresh, tmp_path / "lenet")
    assert_state_bit_identical(m.state_dict(), fresh.state_dict())
    assert len(list(iter_masks(fresh))) == 3


def test_round_trip_is_bit_exact_with_signed_zeros_and_masks_after_finetuning(tmp_path, digits):
    torch.manual_seed(0)
    m = create_model("lenet300", in_features=64)
    prune_(m, {"sparsity": 0.8, "keep_first_last": False})
    finetune(m, digits, {"epochs": 1, "lr": 0.02, "batch_size": 64}, progress=False)
    with torch.no_grad():
        live = m.fc1.weight_mask.nonzero()
        m.fc1.weight[tuple(live[0])] = -0.0  # live weight with a sign bit
        m.fc1.weight[tuple(live[1])] = 0.0  # live weight exactly zero: mask differs from non-zeros
    save_sparse(m, tmp_path / "m", meta={"note": "x"})
    fresh = create_model("lenet300", in_features=64)
    assert load_sparse(fresh, tmp_path / "m") == {"note": "x"}
    assert_state_bit_identical(m.state_dict(), fresh.state_dict())
    # the re-attached masks are enforced by training
    finetune(fresh, digits, {"epochs": 1, "lr": 0.02, "batch_size": 64, "max_steps": 3}, progress=False)
    assert not fresh.fc1.weight[~fresh.fc1.weight_mask].any()
    entries = json.loads((tmp_path / "m.json").read_text())["entries"]
    assert entries["fc1.weight_mask"]["encoding"] == "mask_xor" and entries["fc1.weight_mask"]["nnz"] == 1


@pytest.mark.parametrize("density", [0.0, 0.001, 0.05, 0.3, 0.99])
def test_every_encoding_round_trips_and_the_smallest_is_chosen(density):
    g = torch.Generator().manual_seed(1)
    t = torch.where(torch.rand(300, 1000, generator=g) < density, torch.randn(300, 1000, generator=g), 0.0)
    t[5, 7], t[5, 8] = float("nan"), -0.0  # kept bit for bit
    enc, parts, nnz = _encode(t)
    assert nnz == int((t.view(torch.int32) != 0).sum())
    back = _decode(enc, parts, list(t.shape), t.dtype)
    assert bits_equal(t, back)
    stored = sum(p.numel() * p.element_size() for p in parts.values())
    numel = t.numel()
    assert stored <= min(numel * 4, nnz * 4 + -(-numel // 8))
    if density == 0.001:
        assert enc == "gap16"  # mean gap ~1000: uint8 gaps would need fillers
    if density == 0.3:
        assert enc == "bitmap"
    if density == 0.99:
        assert enc == "dense"


def test_long_gaps_use_filler_entries():
    t = torch.zeros(5000)
    t[[0, 3000, 4999]] = torch.tensor([1.0, -2.0, 3.0])
    import numpy as np

    from torchslim.prune.sparse import _gap_entries

    stored, owner = _gap_entries(np.array([0, 3000, 4999]), 8)
    assert (stored < 256).all() and (owner < 0).sum() == 11 + 7  # 2999 // 256, 1998 // 256
    back = _decode("gap8", {"values": t[[0]].repeat(stored.size) * 0, "index": torch.from_numpy(stored.astype(np.uint8))}, [5000], torch.float32)
    assert back.count_nonzero() == 0  # positions only; values checked by the encode/decode round trip


def test_conv_model_with_batchnorm_buffers_round_trips(tmp_path):
    torch.manual_seed(0)
    m = create_model("resnet_cifar", depth=8, in_channels=1)
    prune_(m, {"sparsity": 0.7})
    m.train()
    m(torch.randn(4, 1, 28, 28))  # BatchNorm running stats and num_batches_tracked (int64)
    save_sparse(m, tmp_path / "r")
    fresh = create_model("resnet_cifar", depth=8, in_channels=1)
    load_sparse(fresh, tmp_path / "r")
    assert_state_bit_identical(m.state_dict(), fresh.state_dict())


def test_corrupt_or_mismatched_files_are_refused_and_leave_the_model_unchanged(tmp_path):
    m = lenet_90()
    save_sparse(m, tmp_path / "m")
    target = create_model("lenet300")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    blob = bytearray((tmp_path / "m.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (tmp_path / "bad.safetensors").write_bytes(bytes(blob))
    (tmp_path / "bad.json").write_text((tmp_path / "m.json").read_text())
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_sparse(target, tmp_path / "bad")
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_sparse(create_model("lenet300", in_features=64), tmp_path / "m")
    with pytest.raises(CheckpointError, match="not found"):
        read_sparse_state(tmp_path / "nothing")
    assert_state_bit_identical(before, target.state_dict())
    assert not list(iter_masks(target))
