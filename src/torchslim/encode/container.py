"""The ``.tslim`` file: a compressed model in a versioned, checksummed container that is parsed, never unpickled.

Layout (integers little-endian)::

    offset 0   8 bytes   magic  b"TSLIM\\x00\\r\\n"
           8   u16       format version (FORMAT_VERSION)
          10   u16       flags (0)
          12   u32       H: header length
          16   H bytes   header: zlib-compressed UTF-8 JSON (below)
        16+H   ...       record payloads, back to back
     end-32   32 bytes   SHA-256 of every byte before it

The header holds ``arch`` (a reference to the architecture, e.g.
``{"model": "zoo:lenet300", "args": {}}``; only zoo names are ever built from a
file), ``structure`` (the structured-pruning steps to replay on a fresh
instance), ``meta`` and ``records``: one per state-dict entry, with its name,
shape, dtype, encoding, offset, the lengths of its parts and the CRC-32 of its
payload. Encodings:

- ``raw``: the tensor's bytes;
- ``sparse``: the non-zeros' values (raw) and their positions as relative
  indices (:mod:`torchslim.encode.streams`), Huffman-coded or fixed-width;
- ``shared`` (weight sharing): the codebook (float32 bit patterns), the cluster
  index of every non-zero and the relative indices, each Huffman-coded or
  fixed-width. This is Deep Compression's storage;
- ``bits``: a boolean tensor at one bit per element;
- ``support_of`` / ``codes_of``: a pruning mask or a sharing-codes buffer that
  equals what another record already implies (0 bytes of payload).

:func:`save` checks before writing that the file decodes to the model's state
dict bit for bit (a tensor that would not falls back to ``raw``) and writes
atomically; saving the same model twice gives the same bytes. :func:`load`
verifies the whole-file SHA-256 and every record's CRC-32 and rejects anything
malformed with :class:`TslimFormatError`, naming what is wrong.

Example:
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> model = ts.create_model("lenet300")
    >>> path = ts.save(model, f"{tmp.name}/lenet300.tslim", arch="zoo:lenet300")
    >>> restored = ts.load(path)                              # builds zoo:lenet300
    >>> restored = ts.load(path, lambda: ts.create_model("lenet300"))   # or a builder of your own model
    >>> tmp.cleanup()
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim.io import atomic_write_bytes
from torchslim.encode.kmeans import CODES_SUFFIX
from torchslim.encode.streams import (
    StreamError,
    best_gap_width,
    decode_stream,
    encode_stream,
    gap_symbols,
    positions_from_gaps,
)
from torchslim.errors import CheckpointError
from torchslim.graph import provenance

MAGIC = b"TSLIM\x00\r\n"
FORMAT_VERSION = 1
SUFFIX = ".tslim"
_PREFIX = struct.Struct("<8sHHI")
_DIGEST = 32
_MAX_HEADER = 64 << 20
_MAX_ELEMENTS = 1 << 34
MASK_SUFFIX = "_mask"
CODINGS = ("huffman", "fixed")
_DERIVED = ("support_of", "codes_of", "quantized")

# dtype name -> (torch dtype, numpy dtype holding its bit pattern)
_DTYPES: dict[str, tuple[torch.dtype, np.dtype[Any]]] = {
    "float32": (torch.float32, np.dtype("<i4")),
    "float64": (torch.float64, np.dtype("<i8")),
    "float16": (torch.float16, np.dtype("<i2")),
    "bfloat16": (torch.bfloat16, np.dtype("<i2")),
    "int64": (torch.int64, np.dtype("<i8")),
    "int32": (torch.int32, np.dtype("<i4")),
    "int16": (torch.int16, np.dtype("<i2")),
    "int8": (torch.int8, np.dtype("i1")),
    "uint8": (torch.uint8, np.dtype("u1")),
    "bool": (torch.bool, np.dtype("u1")),
}
_BITS_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16, torch.bfloat16: torch.int16}


class TslimFormatError(CheckpointError):
    """A ``.tslim`` file is truncated, corrupt, of another version, or does not fit the model."""


# -- tensors <-> bit patterns --------------------------------------------------------------------


def _dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise TslimFormatError(f"cannot store dtype {name}; supported: {', '.join(_DTYPES)}")
    return name


def _pattern(t: torch.Tensor) -> np.ndarray:
    """Flat bit patterns of ``t`` in the numpy dtype of its record (floats as same-width integers)."""
    name = _dtype_name(t.dtype)
    flat = t.detach().cpu().contiguous().flatten()
    if flat.dtype in _BITS_VIEW:
        flat = flat.view(_BITS_VIEW[flat.dtype])
    elif flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    return flat.numpy().astype(_DTYPES[name][1], copy=False)


def _from_pattern(pattern: np.ndarray, dtype_name: str, shape: list[int]) -> torch.Tensor:
    dtype, np_dtype = _DTYPES[dtype_name]
    arr = torch.from_numpy(np.array(pattern, dtype=np_dtype.newbyteorder("="), copy=True))
    if dtype in _BITS_VIEW:
        arr = arr.view(dtype)
    elif dtype == torch.bool:
        arr = arr.bool()
    return arr.reshape(shape)


# -- encoding one tensor --------------------------------------------------------------------------


@dataclass
class _Record:
    name: str
    shape: list[int]
    dtype: str
    enc: str
    parts: list[tuple[str, bytes]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(len(b) for _, b in self.parts)


def _raw(name: str, t: torch.Tensor) -> _Record:
    if t.dtype == torch.bool:
        return _bits_record(name, t)
    return _Record(name, list(t.shape), _dtype_name(t.dtype), "raw", [("data", _pattern(t).tobytes())])


def _bits_record(name: str, t: torch.Tensor) -> _Record:
    data = np.packbits(t.detach().cpu().flatten().numpy().astype(bool)).tobytes()
    return _Record(name, list(t.shape), "bool", "bits", [("data", data)])


def _positions_parts(positions: np.ndarray, coding: str) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    bits = best_gap_width(positions, coding)
    symbols = gap_symbols(positions, bits)
    stream = encode_stream(symbols, 1 << bits, coding)
    return {"ib": bits, "n_gap": int(symbols.size)}, [(f"gap_{k}", v) for k, v in stream.items()]


def _sparse(name: str, t: torch.Tensor, support: np.ndarray, coding: str) -> _Record:
    pattern = _pattern(t)
    positions = np.flatnonzero(support)
    info, parts = _positions_parts(positions, coding)
    info.update(nnz=int(positions.size), coding=coding)
    values = pattern[positions].tobytes()
    return _Record(name, list(t.shape), _dtype_name(t.dtype), "sparse", [("values", values), *parts], info)


def _shared(name: str, t: torch.Tensor, codes: torch.Tensor, coding: str) -> _Record:
    flat_codes = codes.detach().cpu().flatten().long().numpy()
    positions = np.flatnonzero(flat_codes >= 0)
    symbols = flat_codes[positions]
    k = int(symbols.max()) + 1 if symbols.size else 0
    pattern = _pattern(t)
    first = np.full(k, -1, dtype=np.int64)
    first[symbols[::-1]] = positions[::-1]
    codebook = pattern[first] if k else pattern[:0]
    info, parts = _positions_parts(positions, coding)
    code_stream = encode_stream(symbols, max(k, 1), coding)
    info.update(nnz=int(positions.size), k=k, coding=coding)
    return _Record(
        name,
        list(t.shape),
        _dtype_name(t.dtype),
        "shared",
        [("codebook", codebook.tobytes()), *[(f"code_{n}", v) for n, v in code_stream.items()], *parts],
        info,
    )


def _quantized(name: str, t: torch.Tensor, q: torch.Tensor, qp: Any, fq: str, coding: str) -> _Record:
    """Integers of a quantized weight (``qmin``-offset symbols), only where they differ from the zero point when sparse."""
    from torchslim.quant.affine import _expand

    flat_q = q.detach().cpu().flatten().long().numpy()
    zp = _expand(qp.zero_point, q, qp.axis, qp.group_size).expand(q.shape).detach().cpu().flatten().long().numpy()
    live = flat_q != zp
    info: dict[str, Any] = {
        "of": fq,
        "qmin": int(qp.qmin),
        "qmax": int(qp.qmax),
        "axis": qp.axis,
        "group_size": qp.group_size,
        "coding": coding,
        "sparse": bool(live.mean() < 0.5),
    }
    parts: list[tuple[str, bytes]] = []
    if info["sparse"]:
        positions = np.flatnonzero(live)
        gap_info, parts = _positions_parts(positions, coding)
        info.update(gap_info, nnz=int(positions.size))
        symbols = flat_q[positions] - qp.qmin
    else:
        symbols = flat_q - qp.qmin
    stream = encode_stream(symbols, int(qp.qmax - qp.qmin + 1), coding)
    return _Record(name, list(t.shape), _dtype_name(t.dtype), "quantized", [*[(f"q_{n}", v) for n, v in stream.items()], *parts], info)


def _decode_quantized(record: _Record, payload: dict[str, bytes], done: dict[str, tuple[_Record, torch.Tensor]]) -> torch.Tensor:
    from torchslim.quant.affine import QParams, _expand, dequantize

    name, info, shape = record.name, record.info, record.shape
    numel = math.prod(shape)
    of = info.get("of")
    if not isinstance(of, str) or f"{of}.zero_point" not in done or record.dtype != "float32":
        raise TslimFormatError(f"record {name}: a quantized float32 weight needs the scale and zero point of {of!r}")
    qmin, qmax = _int(info, "qmin", -(1 << 16), 1 << 16, name), _int(info, "qmax", -(1 << 16), 1 << 16, name)
    axis, group = info.get("axis"), info.get("group_size")
    if qmax <= qmin or not (axis is None or (isinstance(axis, int) and 0 <= axis < len(shape))):
        raise TslimFormatError(f"record {name}: bad integer range or axis")
    if not (group is None or (isinstance(group, int) and group >= 1 and axis is not None and shape[axis] % group == 0)):
        raise TslimFormatError(f"record {name}: bad group size {group!r}")
    zero_point = done[f"{of}.zero_point"][1]
    if f"{of}.log_scale" in done:
        scale = torch.exp(done[f"{of}.log_scale"][1]).detach()
    elif f"{of}.scale" in done:
        scale = done[f"{of}.scale"][1]
    else:
        raise TslimFormatError(f"record {name}: no scale for {of}")
    qp = QParams(scale, zero_point, qmin, qmax, axis, group)
    try:
        zp = _expand(zero_point, torch.empty(shape), axis, group).expand(shape).flatten().long().numpy()
    except (RuntimeError, ValueError, IndexError) as exc:
        raise TslimFormatError(f"record {name}: scale/zero point do not fit the weight: {exc}") from None
    symbols_of = {n[2:]: v for n, v in payload.items() if n.startswith("q_")}
    if info.get("sparse"):
        positions = _positions(record, payload, numel)
        q = zp.copy()
        q[positions] = decode_stream(symbols_of, qmax - qmin + 1, positions.size, _coding(info, name)) + qmin
    else:
        q = decode_stream(symbols_of, qmax - qmin + 1, numel, _coding(info, name)) + qmin
    return dequantize(torch.from_numpy(q).reshape(shape), qp)


def _support(record: _Record, payload: dict[str, bytes]) -> np.ndarray:
    """Flat boolean support (stored positions) of a sparse or shared record."""
    numel = math.prod(record.shape)
    positions = _positions(record, payload, numel)
    out = np.zeros(numel, dtype=bool)
    out[positions] = True
    return out


def _positions(record: _Record, payload: dict[str, bytes], numel: int) -> np.ndarray:
    info = record.info
    bits, n_gap = _int(info, "ib", 1, 24, record.name), _int(info, "n_gap", 0, _MAX_ELEMENTS, record.name)
    gaps = decode_stream({k[4:]: v for k, v in payload.items() if k.startswith("gap_")}, 1 << bits, n_gap, _coding(info, record.name))
    positions = positions_from_gaps(gaps, bits, numel)
    if positions.size != _int(info, "nnz", 0, numel, record.name):
        raise TslimFormatError(f"record {record.name}: {positions.size} positions decoded, header says {info['nnz']}")
    return positions


def _decode(record: _Record, payload: dict[str, bytes], done: dict[str, tuple[_Record, torch.Tensor]]) -> torch.Tensor:
    """Decode one record (``done`` holds records already decoded, for derived encodings)."""
    shape, name = record.shape, record.name
    numel = math.prod(shape)
    np_dtype = _DTYPES[record.dtype][1]
    if record.enc == "raw":
        data = payload.get("data", b"")
        if len(data) != numel * np_dtype.itemsize:
            raise TslimFormatError(f"record {name}: {len(data)} bytes of data for {numel} {record.dtype} elements")
        return _from_pattern(np.frombuffer(data, dtype=np_dtype), record.dtype, shape)
    if record.enc == "bits":
        data = payload.get("data", b"")
        if len(data) != (numel + 7) // 8:
            raise TslimFormatError(f"record {name}: {len(data)} bytes of bits for {numel} elements")
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=numel).astype(bool)
        return torch.from_numpy(bits).reshape(shape)
    if record.enc in ("sparse", "shared"):
        positions = _positions(record, payload, numel)
        out = np.zeros(numel, dtype=np_dtype)
        if record.enc == "sparse":
            values = payload.get("values", b"")
            if len(values) != positions.size * np_dtype.itemsize:
                raise TslimFormatError(f"record {name}: values part has {len(values)} bytes for {positions.size} entries")
            out[positions] = np.frombuffer(values, dtype=np_dtype)
        else:
            k = _int(record.info, "k", 0, 1 << 24, name)
            codebook = payload.get("codebook", b"")
            if len(codebook) != k * np_dtype.itemsize:
                raise TslimFormatError(f"record {name}: codebook has {len(codebook)} bytes for {k} entries")
            symbols = _cluster_codes(record, payload, positions.size)
            out[positions] = np.frombuffer(codebook, dtype=np_dtype)[symbols]
        return _from_pattern(out, record.dtype, shape)
    if record.enc == "quantized":
        return _decode_quantized(record, payload, done)
    if record.enc in ("support_of", "codes_of"):
        of = record.info.get("of")
        if not isinstance(of, str) or of not in done:
            raise TslimFormatError(f"record {name} refers to {of!r}, which is not an earlier record")
        source, _ = done[of]
        if not _has_support(source) or source.shape != shape:
            raise TslimFormatError(f"record {name} cannot be derived from {of} ({source.enc}, shape {source.shape})")
        src_payload = source.info["_payload"]
        if record.enc == "support_of":
            if record.dtype != "bool":
                raise TslimFormatError(f"record {name}: a support must be bool, not {record.dtype}")
            return torch.from_numpy(_support(source, src_payload)).reshape(shape)
        if source.enc != "shared" or record.dtype not in ("int16", "int32", "int64"):
            raise TslimFormatError(f"record {name}: codes derive only from a shared record, as integers")
        positions = _positions(source, src_payload, numel)
        symbols = _cluster_codes(source, src_payload, positions.size)
        codes = np.full(numel, -1, dtype=np.int64)
        codes[positions] = symbols
        return _from_pattern(codes, record.dtype, shape)
    raise TslimFormatError(f"record {name}: unknown encoding {record.enc!r}")


def _cluster_codes(record: _Record, payload: dict[str, bytes], count: int) -> np.ndarray:
    """The cluster index of each of the ``count`` stored entries of a shared record."""
    k = _int(record.info, "k", 0, 1 << 24, record.name)
    parts = {n[5:]: v for n, v in payload.items() if n.startswith("code_")}
    return decode_stream(parts, max(k, 1), count, _coding(record.info, record.name))


def _has_support(record: _Record) -> bool:
    """Whether ``record`` stores positions (so a mask can be derived from it)."""
    return record.enc in ("sparse", "shared") or (record.enc == "quantized" and bool(record.info.get("sparse")))


def _int(info: dict[str, Any], key: str, lo: int, hi: int, name: str) -> int:
    value = info.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise TslimFormatError(f"record {name}: field {key!r} must be an integer in {lo}..{hi}, got {value!r}")
    return value


def _coding(info: dict[str, Any], name: str) -> str:
    coding = info.get("coding")
    if coding not in CODINGS:
        raise TslimFormatError(f"record {name}: coding must be one of {', '.join(CODINGS)}, got {coding!r}")
    return str(coding)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape) and np.array_equal(_pattern(a), _pattern(b))


def _encode_state(
    state: dict[str, torch.Tensor], coding: str, quantized: dict[str, tuple[torch.Tensor, Any, str, torch.Tensor]] | None = None
) -> list[_Record]:
    """One verified record per state entry, in state order.

    ``quantized`` maps a weight's key to ``(integers, qparams, fake-quant module key,
    the fake-quantized weight)``: such a weight is stored as its integers when they
    decode to exactly the weight its forward uses (else raw).
    """
    quantized = quantized or {}
    records: dict[str, _Record] = {}
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    later: list[str] = []
    for key, t in tensors.items():
        if key in quantized or (key.endswith((MASK_SUFFIX, CODES_SUFFIX)) and key.rsplit("_", 1)[0] in tensors):
            later.append(key)
            continue
        records[key] = _best_record(key, t, tensors, coding)
    for key in sorted(later, key=lambda k: k.endswith((MASK_SUFFIX, CODES_SUFFIX))):  # quantized weights first
        t = tensors[key]
        if key in quantized:
            q, qp, fq, target = quantized[key]
            candidate = _quantized(key, t, q, qp, fq, coding)
            ok = candidate.nbytes < _raw(key, t).nbytes and _roundtrips(candidate, target.detach().cpu(), records, tensors)
            records[key] = candidate if ok else _best_record(key, t, tensors, coding)
            continue
        of = key.rsplit("_", 1)[0]
        source = records.get(of)
        candidate = None
        if source is not None and _has_support(source) and list(t.shape) == source.shape:
            if key.endswith(MASK_SUFFIX) and t.dtype == torch.bool:
                candidate = _Record(key, list(t.shape), "bool", "support_of", [], {"of": of})
            elif key.endswith(CODES_SUFFIX) and source.enc == "shared" and t.dtype in (torch.int16, torch.int32, torch.int64):
                candidate = _Record(key, list(t.shape), _dtype_name(t.dtype), "codes_of", [], {"of": of})
        records[key] = candidate if candidate is not None and _roundtrips(candidate, t, records) else _raw(key, t)
    return [records[k] for k in state]


def _quantized_weights(model: nn.Module) -> dict[str, tuple[torch.Tensor, Any, str, torch.Tensor]]:
    """For every quantized layer of ``model``: its weight's integers, qparams and fake-quantized value."""
    if provenance.latest(model, "quant") is None:
        return {}
    from torchslim.quant.affine import quantize
    from torchslim.quant.fake import ste_fake_quantize
    from torchslim.quant.model import QUANT_LAYERS

    out = {}
    for name, module in model.named_modules():
        fq = getattr(module, "weight_fq", None)
        if not isinstance(module, QUANT_LAYERS) or fq is None or not bool(fq.initialized) or not fq.enabled:
            continue
        qp = fq.qparams()
        with torch.no_grad():
            weight = module.weight.detach()
            prefix = f"{name}." if name else ""
            out[prefix + "weight"] = (quantize(weight, qp), qp, prefix + "weight_fq", ste_fake_quantize(weight, qp))
    return out


def _best_record(key: str, t: torch.Tensor, tensors: dict[str, torch.Tensor], coding: str) -> _Record:
    """The smallest encoding of ``t`` that decodes back to it bit for bit."""
    raw = _raw(key, t)
    if t.dtype == torch.bool or t.numel() < 16:
        return raw
    candidates = []
    codes = tensors.get(key + CODES_SUFFIX)
    if codes is not None and tuple(codes.shape) == tuple(t.shape) and not codes.is_floating_point():
        candidates.append(_shared(key, t, codes, coding))
    mask = tensors.get(key + MASK_SUFFIX)
    support = (mask.flatten().numpy().astype(bool) if mask is not None and mask.shape == t.shape else _pattern(t) != 0)
    if support.mean() < 0.75:
        candidates.append(_sparse(key, t, support, coding))
    # a shared parameter stored any other way leaves its codes buffer to be stored raw: count that in
    codes_cost = 0 if codes is None else codes.numel() * codes.element_size()

    def cost(r: _Record) -> int:
        return r.nbytes + (0 if r.enc == "shared" else codes_cost)

    for record in sorted(candidates, key=cost):
        if cost(record) < cost(raw) and _roundtrips(record, t, {}):
            return record
    return raw


def _roundtrips(
    record: _Record, t: torch.Tensor, records: dict[str, _Record], tensors: dict[str, torch.Tensor] | None = None
) -> bool:
    """Whether ``record`` decodes to ``t`` bit for bit (``records``/``tensors``: what it may derive from)."""
    tensors = tensors or {}
    done = {k: (r, tensors.get(k, torch.empty(0))) for k, r in records.items()}
    for r, _ in done.values():
        r.info["_payload"] = dict(r.parts)
    try:
        return _same_bits(_decode(record, dict(record.parts), done), t)
    except (TslimFormatError, StreamError):
        return False
    finally:
        for r, _ in done.values():
            r.info.pop("_payload", None)


# -- file ---------------------------------------------------------------------------------------


def encode_model(
    model: nn.Module,
    *,
    arch: str | dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    coding: str = "huffman",
) -> bytes:
    """The bytes of the ``.tslim`` file of ``model`` (see :func:`save`)."""
    from torchslim.graph.slicing import recorded_structure

    if coding not in CODINGS:
        raise ValueError(f"unknown coding {coding!r}; allowed: {', '.join(CODINGS)}")
    records = _encode_state(model.state_dict(), coding, _quantized_weights(model))
    offset = 0
    entries = []
    for r in records:
        blob = b"".join(b for _, b in r.parts)
        entries.append(
            {
                "name": r.name,
                "shape": r.shape,
                "dtype": r.dtype,
                "enc": r.enc,
                "off": offset,
                "parts": [[n, len(b)] for n, b in r.parts],
                "crc": zlib.crc32(blob),
                **{k: v for k, v in r.info.items() if not k.startswith("_")},
            }
        )
        offset += len(blob)
    if isinstance(arch, str):
        arch = {"model": arch, "args": {}}
    header = {
        "format": "tslim",
        "arch": arch or {},
        "structure": recorded_structure(model),
        "quant": provenance.latest(model, "quant"),
        "meta": meta or {},
        "records": entries,
    }
    header_bytes = zlib.compress(json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8"), 9)
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(header_bytes)) + header_bytes
    body += b"".join(b for r in records for _, b in r.parts)
    return body + hashlib.sha256(body).digest()


def save(
    model: nn.Module,
    path: str | Path,
    *,
    arch: str | dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    coding: str = "huffman",
) -> Path:
    """Write ``model`` as a ``.tslim`` file (atomically); returns the path.

    Args:
        model: any model; pruned (masks), shared (codes) and structurally pruned
            models are stored compactly, everything else raw.
        path: destination (``.tslim`` is the usual suffix).
        arch: the architecture reference ``ts.load`` builds when given no model:
            ``"zoo:<name>"`` or ``{"model": "zoo:<name>", "args": {...}}``.
        meta: JSON-ready facts stored in the header.
        coding: ``huffman`` (Deep Compression) or ``fixed`` (fixed-width indices).

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> model = ts.create_model("lenet300")
        >>> path = ts.save(model, f"{tmp.name}/lenet300.tslim", arch="zoo:lenet300")
        >>> path.name
        'lenet300.tslim'
        >>> tmp.cleanup()
    """
    data = encode_model(model, arch=arch, meta=meta, coding=coding)
    return atomic_write_bytes(path, data)


@dataclass
class TslimFile:
    """A parsed ``.tslim`` file: header fields, records and the decoded state dict."""

    path: str
    version: int
    arch: dict[str, Any]
    structure: list[dict[str, Any]]
    meta: dict[str, Any]
    records: list[dict[str, Any]]
    state: dict[str, torch.Tensor]
    header_bytes: int
    file_bytes: int
    quant: dict[str, Any] | None = None


def parse(data: bytes, source: str = "<bytes>") -> TslimFile:
    """Parse and verify ``.tslim`` bytes; nothing is executed, every field is checked.

    Raises:
        TslimFormatError: naming what is wrong (truncated, bad magic, version, checksum, record).
    """
    if len(data) < _PREFIX.size + _DIGEST:
        raise TslimFormatError(f"{source}: truncated ({len(data)} bytes; a .tslim file has at least {_PREFIX.size + _DIGEST})")
    magic, version, flags, header_len = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise TslimFormatError(f"{source}: not a .tslim file (magic {magic!r})")
    if version != FORMAT_VERSION:
        raise TslimFormatError(f"{source}: unsupported .tslim format version {version} (this torchslim reads version {FORMAT_VERSION})")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise TslimFormatError(f"{source}: checksum mismatch: the file is truncated or corrupt")
    if flags != 0:
        raise TslimFormatError(f"{source}: unknown flags {flags:#x}")
    start = _PREFIX.size + header_len
    if start > len(body):
        raise TslimFormatError(f"{source}: header length {header_len} runs past the end of the file")
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(data[_PREFIX.size : start], _MAX_HEADER)
        if inflater.unconsumed_tail or not inflater.eof:
            raise TslimFormatError(f"{source}: header is not a complete zlib stream (or exceeds {_MAX_HEADER} bytes)")
        header = json.loads(text.decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TslimFormatError(f"{source}: unreadable header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != "tslim" or not isinstance(header.get("records"), list):
        raise TslimFormatError(f"{source}: header lacks the tslim format tag or its records")
    payload = memoryview(body)[start:]
    done: dict[str, tuple[_Record, torch.Tensor]] = {}
    try:
        parsed = [_record_from(entry, payload, source) for entry in header["records"]]
        if len({r.name for r in parsed}) != len(parsed):
            raise TslimFormatError("a record name appears twice")
        # records that derive from others (masks, codes, quantized weights) are decoded last
        for record in sorted(parsed, key=lambda r: r.enc in _DERIVED):
            done[record.name] = (record, _decode(record, record.info["_payload"], done))
        done = {r.name: done[r.name] for r in parsed}
    except StreamError as exc:
        raise TslimFormatError(f"{source}: {exc}") from None
    except TslimFormatError as exc:
        raise TslimFormatError(f"{source}: {exc}") from None
    arch, structure, meta = header.get("arch", {}), header.get("structure", []), header.get("meta", {})
    quant = header.get("quant")
    if not isinstance(arch, dict) or not isinstance(structure, list) or not isinstance(meta, dict):
        raise TslimFormatError(f"{source}: header fields arch/structure/meta have the wrong types")
    if quant is not None and not isinstance(quant, dict):
        raise TslimFormatError(f"{source}: header field quant has the wrong type")
    return TslimFile(
        source,
        version,
        arch,
        structure,
        meta,
        list(header["records"]),
        {k: t for k, (_, t) in done.items()},
        header_len,
        len(data),
        quant,
    )


def _record_from(entry: Any, payload: memoryview, source: str) -> _Record:
    if not isinstance(entry, dict):
        raise TslimFormatError("a record entry is not a mapping")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise TslimFormatError("a record has no name")
    shape, dtype, enc, parts = entry.get("shape"), entry.get("dtype"), entry.get("enc"), entry.get("parts")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d for d in shape):
        raise TslimFormatError(f"record {name}: bad shape {shape!r}")
    if math.prod(shape) > _MAX_ELEMENTS:
        raise TslimFormatError(f"record {name}: shape {shape} is too large")
    if dtype not in _DTYPES:
        raise TslimFormatError(f"record {name}: unsupported dtype {dtype!r}")
    if not isinstance(enc, str):
        raise TslimFormatError(f"record {name}: bad encoding {enc!r}")
    if not isinstance(parts, list) or not all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], int) and p[1] >= 0 for p in parts
    ):
        raise TslimFormatError(f"record {name}: bad parts list")
    off = _int(entry, "off", 0, len(payload), name)
    total = sum(p[1] for p in parts)
    if off + total > len(payload):
        raise TslimFormatError(f"record {name}: payload runs past the end of the file")
    blob = bytes(payload[off : off + total])
    if zlib.crc32(blob) != entry.get("crc"):
        raise TslimFormatError(f"record {name}: CRC-32 mismatch")
    chunks, pos = {}, 0
    for part, length in parts:
        chunks[part] = blob[pos : pos + length]
        pos += length
    info = {k: v for k, v in entry.items() if k not in ("name", "shape", "dtype", "enc", "off", "parts", "crc")}
    info["_payload"] = chunks
    return _Record(name, shape, dtype, enc, [], info)


def read(path: str | Path) -> TslimFile:
    """Read and verify a ``.tslim`` file (see :func:`parse`).

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = ts.save(ts.create_model("lenet300"), f"{tmp.name}/lenet300.tslim", arch="zoo:lenet300")
        >>> f = read(path); sorted(f.state)[:2]
        ['fc1.bias', 'fc1.weight']
        >>> f.arch
        {'args': {}, 'model': 'zoo:lenet300'}
        >>> tmp.cleanup()
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise TslimFormatError(f"cannot read {p}: {exc.strerror or exc}") from None
    return parse(data, str(p))


def build_from_arch(arch: dict[str, Any], source: str) -> nn.Module:
    """Build the zoo model a file's ``arch`` names (only ``zoo:`` names: a file never chooses code to import)."""
    from torchslim.zoo import create_model

    name, args = arch.get("model"), arch.get("args", {})
    if not isinstance(name, str) or not name.startswith("zoo:") or not isinstance(args, dict):
        raise TslimFormatError(
            f"{source} names no zoo architecture (arch {arch!r}); pass the model: ts.load(path, model_builder)"
        )
    return create_model(name[4:], **args)


def load(path: str | Path, model: nn.Module | Callable[[], nn.Module] | None = None) -> nn.Module:
    """Load a ``.tslim`` file into a model; outputs equal those of the model saved, bit for bit.

    Args:
        path: the file.
        model: a fresh instance of the architecture, a zero-argument builder of
            one, or ``None`` to build the file's zoo architecture. Structured
            pruning recorded in the file is replayed on it; pruning masks and
            sharing codes are re-attached.

    Returns:
        The model, in eval mode.

    Raises:
        TslimFormatError: a corrupt or truncated file, an unsupported version, or
            an architecture that does not fit (naming the mismatching entries);
            a given model is then left untouched.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = ts.save(ts.create_model("lenet300"), f"{tmp.name}/lenet300.tslim", arch="zoo:lenet300")
        >>> model = ts.load(path)
        >>> type(model).__name__, model.training
        ('LeNet300', False)
        >>> tmp.cleanup()
    """
    from torchslim.train.checkpoint import load_structured_state

    f = read(path)
    if model is None:
        target = build_from_arch(f.arch, f.path)
    elif isinstance(model, nn.Module):
        target = model
    else:
        target = model()
        if not isinstance(target, nn.Module):
            raise TslimFormatError(f"the model builder returned {type(target).__name__}, not an nn.Module")
    try:
        load_structured_state(target, f.structure, f.state, source=f.path, quant=f.quant)
    except TslimFormatError:
        raise
    except CheckpointError as exc:
        raise TslimFormatError(str(exc)) from None
    return target.eval()


@dataclass(frozen=True)
class LayerRow:
    """One line of :func:`layer_table`: a module's tensors in the file, as in the Deep Compression tables."""

    layer: str
    weights: int
    kept: float
    weight_bits: float
    index_bits: float
    encoding: str
    bytes: int
    dense_bytes: int

    @property
    def ratio(self) -> float:
        return self.dense_bytes / self.bytes if self.bytes else float("inf")


def layer_table(f: TslimFile) -> list[LayerRow]:
    """Per-module rows: weights kept, bits per kept weight (values/codes, indices), bytes, ratio to fp32.

    ``weight_bits`` counts the codebook, Huffman tables and codes (or the raw
    values) per kept weight of the module's ``weight``; ``index_bits`` the
    relative indices. ``bytes`` is every record of the module; ``dense_bytes``
    its floating tensors at 4 bytes per element.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> _ = torch.manual_seed(0)
        >>> model = ts.create_model("lenet300")
        >>> report = ts.share_weights_(model, {"bits": 5})
        >>> path = ts.save(model, f"{tmp.name}/lenet300.tslim", arch="zoo:lenet300")
        >>> for row in layer_table(read(path)):
        ...     print(row.layer, row.encoding, f"{row.weight_bits:.0f} bits/weight", row.ratio > 4)
        fc1 shared 5 bits/weight True
        fc2 shared 5 bits/weight True
        fc3 shared 6 bits/weight True
        >>> tmp.cleanup()
    """
    rows: dict[str, dict[str, Any]] = {}
    for entry in f.records:
        name = entry["name"]
        module, _, tensor = name.rpartition(".")
        for fq in (".weight_fq", ".input_fq"):  # a quantized layer's scales count towards the layer
            module = module.removesuffix(fq)
        row = rows.setdefault(module or "<model>", {"bytes": 0, "dense": 0, "weight": None})
        parts = {p: n for p, n in entry["parts"]}
        row["bytes"] += sum(parts.values())
        if entry["dtype"].startswith(("float", "bfloat")) and entry["enc"] not in ("support_of", "codes_of"):
            row["dense"] += 4 * math.prod(entry["shape"])
        if tensor == "weight":
            row["weight"] = (entry, parts)
    out = []
    for module, row in rows.items():
        weights, kept, wbits, ibits, enc = 0, 1.0, 0.0, 0.0, "-"
        if row["weight"] is not None:
            entry, parts = row["weight"]
            weights = math.prod(entry["shape"])
            enc = entry["enc"]
            if enc == "quantized" and not entry.get("sparse"):
                kept = float(f.state[f"{module}.weight"].count_nonzero()) / max(1, weights)
                wbits = 8 * sum(parts.values()) / max(1, weights)
            elif enc in ("sparse", "shared", "quantized"):
                nnz = max(1, entry["nnz"])
                kept = entry["nnz"] / max(1, weights)
                index = sum(n for p, n in parts.items() if p.startswith("gap_"))
                ibits = 8 * index / nnz
                wbits = 8 * (sum(parts.values()) - index) / nnz
            else:
                kept = float(f.state[f"{module}.weight"].count_nonzero()) / max(1, weights)
                wbits = 8 * _DTYPES[entry["dtype"]][1].itemsize
        out.append(LayerRow(module, weights, kept, wbits, ibits, enc, row["bytes"], row["dense"]))
    return out
