"""The ``.tslim`` binary layout: a versioned, checksummed container that is parsed, never unpickled.

Layout (integers little-endian)::

    offset 0   8 bytes   magic  b"TSLIM\\x00\\r\\n"
           8   u16       format version (FORMAT_VERSION)
          10   u16       flags (0)
          12   u32       H: header length
          16   H bytes   header: zlib-compressed UTF-8 JSON (below)
        16+H   ...       record payloads, back to back
     end-32   32 bytes   SHA-256 of every byte before it

The header holds ``format`` (``"tslim"``), ``arch`` (a reference to the
architecture, e.g. ``{"model": "zoo:lenet300", "args": {}}``; only zoo names are
ever built from a file), ``structure`` (the structured-pruning steps to replay
on a fresh instance), ``quant`` (the quantization record, or ``null``), ``meta``
and ``records``: one per state-dict entry, with its name, shape, dtype,
encoding (``enc``: a codec of :mod:`torchslim.io.tslim.codecs`), offset, the
lengths of its parts, the CRC-32 of its payload and the codec's own fields.

:func:`parse` verifies the whole-file SHA-256 and every record's CRC-32, bounds
what it allocates by what the file holds, and rejects anything malformed with
:class:`TslimFormatError`, naming what is wrong. The bounds, all checked before
the allocation they guard: the header inflates to at most :data:`MAX_HEADER`
bytes, whose JSON may build at most :func:`header_budget` bytes of objects and
nest at most :data:`~torchslim.io.bundle.MAX_JSON_DEPTH` levels; a record has at
most :data:`~torchslim.io.tslim.records.MAX_DIMS` dimensions, its payload lies
in the file and apart from every other record's; every count in a record
(positions, symbols, codebook entries, Huffman alphabets) is checked against
the bytes that hold it; and all records together decode to at most
:func:`~torchslim.io.bundle.decode_budget` bytes (1024x the file plus 32 MiB).

Example:
    >>> from torchslim.io.tslim.codecs import RAW
    >>> data = assemble([RAW.encode("w", torch.ones(2))], arch={}, structure=[], quant=None, meta={"note": 1})
    >>> data[:8], len(data) > PREFIX.size + DIGEST
    (b'TSLIM\\x00\\r\\n', True)
    >>> f = parse(data)
    >>> f.meta, f.state["w"].tolist()
    ({'note': 1}, [1.0, 1.0])
    >>> parse(data[:-1])
    Traceback (most recent call last):
        ...
    torchslim.io.tslim.records.TslimFormatError: <bytes>: checksum mismatch: the file is truncated or corrupt
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torchslim.io.bundle import (
    DECODE_ALLOWANCE,
    MAX_EXPANSION,
    MAX_JSON_DEPTH,
    decode_budget,
    json_cost,
    json_depth,
    parse_json,
    read_limited,
)
from torchslim.io.tslim.codecs import Decoded, check_record, codec_of, decode_record, is_derived
from torchslim.io.tslim.records import DTYPES, Record, TslimFormatError, check_shape, decoded_bytes, int_field
from torchslim.io.tslim.streams import StreamError

__all__ = [
    "DIGEST",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_HEADER",
    "MAX_FILE",
    "PREFIX",
    "SUFFIX",
    "TslimFile",
    "TslimFormatError",
    "Verifier",
    "assemble",
    "header_budget",
    "parse",
    "read",
    "read_bytes",
    "record_from",
]

MAGIC = b"TSLIM\x00\r\n"
FORMAT_VERSION = 1
SUFFIX = ".tslim"
#: magic, version, flags, header length
PREFIX = struct.Struct("<8sHHI")
#: bytes of the trailing SHA-256
DIGEST = 32
#: the most bytes the header may inflate to
MAX_HEADER = 64 << 20
#: the largest file :func:`read` reads
MAX_FILE = 1 << 40
_ENTRY_KEYS = ("name", "shape", "dtype", "enc", "off", "parts", "crc")
_MAX_PARTS = 32
_MAX_NAME = 4096


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


#: ``(file, records)`` -> None: run by :func:`parse` after every header check and before any decoding
#: (``file.state`` is still empty); raises :class:`TslimFormatError` to refuse the file.
Verifier = Callable[[TslimFile, list[Record]], None]


def header_budget(file_bytes: int) -> int:
    """The most bytes the parsed header of a file of ``file_bytes`` bytes may take (see :func:`json_cost`)."""
    return (16 << 20) + 64 * max(0, file_bytes)


def assemble(
    records: list[Record],
    *,
    arch: dict[str, Any],
    structure: list[dict[str, Any]],
    quant: dict[str, Any] | None,
    meta: dict[str, Any],
) -> bytes:
    """The bytes of a ``.tslim`` file holding ``records`` (in order) and the header fields given.

    Raises:
        ValueError: :func:`parse` would refuse the file: header fields nested deeper
            than :data:`~torchslim.io.bundle.MAX_JSON_DEPTH`, or tensors that decode to
            more than :func:`~torchslim.io.bundle.decode_budget` allows for its size.
    """
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
    header = {"format": "tslim", "arch": arch, "structure": structure, "quant": quant, "meta": meta, "records": entries}
    if json_depth(header) > MAX_JSON_DEPTH:
        raise ValueError(f"the .tslim header (arch, structure, quant, meta) nests deeper than {MAX_JSON_DEPTH} levels")
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8")
    header_bytes = zlib.compress(text, 9)
    body = PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(header_bytes)) + header_bytes
    body += b"".join(b for r in records for _, b in r.parts)
    size = len(body) + DIGEST
    total = sum(decoded_bytes(r) for r in records)
    if total > decode_budget(size) or json_cost(text) > header_budget(size) or len(text) > MAX_HEADER:
        raise ValueError(
            f"a .tslim file of {size} bytes may decode to at most {decode_budget(size)} bytes of tensors "
            f"({MAX_EXPANSION}x its size + {DECODE_ALLOWANCE}) and hold a header of at most {MAX_HEADER} bytes; "
            f"this one would decode to {total} (store the model with save_checkpoint instead)"
        )
    return body + hashlib.sha256(body).digest()


def _header(data: bytes, source: str) -> tuple[int, int, dict[str, Any]]:
    """``(version, header length, header)`` of verified ``.tslim`` bytes."""
    if len(data) < PREFIX.size + DIGEST:
        raise TslimFormatError(f"{source}: truncated ({len(data)} bytes; a .tslim file has at least {PREFIX.size + DIGEST})")
    magic, version, flags, header_len = PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise TslimFormatError(f"{source}: not a .tslim file (magic {magic!r})")
    if version != FORMAT_VERSION:
        raise TslimFormatError(f"{source}: unsupported .tslim format version {version} (this torchslim reads version {FORMAT_VERSION})")
    if hashlib.sha256(memoryview(data)[:-DIGEST]).digest() != data[-DIGEST:]:
        raise TslimFormatError(f"{source}: checksum mismatch: the file is truncated or corrupt")
    if flags != 0:
        raise TslimFormatError(f"{source}: unknown flags {flags:#x}")
    start = PREFIX.size + header_len
    if start > len(data) - DIGEST:
        raise TslimFormatError(f"{source}: header length {header_len} runs past the end of the file")
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(data[PREFIX.size : start], MAX_HEADER)
        if inflater.unconsumed_tail or not inflater.eof:
            raise TslimFormatError(f"{source}: header is not a complete zlib stream (or exceeds {MAX_HEADER} bytes)")
        header = parse_json(text, max_cost=header_budget(len(data)))
    except (zlib.error, ValueError) as exc:
        raise TslimFormatError(f"{source}: unreadable header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != "tslim" or not isinstance(header.get("records"), list):
        raise TslimFormatError(f"{source}: header lacks the tslim format tag or its records")
    return version, header_len, header


def _fields(header: dict[str, Any], source: str) -> tuple[dict[str, Any], list[Any], dict[str, Any], Any]:
    """The header's ``arch``, ``structure``, ``meta`` and ``quant``, type-checked."""
    arch, structure, meta = header.get("arch", {}), header.get("structure", []), header.get("meta", {})
    quant = header.get("quant")
    if not isinstance(arch, dict) or not isinstance(structure, list) or not isinstance(meta, dict):
        raise TslimFormatError(f"{source}: header fields arch/structure/meta have the wrong types")
    if quant is not None and not isinstance(quant, dict):
        raise TslimFormatError(f"{source}: header field quant has the wrong type")
    return arch, structure, meta, quant


def _records(entries: list[Any], payload: memoryview, file_bytes: int) -> list[Record]:
    """The checked records of the header's ``entries``: names unique, payloads disjoint, each as its codec
    checks it from the header (:func:`~torchslim.io.tslim.codecs.check_record`), decoded size bounded."""
    records = [record_from(entry, payload) for entry in entries]
    if len({r.name for r in records}) != len(records):
        raise TslimFormatError("a record name appears twice")
    spans = sorted((r.info["_span"], r.name) for r in records)
    for ((_, end), name), ((start, _), other) in zip(spans, spans[1:]):
        if start < end:
            raise TslimFormatError(f"records {name} and {other} share payload bytes")
    by_name = {r.name: r for r in records}
    for record in records:
        check_record(record, by_name)
    total, budget = sum(decoded_bytes(r) for r in records), decode_budget(file_bytes)
    if total > budget:
        raise TslimFormatError(
            f"the records decode to {total} bytes: more than the {budget} a file of {file_bytes} bytes may "
            f"({MAX_EXPANSION}x its size + {DECODE_ALLOWANCE})"
        )
    return records


def _decode_all(records: list[Record]) -> dict[str, torch.Tensor]:
    """The state dict of ``records``, in their order; any failure is a :class:`TslimFormatError` naming the record."""
    done: Decoded = {}
    # records that derive from others (masks, codes, quantized weights) are decoded last
    for record in sorted(records, key=is_derived):
        try:
            tensor = decode_record(record, record.info["_payload"], done)
        except TslimFormatError:
            raise
        except StreamError as exc:
            raise TslimFormatError(f"record {record.name}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - hostile fields: whatever a decoder trips on is a bad file
            raise TslimFormatError(f"record {record.name}: malformed ({type(exc).__name__}: {exc})") from None
        dtype = DTYPES[record.dtype][0]
        if tensor.dtype != dtype or list(tensor.shape) != record.shape:
            raise TslimFormatError(f"record {record.name}: decodes to {tensor.dtype} {list(tensor.shape)}, not its dtype and shape")
        done[record.name] = (record, tensor)
    return {r.name: done[r.name][1] for r in records}


def parse(data: bytes, source: str = "<bytes>", *, verify: Verifier | None = None) -> TslimFile:
    """Parse and verify ``.tslim`` bytes; nothing is executed, every field is checked.

    Every size, count and offset is checked against the bytes present and the
    records' decoded size against :func:`~torchslim.io.bundle.decode_budget` before
    any tensor is decoded; ``verify`` (e.g. the architecture check of
    :func:`torchslim.io.tslim.model.load`) runs then too.

    Raises:
        TslimFormatError: naming what is wrong (truncated, bad magic, version, checksum, record).
    """
    version, header_len, header = _header(data, source)
    arch, structure, meta, quant = _fields(header, source)
    payload = memoryview(data)[PREFIX.size + header_len : len(data) - DIGEST]
    try:
        records = _records(header["records"], payload, len(data))
    except TslimFormatError as exc:
        raise TslimFormatError(f"{source}: {exc}") from None
    f = TslimFile(source, version, arch, structure, meta, list(header["records"]), {}, header_len, len(data), quant)
    if verify is not None:
        verify(f, records)  # its errors name the file themselves
    try:
        f.state = _decode_all(records)
    except TslimFormatError as exc:
        raise TslimFormatError(f"{source}: {exc}") from None
    return f


def record_from(entry: Any, payload: memoryview) -> Record:
    """The record a header ``entry`` describes, its payload parts (CRC-32 checked) in ``info["_payload"]``."""
    if not isinstance(entry, dict):
        raise TslimFormatError("a record entry is not a mapping")
    name = entry.get("name")
    if not isinstance(name, str) or not name or len(name) > _MAX_NAME:
        raise TslimFormatError(f"a record has no name (or one of more than {_MAX_NAME} characters)")
    shape, dtype, enc, parts = check_shape(entry.get("shape"), name), entry.get("dtype"), entry.get("enc"), entry.get("parts")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise TslimFormatError(f"record {name}: unsupported dtype {dtype!r}")
    if not isinstance(enc, str):
        raise TslimFormatError(f"record {name}: bad encoding {enc!r}")
    if not isinstance(parts, list) or len(parts) > _MAX_PARTS or not all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], int) and not isinstance(p[1], bool)
        and 0 <= p[1] <= len(payload)
        for p in parts
    ):
        raise TslimFormatError(f"record {name}: bad parts list")
    if len({p[0] for p in parts}) != len(parts):
        raise TslimFormatError(f"record {name}: a part name appears twice")
    off = int_field(entry, "off", 0, len(payload), name)
    total = sum(p[1] for p in parts)
    if off + total > len(payload):
        raise TslimFormatError(f"record {name}: payload runs past the end of the file")
    crc = entry.get("crc")
    if not isinstance(crc, int) or zlib.crc32(payload[off : off + total]) != crc:
        raise TslimFormatError(f"record {name}: CRC-32 mismatch")
    chunks, pos = {}, off
    for part, length in parts:
        chunks[part] = bytes(payload[pos : pos + length])
        pos += length
    info = {k: v for k, v in entry.items() if k not in _ENTRY_KEYS}
    info["_payload"], info["_span"] = chunks, (off, off + total)
    record = Record(name, shape, dtype, enc, [], info)
    codec_of(record)  # an unknown encoding is refused here, before anything is decoded
    return record


def read(path: str | Path, *, verify: Verifier | None = None) -> TslimFile:
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
    return parse(read_bytes(path), str(path), verify=verify)


def read_bytes(path: str | Path) -> bytes:
    """The bytes of the file ``path`` (a regular file of at most :data:`MAX_FILE` bytes), or a :class:`TslimFormatError`."""
    p = Path(path)
    try:
        return read_limited(p, MAX_FILE)
    except OSError as exc:
        raise TslimFormatError(f"cannot read {p}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise TslimFormatError(f"cannot read {p}: {exc}") from None
