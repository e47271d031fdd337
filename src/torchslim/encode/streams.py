"""Integer streams moved to :mod:`torchslim.io.tslim.streams`; this module re-exports its names."""

from torchslim.errors import TorchslimError
from torchslim.io.tslim.huffman import HuffmanCode, HuffmanError
from torchslim.io.tslim.streams import (
    StreamError,
    best_gap_width,
    decode_stream,
    encode_stream,
    fixed_width,
    gap_symbols,
    pack_fixed,
    positions_from_gaps,
    stream_bytes,
    unpack_fixed,
)

__all__ = [
    "HuffmanCode",
    "HuffmanError",
    "StreamError",
    "TorchslimError",
    "best_gap_width",
    "decode_stream",
    "encode_stream",
    "fixed_width",
    "gap_symbols",
    "pack_fixed",
    "positions_from_gaps",
    "stream_bytes",
    "unpack_fixed",
]
