"""The safetensors + JSON sidecar bundle: round trip, atomic layout, and every bad file refused by name."""

import hashlib
import json

import pytest
import torch

from torchslim.errors import CheckpointError
from torchslim.io.bundle import bundle_paths, read_bundle, read_sidecar_file, write_bundle


def _write(tmp_path, **kwargs):
    tensors = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": torch.tensor([7], dtype=torch.int64)}
    return write_bundle(tmp_path / "b", tensors, "test-format", 3, {"meta": {"k": 1}}, **kwargs), tensors


def test_round_trip_and_sidecar_fields(tmp_path):
    path, tensors = _write(tmp_path)
    assert path == tmp_path / "b.safetensors"
    info, back = read_bundle(tmp_path / "b.json", "test-format", 3, "test")
    assert set(back) == set(tensors) and all(torch.equal(back[k], v) for k, v in tensors.items())
    assert {k: info[k] for k in ("format", "format_version", "tensors", "bytes", "meta")} == {
        "format": "test-format",
        "format_version": 3,
        "tensors": "b.safetensors",
        "bytes": path.stat().st_size,
        "meta": {"k": 1},
    }
    assert len(info["sha256"]) == 64
    text = (tmp_path / "b.json").read_text()
    assert text == json.dumps(info, indent=2, sort_keys=True)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary left behind


def test_compact_sidecar_and_tensors_format_metadata(tmp_path):
    _write(tmp_path, compact=True, tensors_format="pt")
    text = (tmp_path / "b.json").read_text()
    assert "\n" not in text and text == json.dumps(json.loads(text), separators=(",", ":"), sort_keys=True)
    header_len = int.from_bytes((tmp_path / "b.safetensors").read_bytes()[:8], "little")
    header = json.loads((tmp_path / "b.safetensors").read_bytes()[8 : 8 + header_len])
    assert header["__metadata__"] == {"format": "pt"}


def test_tampered_tensors_are_refused(tmp_path):
    path, _ = _write(tmp_path)
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=r"test .*b\.safetensors is corrupt: its SHA-256 checksum does not match"):
        read_bundle(tmp_path / "b", "test-format", 3, "test")


def test_wrong_format_or_version_is_refused(tmp_path):
    _write(tmp_path)
    with pytest.raises(CheckpointError, match=r"b\.json is not a torchslim other sidecar"):
        read_bundle(tmp_path / "b", "other-format", 3, "other")
    with pytest.raises(CheckpointError, match="unsupported test format_version 3 \\(this torchslim reads 4\\)"):
        read_bundle(tmp_path / "b", "test-format", 4, "test")


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"test sidecar .*nothing\.json not found"):
        read_bundle(tmp_path / "nothing", "test-format", 3, "test")
    path, _ = _write(tmp_path)
    path.unlink()
    with pytest.raises(CheckpointError, match=r"test tensors .*b\.safetensors not found"):
        read_bundle(tmp_path / "b", "test-format", 3, "test")
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"test sidecar .*c\.json is corrupt"):
        read_sidecar_file(tmp_path / "c.json", "test-format", 3, "test")
    (tmp_path / "d.json").mkdir()
    with pytest.raises(CheckpointError, match=r"cannot read test sidecar .*d\.json"):
        read_sidecar_file(tmp_path / "d.json", "test-format", 3, "test")


def test_garbage_behind_a_matching_checksum_is_refused(tmp_path):
    _write(tmp_path)
    garbage = b"\xff" * 16
    (tmp_path / "b.safetensors").write_bytes(garbage)
    info = json.loads((tmp_path / "b.json").read_text())
    info["sha256"] = hashlib.sha256(garbage).hexdigest()
    (tmp_path / "b.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=r"test .*b\.safetensors is corrupt"):
        read_bundle(tmp_path / "b", "test-format", 3, "test")


def test_reserved_fields_and_paths():
    with pytest.raises(ValueError, match=r"sidecar fields \['sha256'\] are reserved"):
        write_bundle("unused", {}, "f", 1, {"sha256": "x"})
    assert [p.name for p in bundle_paths("a/m")] == ["m.safetensors", "m.json"]
    assert [p.name for p in bundle_paths("a/m.safetensors")] == ["m.safetensors", "m.json"]
