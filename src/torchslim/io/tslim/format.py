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
:class:`TslimFormatError`, naming what is wrong.

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
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torchslim.io.tslim.codecs import Decoded, decode_record, is_derived
from torchslim.io.tslim.records import DTYPES, MAX_ELEMENTS, Record, TslimFormatError, int_field
from torchslim.io.tslim.streams import StreamError

__all__ = [
    "DIGEST",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_HEADER",
    "PREFIX",
    "SUFFIX",
    "TslimFile",
    "TslimFormatError",
    "assemble",
    "parse",
    "read",
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
_ENTRY_KEYS = ("name", "shape", "dtype", "enc", "off", "parts", "crc")


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


def assemble(
    records: list[Record],
    *,
    arch: dict[str, Any],
    structure: list[dict[str, Any]],
    quant: dict[str, Any] | None,
    meta: dict[str, Any],
) -> bytes:
    """The bytes of a ``.tslim`` file holding ``records`` (in order) and the header fields given."""
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
    header_bytes = zlib.compress(json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8"), 9)
    body = PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(header_bytes)) + header_bytes
    body += b"".join(b for r in records for _, b in r.parts)
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
    if hashlib.sha256(data[:-DIGEST]).digest() != data[-DIGEST:]:
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
        header = json.loads(text.decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TslimFormatError(f"{source}: unreadable header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != "tslim" or not isinstance(header.get("records"), list):
        raise TslimFormatError(f"{source}: header lacks the tslim format tag or its records")
    return version, header_len, header


def _decode_all(entries: list[Any], payload: memoryview) -> dict[str, torch.Tensor]:
    """The state dict of the header's record ``entries``, in their order."""
    parsed = [record_from(entry, payload) for entry in entries]
    if len({r.name for r in parsed}) != len(parsed):
        raise TslimFormatError("a record name appears twice")
    done: Decoded = {}
    # records that derive from others (masks, codes, quantized weights) are decoded last
    for record in sorted(parsed, key=is_derived):
        done[record.name] = (record, decode_record(record, record.info["_payload"], done))
    return {r.name: done[r.name][1] for r in parsed}


def parse(data: bytes, source: str = "<bytes>") -> TslimFile:
    """Parse and verify ``.tslim`` bytes; nothing is executed, every field is checked.

    Raises:
        TslimFormatError: naming what is wrong (truncated, bad magic, version, checksum, record).
    """
    version, header_len, header = _header(data, source)
    payload = memoryview(data)[PREFIX.size + header_len : len(data) - DIGEST]
    try:
        state = _decode_all(header["records"], payload)
    except (StreamError, TslimFormatError) as exc:
        raise TslimFormatError(f"{source}: {exc}") from None
    arch, structure, meta = header.get("arch", {}), header.get("structure", []), header.get("meta", {})
    quant = header.get("quant")
    if not isinstance(arch, dict) or not isinstance(structure, list) or not isinstance(meta, dict):
        raise TslimFormatError(f"{source}: header fields arch/structure/meta have the wrong types")
    if quant is not None and not isinstance(quant, dict):
        raise TslimFormatError(f"{source}: header field quant has the wrong type")
    return TslimFile(source, version, arch, structure, meta, list(header["records"]), state, header_len, len(data), quant)


def record_from(entry: Any, payload: memoryview) -> Record:
    """The record a header ``entry`` describes, its payload parts (CRC-32 checked) in ``info["_payload"]``."""
    if not isinstance(entry, dict):
        raise TslimFormatError("a record entry is not a mapping")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise TslimFormatError("a record has no name")
    shape, dtype, enc, parts = entry.get("shape"), entry.get("dtype"), entry.get("enc"), entry.get("parts")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d for d in shape):
        raise TslimFormatError(f"record {name}: bad shape {shape!r}")
    if math.prod(shape) > MAX_ELEMENTS:
        raise TslimFormatError(f"record {name}: shape {shape} is too large")
    if dtype not in DTYPES:
        raise TslimFormatError(f"record {name}: unsupported dtype {dtype!r}")
    if not isinstance(enc, str):
        raise TslimFormatError(f"record {name}: bad encoding {enc!r}")
    if not isinstance(parts, list) or not all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], int) and p[1] >= 0 for p in parts
    ):
        raise TslimFormatError(f"record {name}: bad parts list")
    off = int_field(entry, "off", 0, len(payload), name)
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
    info = {k: v for k, v in entry.items() if k not in _ENTRY_KEYS}
    info["_payload"] = chunks
    return Record(name, shape, dtype, enc, [], info)


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
