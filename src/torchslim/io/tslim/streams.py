"""Integer streams of the ``.tslim`` container: sparse positions as gaps, fixed-width and Huffman packing.

Sparse positions are stored as *relative indices* (Deep Compression): the
distance from the previous stored position. With ``index_bits = b`` a gap
symbol ``s`` in ``0 .. 2**b - 2`` means "the next entry is ``s + 1`` positions
further"; the symbol ``2**b - 1`` is an escape meaning "skip ``2**b - 1``
positions, no entry here". The paper writes a filler zero weight for a gap
that does not fit; the escape does the same without storing a value.

A stream of symbols is then packed either at a fixed width or with a canonical
Huffman code (:mod:`torchslim.io.tslim.huffman`), whichever the caller asks for;
:func:`best_gap_width` picks the index width that makes the coded gaps smallest.

Example:
    >>> pos = np.array([0, 3, 40])
    >>> sym = gap_symbols(pos, 4)          # 15 is the escape
    >>> sym.tolist()
    [0, 2, 15, 15, 6]
    >>> positions_from_gaps(gap_symbols(pos, 4), 4, 41).tolist()
    [0, 3, 40]
"""

from __future__ import annotations

import numpy as np

from torchslim.errors import TorchslimError
from torchslim.io.tslim.huffman import HuffmanCode, HuffmanError


class StreamError(TorchslimError):
    """A packed stream does not decode to a valid sequence."""


def gap_symbols(positions: np.ndarray, index_bits: int) -> np.ndarray:
    """Gap symbols (with escapes) for sorted, distinct ``positions`` (see the module doc)."""
    if not 1 <= index_bits <= 24:
        raise ValueError(f"index_bits must be in 1..24, got {index_bits}")
    positions = np.asarray(positions, dtype=np.int64)
    if positions.size == 0:
        return np.zeros(0, np.int64)
    esc = (1 << index_bits) - 1
    dist = np.diff(positions, prepend=-1)  # >= 1
    escapes = (dist - 1) // esc
    rem = (dist - 1) - escapes * esc
    counts = escapes + 1
    out = np.full(int(counts.sum()), esc, dtype=np.int64)
    out[np.cumsum(counts) - 1] = rem
    return out


def positions_from_gaps(symbols: np.ndarray, index_bits: int, numel: int) -> np.ndarray:
    """Inverse of :func:`gap_symbols`; raises :class:`StreamError` unless the positions fit ``numel``."""
    symbols = np.asarray(symbols, dtype=np.int64)
    if symbols.size == 0:
        return np.zeros(0, np.int64)
    esc = (1 << index_bits) - 1
    if int(symbols.min()) < 0 or int(symbols.max()) > esc:
        raise StreamError(f"gap symbol out of range 0..{esc}")
    is_esc = symbols == esc
    if bool(is_esc[-1]):
        raise StreamError("gap stream ends with an escape")
    advance = np.where(is_esc, esc, symbols + 1)
    positions = (np.cumsum(advance) - 1)[~is_esc]
    if positions.size and int(positions[-1]) >= numel:
        raise StreamError(f"sparse position {int(positions[-1])} beyond the tensor's {numel} elements")
    return positions


def pack_fixed(symbols: np.ndarray, bits: int) -> bytes:
    """Pack non-negative ``symbols`` at ``bits`` bits each, most significant bit first."""
    symbols = np.asarray(symbols, dtype=np.uint64)
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in 1..32, got {bits}")
    if symbols.size and int(symbols.max()) >> bits:
        raise ValueError(f"a symbol does not fit in {bits} bits")
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    table = ((symbols[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(table.ravel()).tobytes()


def unpack_fixed(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_fixed`; raises :class:`StreamError` when ``data`` is too short."""
    if count < 0 or not 1 <= bits <= 32:
        raise StreamError(f"invalid fixed-width stream (bits {bits}, count {count})")
    need = (bits * count + 7) // 8
    if len(data) != need:
        raise StreamError(f"fixed-width stream has {len(data)} bytes, expected {need}")
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=bits * count).reshape(count, bits)
    out = np.zeros(count, dtype=np.int64)
    for column in range(bits):  # one pass per bit: the temporaries stay at one integer per symbol
        out <<= 1
        out |= flat[:, column]
    return out


def encode_stream(symbols: np.ndarray, n_symbols: int, coding: str) -> dict[str, bytes]:
    """``{"table": ..., "data": ...}`` for ``coding`` ``huffman``; ``{"data": ...}`` for ``fixed``."""
    if coding == "huffman":
        code = HuffmanCode.from_symbols(symbols, n_symbols)
        return {"table": code.to_bytes(), "data": code.encode(symbols)}
    if coding == "fixed":
        return {"data": pack_fixed(symbols, fixed_width(n_symbols))}
    raise ValueError(f"unknown coding {coding!r}; allowed: huffman, fixed")


def decode_stream(parts: dict[str, bytes], n_symbols: int, count: int, coding: str) -> np.ndarray:
    """Inverse of :func:`encode_stream`; every symbol checked to lie in ``0 .. n_symbols - 1``."""
    try:
        if coding == "huffman":
            code, used = HuffmanCode.from_bytes(parts["table"], n_symbols=n_symbols, max_present=count)
            if used != len(parts["table"]):
                raise StreamError("Huffman table does not match its stream")
            out = code.decode(parts["data"], count)
        elif coding == "fixed":
            out = unpack_fixed(parts["data"], fixed_width(n_symbols), count)
        else:
            raise StreamError(f"unknown stream coding {coding!r}")
    except HuffmanError as exc:
        raise StreamError(str(exc)) from None
    except KeyError as exc:
        raise StreamError(f"stream lacks its {exc} part") from None
    if out.size != count or (out.size and (int(out.min()) < 0 or int(out.max()) >= n_symbols)):
        raise StreamError("stream decodes to symbols out of range")
    return out


def fixed_width(n_symbols: int) -> int:
    """Bits per symbol of a fixed-width stream over ``n_symbols`` symbols (at least 1)."""
    return max(1, int(n_symbols - 1).bit_length())


def stream_bytes(symbols: np.ndarray, n_symbols: int, coding: str) -> int:
    """Bytes :func:`encode_stream` would write (without writing it)."""
    if coding == "huffman":
        code = HuffmanCode.from_symbols(symbols, n_symbols)
        return len(code.to_bytes()) + (code.encoded_bits(symbols) + 7) // 8
    return (fixed_width(n_symbols) * np.asarray(symbols).size + 7) // 8


def best_gap_width(positions: np.ndarray, coding: str, widths: range = range(2, 17)) -> int:
    """The index width (bits) whose gap stream is smallest once coded with ``coding``.

    Example:
        >>> best_gap_width(np.arange(0, 10_000, 10), "fixed")
        4
    """
    best, best_size = widths[0], None
    for bits in widths:
        size = stream_bytes(gap_symbols(positions, bits), 1 << bits, coding)
        if best_size is None or size < best_size:
            best, best_size = bits, size
    return best
