"""Canonical Huffman coding moved to :mod:`torchslim.io.tslim.huffman`; this module re-exports its names.

The decoder's bit-window kernels are in :mod:`torchslim.io.tslim.huffman_windows`.
"""

from torchslim.errors import TorchslimError
from torchslim.io.tslim.huffman import (
    _CHUNK,
    _PACKED,
    _RUNS,
    _SEGMENT,
    MAX_LENGTH,
    MAX_SYMBOLS,
    HuffmanCode,
    HuffmanError,
    _as_symbols,
    _check_coded,
    _counts,
    _package_merge,
    _read_varint,
    _varint,
    entropy_bits,
)
from torchslim.io.tslim.huffman_windows import chain as _chain
from torchslim.io.tslim.huffman_windows import segment as _segment
from torchslim.io.tslim.huffman_windows import slot_table as _slot_table
from torchslim.io.tslim.huffman_windows import slots as _slots
from torchslim.io.tslim.huffman_windows import windows as _windows
from torchslim.io.tslim.huffman_windows import windows_at as _windows_at

# private names included: code that reached into the module before it moved keeps working
__all__ = [
    "MAX_LENGTH",
    "MAX_SYMBOLS",
    "_CHUNK",
    "_PACKED",
    "_RUNS",
    "_SEGMENT",
    "HuffmanCode",
    "HuffmanError",
    "TorchslimError",
    "_as_symbols",
    "_chain",
    "_check_coded",
    "_counts",
    "_package_merge",
    "_read_varint",
    "_segment",
    "_slot_table",
    "_slots",
    "_varint",
    "_windows",
    "_windows_at",
    "entropy_bits",
]
