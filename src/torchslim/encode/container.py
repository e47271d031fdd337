"""The ``.tslim`` container moved to :mod:`torchslim.io.tslim`; this module re-exports its names.

Where each part lives now: the binary layout and :func:`parse` in
:mod:`torchslim.io.tslim.format`, the codecs in :mod:`torchslim.io.tslim.codecs`,
the choice of codec in :mod:`torchslim.io.tslim.policy`, :func:`load` in
:mod:`torchslim.io.tslim.model`, :func:`layer_table` in
:mod:`torchslim.io.tslim.inspect`; the quantized-weight codec and :func:`save`
(which offers a quantized model's integers) in :mod:`torchslim.encode.tslim`.

Example:
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> model = ts.create_model("lenet300")
    >>> path = save(model, f"{tmp.name}/lenet300.tslim", arch="zoo:lenet300")
    >>> type(load(path)).__name__
    'LeNet300'
    >>> tmp.cleanup()
"""

from __future__ import annotations

from typing import Any

import torch

from torchslim.encode.kmeans import CODES_SUFFIX
from torchslim.encode.tslim import decode_quantized as _decode_quantized
from torchslim.encode.tslim import encode_model, offers_of, save
from torchslim.encode.tslim import quantized_record as _quantized
from torchslim.encode.tslim import quantized_weights as _quantized_weights
from torchslim.errors import CheckpointError
from torchslim.graph import provenance
from torchslim.io.atomic import atomic_write_bytes
from torchslim.io.tslim.codecs import bits_record as _bits_record
from torchslim.io.tslim.codecs import cluster_codes as _cluster_codes
from torchslim.io.tslim.codecs import decode_record as _decode
from torchslim.io.tslim.codecs import encode_positions as _positions_parts
from torchslim.io.tslim.codecs import has_support as _has_support
from torchslim.io.tslim.codecs import raw_record as _raw
from torchslim.io.tslim.codecs import read_positions as _positions
from torchslim.io.tslim.codecs import shared_record as _shared
from torchslim.io.tslim.codecs import sparse_record as _sparse
from torchslim.io.tslim.codecs import support as _support
from torchslim.io.tslim.format import DIGEST as _DIGEST
from torchslim.io.tslim.format import (
    FORMAT_VERSION,
    MAGIC,
    SUFFIX,
    TslimFile,
    TslimFormatError,
    parse,
    read,
    record_from,
)
from torchslim.io.tslim.format import MAX_HEADER as _MAX_HEADER
from torchslim.io.tslim.format import PREFIX as _PREFIX
from torchslim.io.tslim.inspect import LayerRow, layer_table
from torchslim.io.tslim.model import build_from_arch, load
from torchslim.io.tslim.policy import best_record as _best_record
from torchslim.io.tslim.policy import encode_state
from torchslim.io.tslim.policy import roundtrips as _roundtrips
from torchslim.io.tslim.records import BITS_VIEW as _BITS_VIEW
from torchslim.io.tslim.records import CODINGS
from torchslim.io.tslim.records import DTYPES as _DTYPES
from torchslim.io.tslim.records import MAX_ELEMENTS as _MAX_ELEMENTS
from torchslim.io.tslim.records import Record as _Record
from torchslim.io.tslim.records import coding_field as _coding
from torchslim.io.tslim.records import dtype_name as _dtype_name
from torchslim.io.tslim.records import from_pattern as _from_pattern
from torchslim.io.tslim.records import int_field as _int
from torchslim.io.tslim.records import pattern as _pattern
from torchslim.io.tslim.records import same_bits as _same_bits
from torchslim.io.tslim.streams import (
    StreamError,
    best_gap_width,
    decode_stream,
    encode_stream,
    gap_symbols,
    positions_from_gaps,
)

MASK_SUFFIX = "_mask"
_DERIVED = ("support_of", "codes_of", "quantized")


def _record_from(entry: Any, payload: memoryview, source: str) -> _Record:
    """:func:`torchslim.io.tslim.format.record_from` (``source`` is unused, as it always was)."""
    return record_from(entry, payload)


def _encode_state(
    state: dict[str, torch.Tensor], coding: str, quantized: dict[str, tuple[torch.Tensor, Any, str, torch.Tensor]] | None = None
) -> list[_Record]:
    """:func:`torchslim.io.tslim.policy.encode_state` with ``quantized`` weights as :func:`_quantized_weights` gives them."""
    return encode_state(state, coding, offers_of(quantized or {}, state, coding))


# private names included: code that reached into the module before it moved keeps working
__all__ = [
    "CODES_SUFFIX",
    "CODINGS",
    "FORMAT_VERSION",
    "MAGIC",
    "MASK_SUFFIX",
    "SUFFIX",
    "_BITS_VIEW",
    "_DERIVED",
    "_DIGEST",
    "_DTYPES",
    "_MAX_ELEMENTS",
    "_MAX_HEADER",
    "_PREFIX",
    "CheckpointError",
    "LayerRow",
    "StreamError",
    "TslimFile",
    "TslimFormatError",
    "_Record",
    "_best_record",
    "_bits_record",
    "_cluster_codes",
    "_coding",
    "_decode",
    "_decode_quantized",
    "_dtype_name",
    "_encode_state",
    "_from_pattern",
    "_has_support",
    "_int",
    "_pattern",
    "_positions",
    "_positions_parts",
    "_quantized",
    "_quantized_weights",
    "_raw",
    "_record_from",
    "_roundtrips",
    "_same_bits",
    "_shared",
    "_sparse",
    "_support",
    "atomic_write_bytes",
    "best_gap_width",
    "build_from_arch",
    "decode_stream",
    "encode_model",
    "encode_stream",
    "gap_symbols",
    "layer_table",
    "load",
    "parse",
    "positions_from_gaps",
    "provenance",
    "read",
    "save",
]
