"""The .tslim layout: the same bytes for the same model, and clear errors on every kind of damage."""

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
from torchslim.encode.tslim import encode_model
from torchslim.io.checkpoint import load_structured_state
from torchslim.io.tslim.format import FORMAT_VERSION, MAGIC, TslimFormatError, parse


def _load_bytes(data: bytes) -> nn.Module:
    f = parse(data)
    model = ts.create_model("lenet300")
    load_structured_state(model, f.structure, f.state, source="bytes")
    return model.eval()


def test_saving_twice_gives_the_same_bytes_and_huffman_beats_fixed_width(compressed_lenet300):
    model = compressed_lenet300()
    a, b = encode_model(model), encode_model(model)
    assert a == b
    fixed = encode_model(model, coding="fixed")
    assert len(a) < len(fixed)
    assert torch.equal(model(torch.ones(1, 784)), _load_bytes(fixed)(torch.ones(1, 784)))


def _resign(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def _with_header(data: bytes, edit) -> bytes:
    """Re-encode the header through ``edit(header_dict)`` and re-sign the file."""
    _, version, flags, hlen = struct.unpack_from("<8sHHI", data, 0)
    header = json.loads(zlib.decompress(data[16 : 16 + hlen]))
    edit(header)
    new = zlib.compress(json.dumps(header).encode())
    return _resign(struct.pack("<8sHHI", MAGIC, version, flags, len(new)) + new + data[16 + hlen : -32])


def test_damage_is_reported_clearly(tmp_path, compressed_lenet300):
    model = compressed_lenet300()
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


def test_fuzzed_files_never_crash_hang_or_load_wrong(compressed_lenet300):
    model = compressed_lenet300(0.95, 4)
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


def test_a_record_name_twice_and_a_derived_record_without_its_source_are_refused(compressed_lenet300):
    data = encode_model(compressed_lenet300(), arch="zoo:lenet300")
    twice = _with_header(data, lambda h: h["records"][1].update(name=h["records"][0]["name"]))
    with pytest.raises(TslimFormatError, match="a record name appears twice"):
        parse(twice)
    orphan = _with_header(data, lambda h: next(r for r in h["records"] if r["enc"] == "support_of").update(of="nope"))
    with pytest.raises(TslimFormatError, match="refers to 'nope', which is not an earlier record"):
        parse(orphan)
