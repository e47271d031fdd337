"""Hostile .tslim files (issue 19): bounded memory, only TslimFormatError, dtypes checked, inspect = load."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import torchslim as ts
from torchslim.cli import app
from torchslim.encode.tslim import encode_model
from torchslim.io.tslim import HuffmanCode, HuffmanError, TslimFormatError, layer_table, load_file, parse
from torchslim.io.tslim.codecs import RAW
from torchslim.io.tslim.format import assemble

PREFIX = struct.Struct("<8sHHI")
ARCH = {"model": "zoo:lenet300", "args": {"in_features": 64}}


def _split(data: bytes) -> tuple[bytes, bytes, bytes]:
    _, _, _, hlen = PREFIX.unpack_from(data, 0)
    return data[:16], zlib.decompress(data[16 : 16 + hlen]), data[16 + hlen : -32]


def _resign(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()  # re-signed: the parser's own checks are what is tested


def _join(prefix: bytes, text: bytes, payload: bytes) -> bytes:
    magic, version, flags, _ = PREFIX.unpack_from(prefix, 0)
    header = zlib.compress(text, 9)
    return _resign(PREFIX.pack(magic, version, flags, len(header)) + header + payload)


def with_text(data: bytes, edit: Callable[[bytes], bytes]) -> bytes:
    prefix, text, payload = _split(data)
    return _join(prefix, edit(text), payload)


def with_header(data: bytes, edit: Callable[[dict[str, Any]], Any]) -> bytes:
    prefix, text, payload = _split(data)
    header = json.loads(text)
    edit(header)
    return _join(prefix, json.dumps(header).encode(), payload)


def rec(header: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in header["records"] if r["name"] == name)


def _pruned_shared(in_features: int = 784) -> nn.Module:
    torch.manual_seed(0)
    model = ts.create_model("lenet300", in_features=in_features)
    ts.prune_(model, {"sparsity": 0.9, "keep_first_last": False})
    ts.share_weights_(model, {"bits": 5})
    return model.eval()


@pytest.fixture(scope="module")
def small() -> bytes:
    """A pruned and shared LeNet-300-100 on 64 inputs, as a .tslim file."""
    return encode_model(_pruned_shared(64), arch=ARCH)


def _inspect(path) -> Any:
    return CliRunner().invoke(app, ["inspect", str(path)])


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import torchslim as ts
    from typer.testing import CliRunner
    from torchslim.cli import app

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB

    good, *hostile = sys.argv[1:]
    ts.load(good)  # every lazy import done before the baseline
    CliRunner().invoke(app, ["inspect", good])
    base, out = peak(), []
    for path in hostile:
        try:
            ts.load(path)
            loaded = "loaded"
        except ts.TslimFormatError as exc:
            loaded = "refused: " + str(exc)
        except BaseException as exc:
            loaded = f"{type(exc).__name__}: {exc}"
        result = CliRunner().invoke(app, ["inspect", path])
        out.append({"load": loaded, "inspect_exit": result.exit_code, "inspect": result.output[-300:],
                    "traceback": result.exc_info is not None and not isinstance(result.exception, SystemExit)})
    print(json.dumps({"growth": peak() - base, "results": out}))
    """
)


def test_a_24kb_file_claiming_1gib_and_a_huge_architecture_are_refused_in_under_200mb(tmp_path):
    data = encode_model(_pruned_shared(), arch="zoo:lenet300")
    assert 10_000 < len(data) < 32_000
    good = tmp_path / "good.tslim"
    good.write_bytes(data)
    claims = {
        "gib": lambda h: rec(h, "fc1.weight").update(shape=[1 << 28]),  # 1 GiB of float32
        "gib4": lambda h: rec(h, "fc1.weight").update(shape=[1 << 30]),  # 4 GiB: MemoryError before
        "all": lambda h: [rec(h, f"fc1.weight{s}").update(shape=[1 << 14, 1 << 14]) for s in ("", "_mask", "_codes")],
        "wide": lambda h: h["arch"]["args"].update(in_features=2**21),  # built 2.75 GB before
        "deep": lambda h: h["arch"]["args"].update(in_features=2**21, num_classes=2**21),
    }
    paths = []
    for name, edit in claims.items():
        paths.append(tmp_path / f"{name}.tslim")
        paths[-1].write_bytes(with_header(data, edit))
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(good), *map(str, paths)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, result in zip(claims, report["results"]):
        assert result["load"].startswith("refused: "), (name, result)
        assert result["inspect_exit"] == 2 and not result["traceback"], (name, result)
        assert "checksums verified" not in result["inspect"], (name, result)
    assert "decode to" in report["results"][2]["load"] and "more than the" in report["results"][2]["load"]
    assert "holds more than" in report["results"][3]["load"]
    assert report["growth"] < 200 << 20, report["growth"]


HOSTILE: dict[str, Callable[[bytes], bytes]] = {
    # RecursionError, ValueError (digit limit), huge containers
    "nesting": lambda d: with_text(d, lambda t: t.replace(b'"meta":{}', b'"meta":' + b"[" * 50_000 + b"]" * 50_000)),
    "nesting-65": lambda d: with_text(d, lambda t: t.replace(b'"meta":{}', b'"meta":' + b"[" * 70 + b"]" * 70)),
    "4300 digits": lambda d: with_text(d, lambda t: t.replace(b'"meta":{}', b'"meta":{"n":' + b"7" * 5000 + b"}")),
    "many empties": lambda d: with_text(d, lambda t: t.replace(b'"meta":{}', b'"meta":[' + b"{}," * 2_000_000 + b"{}]")),
    # TypeError / AttributeError / RuntimeError before
    "dtype list": lambda d: with_header(d, lambda h: rec(h, "fc1.bias").update(dtype=["float32"])),
    "shape dict": lambda d: with_header(d, lambda h: rec(h, "fc1.bias").update(shape={"a": 1})),
    "shape dims": lambda d: with_header(d, lambda h: rec(h, "fc1.bias").update(shape=[1] * 1000)),
    "shape strides": lambda d: with_header(d, lambda h: rec(h, "fc1.bias").update(shape=[0, 2**34, 2**34])),
    "parts bool": lambda d: with_header(d, lambda h: rec(h, "fc1.bias").update(parts=[["data", True]])),
    "crc str": lambda d: with_header(d, lambda h: rec(h, "fc1.bias").update(crc="x")),
    "args str": lambda d: with_header(d, lambda h: h["arch"]["args"].update(in_features="64")),
    "args negative": lambda d: with_header(d, lambda h: h["arch"]["args"].update(in_features=-5)),
    "args huge": lambda d: with_header(d, lambda h: h["arch"]["args"].update(in_features=10**40)),
    "args list": lambda d: with_header(d, lambda h: h["arch"].update(args=[64])),
    "args unknown": lambda d: with_header(d, lambda h: h["arch"]["args"].update(depth=3)),
    "zoo unknown": lambda d: with_header(d, lambda h: h["arch"].update(model="zoo:[/]")),
    "structure garbage": lambda d: with_header(d, lambda h: h.update(structure=[{"modules": [1, 2]}])),
    "structure indices": lambda d: with_header(d, lambda h: h.update(structure=[{"modules": {"fc1": {"out": "abc"}}}])),
    "structure module": lambda d: with_header(d, lambda h: h.update(structure=[{"modules": {"nope": {"out": [0]}}}])),
    "quant garbage": lambda d: with_header(d, lambda h: h.update(quant={"config": 5, "layers": {}})),
    "quant type": lambda d: with_header(d, lambda h: h.update(quant=[1])),
    "records dict": lambda d: with_header(d, lambda h: h.update(records={})),
    "record int": lambda d: with_header(d, lambda h: h["records"].append(5)),
    # sizes and counts that do not fit the bytes present
    "n_gap huge": lambda d: with_header(d, lambda h: rec(h, "fc1.weight").update(n_gap=1 << 33)),
    "k huge": lambda d: with_header(d, lambda h: rec(h, "fc1.weight").update(k=1 << 24)),
    "all on gaps": lambda d: with_header(d, lambda h: rec(h, "fc1.weight").update(all=1)),
    "all 2": lambda d: with_header(d, lambda h: rec(h, "fc1.weight").update(all=2)),
    "ib 24": lambda d: with_header(d, lambda h: rec(h, "fc1.weight").update(ib=24)),
    "nnz bool": lambda d: with_header(d, lambda h: rec(h, "fc1.weight").update(nnz=True)),
    "coding": lambda d: with_header(d, lambda h: rec(h, "fc1.weight").update(coding="fixed")),
    "off overlap": lambda d: with_header(d, lambda h: rec(h, "fc2.weight").update(off=rec(h, "fc1.weight")["off"])),
    "of missing": lambda d: with_header(d, lambda h: rec(h, "fc1.weight_mask").update(of=["fc1.weight"])),
    "of wrong": lambda d: with_header(d, lambda h: rec(h, "fc1.weight_mask").update(of="fc2.weight")),
    "codes of mask": lambda d: with_header(d, lambda h: rec(h, "fc1.weight_codes").update(of="fc1.weight_mask")),
    "enc swap": lambda d: with_header(d, lambda h: rec(h, "fc1.weight").update(enc="sparse")),
    "shape permuted": lambda d: with_header(d, lambda h: rec(h, "fc3.bias").update(shape=[5, 2])),
    "dtype relabel": lambda d: with_header(d, lambda h: rec(h, "fc1.bias").update(dtype="int32")),
    "bits relabel": lambda d: with_header(d, lambda h: rec(h, "fc1.bias").update(dtype="bool", enc="bits")),
    "duplicate": lambda d: with_header(d, lambda h: h["records"].append(dict(rec(h, "fc1.bias")))),
    "renamed copy": lambda d: with_header(d, lambda h: h["records"].append({**rec(h, "fc3.bias"), "name": "fc9.bias"})),
    "truncated": lambda d: _resign(d[:-232]),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_headers_are_refused_with_tslim_format_error_only(tmp_path, small, name):
    blob = HOSTILE[name](small)
    path = tmp_path / "m.tslim"
    path.write_bytes(blob)
    with pytest.raises(TslimFormatError):
        ts.load(path)
    result = _inspect(path)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a clean error line, no traceback
    assert "checksums verified" not in result.output and "Traceback" not in result.output


def test_a_relabelled_dtype_is_refused_not_reinterpreted(tmp_path, small):
    path = tmp_path / "m.tslim"
    path.write_bytes(with_header(small, lambda h: rec(h, "fc1.bias").update(dtype="int32")))
    with pytest.raises(TslimFormatError, match="dtype mismatches: fc1.bias: file int32 vs model float32"):
        ts.load(path)
    given = ts.create_model("lenet300", in_features=64)
    before = {k: v.clone() for k, v in given.state_dict().items()}
    with pytest.raises(TslimFormatError, match="dtype mismatches: fc1.bias"):
        ts.load(path, given)  # a model the caller gives: checked too, and left untouched
    assert all(torch.equal(before[k], v) for k, v in given.state_dict().items())


def test_inspect_verifies_what_load_verifies(tmp_path, small):
    wrong = tmp_path / "wrong.tslim"  # parses, but the architecture it names does not fit its records
    wrong.write_bytes(with_header(small, lambda h: h["arch"]["args"].update(num_classes=5)))
    parse(wrong.read_bytes())
    with pytest.raises(TslimFormatError, match="shape mismatches: fc3.weight"):
        ts.load(wrong)
    result = _inspect(wrong)
    assert result.exit_code == 2 and "fc3.weight" in result.output and "checksums verified" not in result.output
    good = tmp_path / "good.tslim"
    good.write_bytes(small)
    result = _inspect(good)
    assert result.exit_code == 0 and result.output.rstrip().endswith("checksums verified")
    unnamed = tmp_path / "unnamed.tslim"
    unnamed.write_bytes(with_header(small, lambda h: h.update(arch={})))
    result = _inspect(unnamed)
    assert result.exit_code == 0 and "architecture not checked" in result.output
    assert load_file(unnamed, need_model=False)[1] is None
    with pytest.raises(TslimFormatError, match="names no zoo architecture"):
        ts.load(unnamed)


def test_names_with_markup_are_printed_as_text(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3))
    path = ts.save(model, tmp_path / "m.tslim", arch={"model": "[/]", "args": {}})
    data = with_header(path.read_bytes(), lambda h: [r.update(name="[bold]" + r["name"]) for r in h["records"]])
    path.write_bytes(data)
    result = _inspect(path)
    assert result.exit_code == 0, result.output
    assert "[/]" in result.output and "[bold]0" in result.output


def test_a_bare_layer_with_a_top_level_weight_has_its_table():
    layer = nn.Linear(8, 4)
    rows = layer_table(parse(encode_model(layer)))
    assert [(r.layer, r.weights, r.kept) for r in rows] == [("<model>", 32, 1.0)]


def test_huffman_tables_are_checked_before_the_alphabet_is_built():
    code = HuffmanCode.from_symbols(np.array([0, 1, 1, 2]), 4)
    with pytest.raises(HuffmanError, match="declares 4 symbols, its stream has 8"):
        HuffmanCode.from_bytes(code.to_bytes(), n_symbols=8)
    runs = bytes([0x80, 0x80, 0x80, 0x08, 1, 1, 24, 0xFF, 0xFF, 0xFF, 0x07])  # 2**24 symbols of length 24: 5 bytes
    with pytest.raises(HuffmanError, match="codes 16777216 symbols, its stream holds 10"):
        HuffmanCode.from_bytes(runs, max_present=10)


def test_the_writer_refuses_what_the_reader_would():
    records = [RAW.encode("w", torch.ones(2))]
    with pytest.raises(ValueError, match="nests deeper than 64 levels"):
        assemble(records, arch={}, structure=[], quant=None, meta={"x": json.loads("[" * 70 + "]" * 70)})
    zeros = nn.Linear(1 << 13, 1 << 11, bias=False)  # 64 MiB of zeros: a few bytes sparse, more than the budget
    nn.init.zeros_(zeros.weight)
    with pytest.raises(ValueError, match="may decode to at most"):
        encode_model(zeros)
