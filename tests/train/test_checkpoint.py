import json

import pytest
import torch

from torchslim.errors import CheckpointError
from torchslim.prune import iter_masks, prune_
from torchslim.train import load_checkpoint, load_weights, save_checkpoint
from torchslim.zoo import create_model


def pruned_lenet():
    torch.manual_seed(0)
    m = create_model("lenet300")
    prune_(m, {"sparsity": 0.9, "keep_first_last": False})
    return m


def test_round_trip_is_bit_exact_and_masks_come_back(tmp_path):
    m = pruned_lenet()
    path = save_checkpoint(m, tmp_path / "ck", {"stage": 1})
    assert path.name == "ck.safetensors" and (tmp_path / "ck.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    fresh = create_model("lenet300")
    meta = load_checkpoint(fresh, tmp_path / "ck")
    assert meta == {"stage": 1}
    sa, sb = m.state_dict(), fresh.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert len(list(iter_masks(fresh))) == 3
    # the reloaded masks are live: gradients of pruned weights are zero
    fresh(torch.randn(4, 784)).sum().backward()
    assert float(fresh.fc1.weight.grad[fresh.fc1.weight_mask == 0].abs().sum()) == 0.0


def test_corrupt_checkpoint_is_refused(tmp_path):
    m = pruned_lenet()
    path = save_checkpoint(m, tmp_path / "ck")
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    fresh = create_model("lenet300")
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(fresh, path)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    (tmp_path / "ck.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="sidecar .* corrupt"):
        load_checkpoint(fresh, path)


def test_wrong_architecture_names_the_mismatch(tmp_path):
    save_checkpoint(create_model("lenet300"), tmp_path / "ck")
    with pytest.raises(CheckpointError, match="missing keys: conv1.weight"):
        load_checkpoint(create_model("lenet5"), tmp_path / "ck")
    with pytest.raises(CheckpointError, match="fc3.weight: file \\(10, 100\\) vs model \\(5, 100\\)"):
        load_checkpoint(create_model("lenet300", num_classes=5), tmp_path / "ck")


def test_plain_state_dicts_load_without_unpickling(tmp_path):
    m = create_model("lenet5")
    torch.save(m.state_dict(), tmp_path / "w.pt")
    torch.save({"state_dict": m.state_dict()}, tmp_path / "w2.pth")
    for name in ("w.pt", "w2.pth"):
        fresh = create_model("lenet5")
        load_weights(fresh, tmp_path / name)
        assert torch.equal(fresh.fc2.weight, m.fc2.weight)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read weights file"):
        load_weights(create_model("lenet5"), tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(create_model("lenet5"), tmp_path / "missing.safetensors")


def test_sidecar_version_is_checked(tmp_path):
    save_checkpoint(create_model("lenet300"), tmp_path / "ck")
    info = json.loads((tmp_path / "ck.json").read_text())
    info["format_version"] = 99
    (tmp_path / "ck.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_checkpoint(create_model("lenet300"), tmp_path / "ck")
