"""Hostile ``.tslim`` files (issue 19): every mutant loads to the original model bit for bit, or is refused
with ``TslimFormatError``; nothing else escapes, and the process's peak memory stays bounded.

The mutants come from two small files: a pruned and weight-shared LeNet-300-100 on 64 inputs and a 4-bit
quantized one (both Huffman-coded). Each is edited the ways a careless or hostile writer would:

- header edits, with the file's SHA-256 recomputed so that the parser's deeper checks are what is tested:
  a record's lengths, shape, dtype, counts (``nnz``, ``n_gap``, ``k``, ``ib``), encoding, coding, offset,
  parts, CRC or name set to a nearby or a hostile value (huge integers, negative, wrong types, nesting);
  the architecture's arguments, the structure, quant and meta fields; records deleted, duplicated,
  renamed or reordered; raw header text with deep nesting, 4,300-digit integers, huge containers,
  invalid UTF-8 or cut JSON;
- payload edits (SHA-256 recomputed, CRC-32s not): flipped, duplicated and deleted bytes; truncations;
- prefix edits (magic, version, flags, header length) and plain truncations.

Fields that carry values the container cannot authenticate (a quantized record's ``of``, ``axis``,
``group_size`` and ``sparse``) only get invalid values, and only records of the model's own tensors are
deleted (not a pruning mask or a sharing-codes record): otherwise the mutant is the valid file of another
model (say, the same one without its masks), which an attacker who recomputes the checksums can write anyway.
"The original model" is checked as its state dict (keys, dtypes, shapes, bit patterns) and its outputs on a
fixed input, bit for bit; the recorded provenance is not compared (a structure step of unknown keys replays
as a no-op record).

The property runs in a subprocess (``python tests/fuzz/test_tslim_fuzz.py``) so that its peak resident
memory (``ru_maxrss``) is its own. Bounds: no single mutant raises the process's peak by more than
:data:`MEMORY_BOUND` (a memory bomb would show there), and all of them together, after the imports and one
load of each original, by at most :data:`MEMORY_BOUND` plus :data:`PER_CASE` bytes per case (torch.fx keeps the
source of every graph it traces, and loading a quantized model traces: some kilobytes a load, whatever
the file). Cases: ``1000 * TORCHSLIM_FUZZ_SCALE`` (scale 1: about 15 s; scale 10: about 65 s, 10,000 mutants,
no single one raising the peak by 2 MB).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import torch

_HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("torchslim_fuzz_conftest", _HERE / "conftest.py")
assert _spec is not None and _spec.loader is not None
_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conftest)  # the seeded profile, also when run as a script

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

BASE_CASES = 1000
#: the most one mutant may raise the process's peak resident memory (the mutants are files of 7 and 29 KB)
MEMORY_BOUND = 64 << 20
#: what every case may add to the process for good (torch.fx's cache of traced sources)
PER_CASE = 16 << 10
PREFIX = struct.Struct("<8sHHI")
ARCH = {"model": "zoo:lenet300", "args": {"in_features": 64}}
#: record fields a nearby or hostile value must make fail (or leave the model as it was)
CHECKED = ("shape", "dtype", "enc", "off", "parts", "crc", "nnz", "n_gap", "ib", "k", "coding", "name", "qmin", "qmax")
#: fields whose other valid values describe another valid file: only invalid values
VALUED = ("of", "axis", "group_size", "sparse")


# ----------------------------------------------------------------------------- the originals


def originals() -> dict[str, bytes]:
    """The two files every mutant comes from (seeded, so the same bytes on every run)."""
    import torchslim as ts
    from torchslim.encode.tslim import encode_model

    torch.manual_seed(0)
    shared = ts.create_model("lenet300", in_features=64)
    ts.prune_(shared, {"sparsity": 0.9, "keep_first_last": False})
    ts.share_weights_(shared, {"bits": 4})
    quantized = ts.create_model("lenet300", in_features=64)
    ts.quantize_(quantized, {"mode": "weight_only", "weight": {"bits": 4}})
    return {"shared": encode_model(shared, arch=ARCH), "quantized": encode_model(quantized, arch=ARCH)}


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().contiguous()
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]) if t.is_floating_point() else t


_PROBE = torch.linspace(-2, 2, 3 * 64).reshape(3, 64)


def same_model(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Same state dict (keys, dtypes, shapes, bit patterns) and the same outputs, bit for bit."""
    sa, sb = a.state_dict(), b.state_dict()
    with torch.no_grad():
        return (
            list(sa) == list(sb)
            and all(sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape and torch.equal(_bits(sa[k]), _bits(sb[k])) for k in sa)
            and torch.equal(_bits(a(_PROBE)), _bits(b(_PROBE)))
        )


# ----------------------------------------------------------------------------- editing a file


def _split(data: bytes) -> tuple[bytes, bytes, bytes]:
    _, _, _, hlen = PREFIX.unpack_from(data, 0)
    return data[:16], zlib.decompress(data[16 : 16 + hlen]), data[16 + hlen : -32]


def _resign(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def _join(prefix: bytes, text: bytes, payload: bytes) -> bytes:
    magic, version, flags, _ = PREFIX.unpack_from(prefix, 0)
    header = zlib.compress(text, 6)
    return _resign(PREFIX.pack(magic, version, flags, len(header)) + header + payload)


def hostile_values(near: Any = None) -> st.SearchStrategy[Any]:
    """Values a hostile header puts in a field: huge and negative integers, wrong types, nesting."""
    huge = st.sampled_from([2**31, 2**32 + 1, 2**34, 2**40, 2**63, 2**64, -(2**63), 10**40, 10**300])
    scalars = st.one_of(
        huge, st.integers(-(2**20), 2**20), st.booleans(), st.none(), st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8), st.sampled_from(["float32", "int32", "bool", "raw", "sparse", "huffman", "fixed", "fc1"]),
    )
    nested = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)), max_leaves=6)
    if isinstance(near, int) and not isinstance(near, bool):
        return st.one_of(st.integers(near - 3, near + 3).filter(lambda v: v != near), huge, nested)
    if isinstance(near, list) and near and all(isinstance(d, int) for d in near):
        dims = st.lists(st.one_of(st.integers(0, 400), huge), min_size=0, max_size=4)
        return st.one_of(dims, st.permutations(near), nested)
    return nested


@st.composite
def header_edits(draw: st.DrawFn, header: dict[str, Any]) -> dict[str, Any]:
    """The header with one hostile edit."""
    records = header["records"]
    kind = draw(st.sampled_from(["field"] * 6 + ["valued", "parts", "parts", "top", "records"]))
    if kind in ("field", "valued"):
        entry = draw(st.sampled_from(records))
        keys = CHECKED if kind == "field" else VALUED
        present = [k for k in keys if k in entry]  # a field the record does not have is ignored: rarely worth a case
        key = draw(st.sampled_from(present if present and draw(st.integers(0, 9)) else keys))
        if kind == "valued":
            value = draw(hostile_values().filter(lambda v: not (isinstance(v, (str, bool)) or v is None or (isinstance(v, int) and 0 <= v < 4))))
        else:
            value = draw(hostile_values(entry.get(key)))
        entry[key] = value
    elif kind == "parts":
        entry = draw(st.sampled_from([r for r in records if len(r["parts"]) >= 2] or records))
        parts = entry["parts"]
        i = draw(st.integers(0, len(parts) - 1))
        how = draw(st.sampled_from(["move", "rename", "swap", "length", "drop", "extra"]))
        if how == "move" and i + 1 < len(parts):  # a boundary moves: same bytes, same CRC
            delta = draw(st.integers(-3, 3).filter(bool))
            parts[i][1] += delta
            parts[i + 1][1] -= delta
        elif how == "rename":
            parts[i][0] = draw(st.sampled_from(["data", "values", "table", "gap_data", "code_table", "x", ""]))
        elif how == "swap" and i + 1 < len(parts):
            parts[i][0], parts[i + 1][0] = parts[i + 1][0], parts[i][0]
        elif how == "length":
            parts[i][1] = draw(hostile_values(parts[i][1]))
        elif how == "drop":
            del parts[i]
        else:
            parts.append(["extra", draw(st.integers(0, 64))])
    elif kind == "top":
        key = draw(st.sampled_from(["arch", "args", "structure", "quant", "meta", "format"]))
        value = draw(hostile_values())
        if key == "args":
            name = draw(st.sampled_from(["in_features", "num_classes", "hidden", "depth"]))
            header["arch"].setdefault("args", {})[name] = draw(hostile_values(64))
        elif key == "meta":  # harmless: the model must load unchanged
            header["meta"] = {"note": value}
        else:
            header[key] = value
    else:
        how = draw(st.sampled_from(["delete", "duplicate", "rename-copy", "reorder"]))
        i = draw(st.integers(0, len(records) - 1))
        if how == "delete":  # a mask or codes record deleted is the valid file of the model without them
            keep = [r for r in records if not r["name"].endswith(("_mask", "_codes"))]
            del records[records.index(draw(st.sampled_from(keep)))]
        elif how == "duplicate":
            records.insert(draw(st.integers(0, len(records))), dict(records[i]))
        elif how == "rename-copy":
            records.append({**records[i], "name": records[i]["name"] + ".copy"})
        else:
            records[:] = draw(st.permutations(records))
    return header


_RAW = {
    "deep": lambda: b"[" * 70_000 + b"]" * 70_000,
    "deep-70": lambda: b"[" * 70 + b"]" * 70,
    "digits": lambda: b"9" * 4400,
    "empties": lambda: b"[" + b"{}," * 400_000 + b"{}]",
    "string": lambda: b'"' + b"x" * 2_000_000 + b'"',
    "nan": lambda: b"NaN",
    "utf8": lambda: b'"\xff\xfe"',
    "cut": lambda: b"[1, 2",
    "dupkeys": lambda: b'{"a": 1, "a": 2}',
}


@st.composite
def mutants(draw: st.DrawFn, files: dict[str, bytes]) -> tuple[str, bytes, str]:
    """``(original's name, mutant bytes, what was done)``."""
    name = draw(st.sampled_from(sorted(files)))
    data = files[name]
    prefix, text, payload = _split(data)
    kind = draw(st.sampled_from(["header"] * 6 + ["raw", "payload", "prefix", "truncate"]))
    if kind == "header":
        return name, _join(prefix, json.dumps(draw(header_edits(json.loads(text)))).encode(), payload), kind
    if kind == "raw":
        what = draw(st.sampled_from(sorted(_RAW)))
        where = draw(st.sampled_from([b'"meta":{}', b'"args":{"in_features":64}', b'"nnz":']))
        if where not in text:
            where = b'"meta":{}'
        new = text.replace(where, where[:-2] + b":" + _RAW[what]() + b"," + where, 1) if where == b'"nnz":' else text.replace(where, where.split(b":")[0] + b":" + _RAW[what](), 1)
        return name, _join(prefix, new, payload), f"raw {what}"
    if kind == "payload":
        body = bytearray(payload)
        at = draw(st.integers(0, max(0, len(body) - 1)))
        how = draw(st.sampled_from(["flip", "duplicate", "delete"]))
        size = draw(st.integers(1, 16))
        if how == "flip":
            body[at] ^= draw(st.integers(1, 255))
        elif how == "duplicate":
            body[at:at] = body[at : at + size]
        else:
            del body[at : at + size]
        return name, _join(prefix, text, bytes(body)), f"payload {how}"
    if kind == "prefix":
        field = draw(st.integers(0, 3))
        magic, version, flags, hlen = PREFIX.unpack_from(prefix, 0)
        values = [magic, version, flags, hlen]
        values[field] = [b"TSLIM\x00\n\r", version + 1, 1, hlen + draw(st.integers(-8, 8).filter(bool))][field]
        return name, _resign(PREFIX.pack(*values) + data[16:-32]), "prefix"
    cut = draw(st.integers(0, len(data) - 1))
    return name, (_resign(data[: max(16, cut)]) if draw(st.booleans()) else data[:cut]), "truncate"


# ----------------------------------------------------------------------------- the property, in a subprocess


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def run(scale: int) -> dict[str, Any]:
    """Run the property (``BASE_CASES * scale`` mutants); returns the counts and the peak memory growth."""
    import torchslim as ts
    from torchslim.io.tslim import load_data

    torch.set_num_threads(1)  # tiny tensors: more threads only contend for the cores
    files = originals()
    reference = {name: load_data(data)[1] for name, data in files.items()}
    outcomes: dict[str, int] = {"loaded": 0, "refused": 0, "jump": 0}
    base = _peak()

    @settings(max_examples=BASE_CASES * scale)
    @given(mutant=mutants(files))
    def prop(mutant: tuple[str, bytes, str]) -> None:
        name, blob, what = mutant
        before = _peak()
        try:
            _, model = load_data(blob, source=what)
        except ts.TslimFormatError:
            outcomes["refused"] += 1
            return
        finally:
            outcomes["jump"] = max(outcomes["jump"], _peak() - before)
        assert model is not None and same_model(model, reference[name]), f"{what}: a damaged file loaded a different model"
        outcomes["loaded"] += 1

    prop()
    return {**outcomes, "growth": _peak() - base, "base": base}


def test_hostile_tslim_files_load_identical_or_are_refused_in_bounded_memory(fuzz_scale):
    env = {**os.environ, "TORCHSLIM_FUZZ_SCALE": str(fuzz_scale)}
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=600 * fuzz_scale)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["loaded"] + result["refused"] >= BASE_CASES * fuzz_scale, result
    assert result["refused"] > BASE_CASES * fuzz_scale // 2 and result["loaded"] > 0, result
    assert result["jump"] <= MEMORY_BOUND, result
    assert result["growth"] <= MEMORY_BOUND + PER_CASE * (result["loaded"] + result["refused"]), result


if __name__ == "__main__":
    print(json.dumps(run(_conftest.SCALE)))
