"""Codecs of the ``.tslim`` container: how one tensor becomes a record's payload and back.

Each codec is a :class:`Codec` in the :data:`CODECS` registry, looked up by the
``enc`` name of a record:

- ``raw``: the tensor's bytes;
- ``bits``: a boolean tensor at one bit per element;
- ``sparse``: the non-zeros' values (raw) and their positions as relative
  indices (:mod:`torchslim.io.tslim.streams`), Huffman-coded or fixed-width;
- ``shared`` (weight sharing): the codebook (bit patterns), the cluster index of
  every non-zero and the relative indices, each Huffman-coded or fixed-width.
  This is Deep Compression's storage;
- ``support_of`` / ``codes_of``: a pruning mask or a sharing-codes buffer that
  equals what another record already implies (0 bytes of payload).

A technique adds its own codec with :func:`register` (:mod:`torchslim.encode.quantized`
registers ``quantized``: a quantized layer's weight as its integers).

Example:
    >>> t = torch.tensor([0.0, 0.0, 1.5, 0.0, -2.0, 0.0])
    >>> record = SPARSE.encode("w", t, (t != 0).numpy(), "fixed")
    >>> record.enc, record.info["nnz"]
    ('sparse', 2)
    >>> decode_record(record, dict(record.parts), {}).tolist()
    [0.0, 0.0, 1.5, 0.0, -2.0, 0.0]
    >>> decode_record(Record("w", [6], "float32", "zip"), {}, {})
    Traceback (most recent call last):
        ...
    torchslim.io.tslim.records.TslimFormatError: record w: unknown encoding 'zip'; known: bits, codes_of, quantized, raw, shared, sparse, support_of
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from torchslim.io.tslim.records import (
    DTYPES,
    MAX_ELEMENTS,
    Record,
    TslimFormatError,
    coding_field,
    dtype_name,
    from_pattern,
    int_field,
    pattern,
)
from torchslim.io.tslim.streams import best_gap_width, decode_stream, encode_stream, gap_symbols, positions_from_gaps
from torchslim.registry import Registry

#: Records decoded so far, by name: ``(record, tensor)`` (what a derived record may read).
Decoded = dict[str, tuple[Record, torch.Tensor]]
Decoder = Callable[[Record, dict[str, bytes], Decoded], torch.Tensor]
#: ``(record, every record of the file by name)`` -> None: header-only checks, before anything is decoded
Checker = Callable[[Record, dict[str, Record]], None]


def _never(record: Record) -> bool:
    return False


def _nothing(record: Record, records: dict[str, Record]) -> None:
    return None


@dataclass(frozen=True)
class Codec:
    """One encoding of the container.

    Attributes:
        name: the ``enc`` of its records.
        encode: ``(name, tensor, ...) -> Record`` (its further arguments are the codec's own).
        decode: ``(record, payload parts, records decoded so far) -> tensor``; raises
            :class:`TslimFormatError` naming the record when the payload is malformed.
        derived: its records read other records, so they are decoded after every
            record that is not derived.
        stores_positions: whether a record stores the positions of its entries
            (a pruning mask can then be derived from it, ``support_of``).
        check: ``(record, records by name) -> None``: what the codec can check of a
            record from the header alone (the records it reads, their shapes and
            dtypes), run on every record before any is decoded; raises
            :class:`TslimFormatError` naming the record.
    """

    name: str
    encode: Callable[..., Record]
    decode: Decoder
    derived: bool = False
    stores_positions: Callable[[Record], bool] = _never
    check: Checker = _nothing


CODECS: Registry[Codec] = Registry("tslim encoding")


def register(codec: Codec) -> Codec:
    """Add ``codec`` to :data:`CODECS` (each name once)."""
    return CODECS.register(codec.name)(codec)


def codec_of(record: Record) -> Codec:
    """The codec of ``record``; an unknown ``enc`` is a :class:`TslimFormatError` listing the known ones."""
    if record.enc not in CODECS:
        raise TslimFormatError(f"record {record.name}: unknown encoding {record.enc!r}; known: {', '.join(CODECS.names())}")
    return CODECS.get(record.enc)


def check_record(record: Record, records: dict[str, Record]) -> None:
    """The codec's header-only checks of ``record`` (``records``: every record of the file, by name)."""
    codec_of(record).check(record, records)


def decode_record(record: Record, payload: dict[str, bytes], done: Decoded) -> torch.Tensor:
    """Decode one record (``done`` holds records already decoded, for derived encodings)."""
    return codec_of(record).decode(record, payload, done)


def is_derived(record: Record) -> bool:
    """Whether ``record`` is decoded after the others (it reads them); unknown encodings are not."""
    return record.enc in CODECS and CODECS.get(record.enc).derived


def has_support(record: Record) -> bool:
    """Whether ``record`` stores positions (so a mask can be derived from it)."""
    return record.enc in CODECS and CODECS.get(record.enc).stores_positions(record)


# -- positions (relative indices) -----------------------------------------------------------------


def encode_positions(positions: np.ndarray, coding: str, numel: int | None = None) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """Header fields (``ib``, ``n_gap``) and ``gap_*`` parts storing sorted ``positions`` as relative indices.

    When the positions are every element of a tensor of ``numel`` elements, the header says
    so (``all: 1``) and no relative index is stored (a Huffman-coded gap costs at least one
    bit per entry, as much again as a 1-bit code).

    >>> encode_positions(np.arange(6), "huffman", numel=6)
    ({'all': 1}, [])
    """
    if numel is not None and positions.size == numel and numel > 0:
        return {"all": 1}, []
    bits = best_gap_width(positions, coding)
    symbols = gap_symbols(positions, bits)
    stream = encode_stream(symbols, 1 << bits, coding)
    return {"ib": bits, "n_gap": int(symbols.size)}, [(f"gap_{k}", v) for k, v in stream.items()]


def read_positions(record: Record, payload: dict[str, bytes], numel: int) -> np.ndarray:
    """The positions stored by :func:`encode_positions`, checked against the record's ``nnz`` and ``numel``.

    Each position takes one gap symbol, so ``nnz <= n_gap``; the stream's length
    is checked against its bytes before it is decoded. A record storing every element
    (``all: 1``) has ``nnz == numel`` and no ``gap_*`` part.
    """
    info = record.info
    if "all" in info:
        if info["all"] != 1 or "ib" in info or "n_gap" in info or any(k.startswith("gap_") for k in payload):
            raise TslimFormatError(f"record {record.name}: 'all' must be 1 and comes without relative indices")
        int_field(info, "nnz", numel, numel, record.name)
        return np.arange(numel, dtype=np.int64)
    bits, n_gap = int_field(info, "ib", 1, 24, record.name), int_field(info, "n_gap", 0, MAX_ELEMENTS, record.name)
    nnz = int_field(info, "nnz", 0, min(numel, n_gap), record.name)
    gap_parts = {k[4:]: v for k, v in payload.items() if k.startswith("gap_")}
    gaps = decode_stream(gap_parts, 1 << bits, n_gap, coding_field(info, record.name))
    positions = positions_from_gaps(gaps, bits, numel)
    if positions.size != nnz:
        raise TslimFormatError(f"record {record.name}: {positions.size} positions decoded, header says {nnz}")
    return positions


def support(record: Record, payload: dict[str, bytes]) -> np.ndarray:
    """Flat boolean support (stored positions) of a record that stores positions."""
    numel = math.prod(record.shape)
    positions = read_positions(record, payload, numel)
    out = np.zeros(numel, dtype=bool)
    out[positions] = True
    return out


def cluster_codes(record: Record, payload: dict[str, bytes], count: int) -> np.ndarray:
    """The cluster index of each of the ``count`` stored entries of a shared record."""
    k = int_field(record.info, "k", 0, 1 << 24, record.name)
    parts = {n[5:]: v for n, v in payload.items() if n.startswith("code_")}
    return decode_stream(parts, max(k, 1), count, coding_field(record.info, record.name))


# -- raw and bits ----------------------------------------------------------------------------------


def raw_record(name: str, t: torch.Tensor) -> Record:
    """``t`` as it is (a boolean tensor: at one bit per element)."""
    if t.dtype == torch.bool:
        return bits_record(name, t)
    return Record(name, list(t.shape), dtype_name(t.dtype), "raw", [("data", pattern(t).tobytes())])


def _decode_raw(record: Record, payload: dict[str, bytes], done: Decoded) -> torch.Tensor:
    numel = math.prod(record.shape)
    np_dtype = DTYPES[record.dtype][1]
    data = payload.get("data", b"")
    if len(data) != numel * np_dtype.itemsize:
        raise TslimFormatError(f"record {record.name}: {len(data)} bytes of data for {numel} {record.dtype} elements")
    return from_pattern(np.frombuffer(data, dtype=np_dtype), record.dtype, record.shape)


def bits_record(name: str, t: torch.Tensor) -> Record:
    """A boolean tensor at one bit per element."""
    data = np.packbits(t.detach().cpu().flatten().numpy().astype(bool)).tobytes()
    return Record(name, list(t.shape), "bool", "bits", [("data", data)])


def _decode_bits(record: Record, payload: dict[str, bytes], done: Decoded) -> torch.Tensor:
    numel = math.prod(record.shape)
    if record.dtype != "bool":
        raise TslimFormatError(f"record {record.name}: bits are bool, not {record.dtype}")
    data = payload.get("data", b"")
    if len(data) != (numel + 7) // 8:
        raise TslimFormatError(f"record {record.name}: {len(data)} bytes of bits for {numel} elements")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=numel).astype(bool)
    return torch.from_numpy(bits).reshape(record.shape)


# -- sparse and shared -----------------------------------------------------------------------------


def sparse_record(name: str, t: torch.Tensor, where: np.ndarray, coding: str) -> Record:
    """The values of ``t`` at the flat boolean ``where`` and their positions."""
    bits = pattern(t)
    positions = np.flatnonzero(where)
    info, parts = encode_positions(positions, coding)
    info.update(nnz=int(positions.size), coding=coding)
    values = bits[positions].tobytes()
    return Record(name, list(t.shape), dtype_name(t.dtype), "sparse", [("values", values), *parts], info)


def _decode_sparse(record: Record, payload: dict[str, bytes], done: Decoded) -> torch.Tensor:
    numel = math.prod(record.shape)
    np_dtype = DTYPES[record.dtype][1]
    positions = read_positions(record, payload, numel)  # as many as the gap bytes allow
    values = payload.get("values", b"")
    if len(values) != positions.size * np_dtype.itemsize:  # checked before the tensor is allocated
        raise TslimFormatError(f"record {record.name}: values part has {len(values)} bytes for {positions.size} entries")
    out = np.zeros(numel, dtype=np_dtype)
    out[positions] = np.frombuffer(values, dtype=np_dtype)
    return from_pattern(out, record.dtype, record.shape)


def shared_record(name: str, t: torch.Tensor, codes: torch.Tensor, coding: str) -> Record:
    """A shared tensor: its codebook, the cluster ``codes`` (``-1``: not stored) and their positions."""
    flat_codes = codes.detach().cpu().flatten().long().numpy()
    positions = np.flatnonzero(flat_codes >= 0)
    symbols = flat_codes[positions]
    k = int(symbols.max()) + 1 if symbols.size else 0
    bits = pattern(t)
    first = np.full(k, -1, dtype=np.int64)
    first[symbols[::-1]] = positions[::-1]
    codebook = bits[first] if k else bits[:0]
    info, parts = encode_positions(positions, coding, numel=flat_codes.size)
    code_stream = encode_stream(symbols, max(k, 1), coding)
    info.update(nnz=int(positions.size), k=k, coding=coding)
    return Record(
        name,
        list(t.shape),
        dtype_name(t.dtype),
        "shared",
        [("codebook", codebook.tobytes()), *[(f"code_{n}", v) for n, v in code_stream.items()], *parts],
        info,
    )


def _decode_shared(record: Record, payload: dict[str, bytes], done: Decoded) -> torch.Tensor:
    numel = math.prod(record.shape)
    np_dtype = DTYPES[record.dtype][1]
    k = int_field(record.info, "k", 0, 1 << 24, record.name)
    codebook = payload.get("codebook", b"")
    if len(codebook) != k * np_dtype.itemsize:  # checked before anything is decoded
        raise TslimFormatError(f"record {record.name}: codebook has {len(codebook)} bytes for {k} entries")
    positions = read_positions(record, payload, numel)
    symbols = cluster_codes(record, payload, positions.size)
    out = np.zeros(numel, dtype=np_dtype)
    out[positions] = np.frombuffer(codebook, dtype=np_dtype)[symbols]
    return from_pattern(out, record.dtype, record.shape)


# -- derived: a mask or codes implied by another record --------------------------------------------


def support_of_record(name: str, t: torch.Tensor, of: str) -> Record:
    """A boolean mask equal to the support of record ``of``: no payload."""
    return Record(name, list(t.shape), "bool", "support_of", [], {"of": of})


def codes_of_record(name: str, t: torch.Tensor, of: str) -> Record:
    """A sharing-codes buffer equal to the cluster indices of the shared record ``of``: no payload."""
    return Record(name, list(t.shape), dtype_name(t.dtype), "codes_of", [], {"of": of})


def _source(record: Record, done: Decoded) -> tuple[Record, dict[str, bytes]]:
    """The earlier record a derived record reads, and its payload."""
    of = record.info.get("of")
    if not isinstance(of, str) or of not in done:
        raise TslimFormatError(f"record {record.name} refers to {of!r}, which is not an earlier record")
    source, _ = done[of]
    _check_source(record, {of: source})
    return source, source.info["_payload"]


def _check_source(record: Record, records: dict[str, Record]) -> None:
    """A derived mask or codes record: its source exists, stores positions, has its shape; the dtypes fit."""
    of = record.info.get("of")
    source = records.get(of) if isinstance(of, str) else None
    if source is None:
        raise TslimFormatError(f"record {record.name} refers to {of!r}, which is not an earlier record")
    if not has_support(source) or source.shape != record.shape:
        raise TslimFormatError(f"record {record.name} cannot be derived from {of} ({source.enc}, shape {source.shape})")
    if record.enc == "support_of" and record.dtype != "bool":
        raise TslimFormatError(f"record {record.name}: a support must be bool, not {record.dtype}")
    if record.enc == "codes_of" and (source.enc != "shared" or record.dtype not in ("int16", "int32", "int64")):
        raise TslimFormatError(f"record {record.name}: codes derive only from a shared record, as integers")


def _decode_support_of(record: Record, payload: dict[str, bytes], done: Decoded) -> torch.Tensor:
    if record.dtype != "bool":
        raise TslimFormatError(f"record {record.name}: a support must be bool, not {record.dtype}")
    source, src_payload = _source(record, done)
    return torch.from_numpy(support(source, src_payload)).reshape(record.shape)


def _decode_codes_of(record: Record, payload: dict[str, bytes], done: Decoded) -> torch.Tensor:
    source, src_payload = _source(record, done)
    if source.enc != "shared" or record.dtype not in ("int16", "int32", "int64"):
        raise TslimFormatError(f"record {record.name}: codes derive only from a shared record, as integers")
    numel = math.prod(record.shape)
    positions = read_positions(source, src_payload, numel)
    symbols = cluster_codes(source, src_payload, positions.size)
    codes = np.full(numel, -1, dtype=np.int64)
    codes[positions] = symbols
    return from_pattern(codes, record.dtype, record.shape)


def _always(record: Record) -> bool:
    return True


RAW = register(Codec("raw", raw_record, _decode_raw))
BITS = register(Codec("bits", bits_record, _decode_bits))
SPARSE = register(Codec("sparse", sparse_record, _decode_sparse, stores_positions=_always))
SHARED = register(Codec("shared", shared_record, _decode_shared, stores_positions=_always))
SUPPORT_OF = register(Codec("support_of", support_of_record, _decode_support_of, derived=True, check=_check_source))
CODES_OF = register(Codec("codes_of", codes_of_record, _decode_codes_of, derived=True, check=_check_source))
