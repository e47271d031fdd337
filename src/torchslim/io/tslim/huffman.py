"""Canonical Huffman coding, vectorised with numpy (Deep Compression's last stage).

Deep Compression Huffman-codes the cluster index of every shared weight and the
gaps between sparse indices: both are small integers with skewed histograms, and
a Huffman code brings them within a fraction of a bit per symbol of their
entropy. This module codes any stream of integers ``0 .. n_symbols - 1``.

The code is *canonical*: it is fully described by the code length of every
symbol (:attr:`HuffmanCode.lengths`, ``0`` = the symbol never occurs), and the
code values are assigned in ``(length, symbol)`` order, each the previous one
plus one, shifted left when the length grows. Lengths come from package-merge,
so they are optimal (those of a Huffman tree) and never exceed ``max_length``
(at most :data:`MAX_LENGTH` = 32 bits); the Kraft sum is exactly 1 whenever two
or more symbols occur, and a lone symbol gets the 1-bit code ``0``.

Payload: the codes of the symbols one after the other, most significant bit
first, the last byte padded with zero bits. The payload does not record how
many symbols it holds; the container stores the count next to it. The table
format is in :meth:`HuffmanCode.to_bytes`.

Encoding and decoding are vectorised, with no Python loop per symbol: decoding
reads a ``max length``-bit window at every bit position of the payload, finds
the code length starting there by a binary search over the canonical code
boundaries, and follows the chain of code starts from bit 0 by pointer doubling.
It works through the payload a segment (4 Mbit) at a time, so its memory stays
bounded (about 10 bytes per bit of a segment) however long the stream. A million
symbols encode and decode in a fraction of a second. Any malformed
table or payload (truncated, an invalid code, too few bits for the count) raises
:class:`HuffmanError`.

Example:
    >>> import numpy as np
    >>> idx = np.random.default_rng(0).geometric(0.3, 10_000).clip(max=16) - 1
    >>> code = HuffmanCode.from_symbols(idx, n_symbols=16)
    >>> payload = code.encode(idx)
    >>> bool((code.decode(payload, idx.size) == idx).all())
    True
    >>> table = code.to_bytes()
    >>> HuffmanCode.from_bytes(table)[0] == code
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from torchslim.errors import TorchslimError
from torchslim.io.tslim.huffman_windows import chain, segment, slot_table, windows_at

MAX_LENGTH = 32
"""Longest code length this module writes or accepts (windows are read 64 bits at a time)."""
MAX_SYMBOLS = 1 << 24
"""Largest alphabet a table may declare (a guard against garbage tables asking for huge arrays)."""

_PACKED, _RUNS = 0, 1
_CHUNK = 1 << 18  # symbols encoded per numpy pass
_SEGMENT = 1 << 22  # bit positions decoded per segment (a multiple of 8): bounds the memory


class HuffmanError(TorchslimError):
    """A Huffman table or payload is malformed, or a symbol cannot be coded."""


# ----------------------------------------------------------------------------- helpers


def _as_symbols(symbols: Any, n_symbols: int) -> np.ndarray:
    """``symbols`` flattened (integer dtype kept, no copy), checked to lie in ``0 .. n_symbols - 1``."""
    arr = np.asarray(symbols)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise HuffmanError(f"symbols must be integers, got dtype {arr.dtype}")
    arr = arr.ravel()
    lo, hi = arr.min(), arr.max()
    if lo < 0 or hi >= n_symbols:
        bad = lo if lo < 0 else hi
        raise HuffmanError(f"symbol {int(bad)} out of range 0..{n_symbols - 1}")
    return arr


def _counts(sym: np.ndarray, n_symbols: int) -> np.ndarray:
    """How often each symbol occurs in the checked stream ``sym``."""
    return np.bincount(sym.astype(np.intp, copy=False), minlength=n_symbols)


def _check_coded(counts: np.ndarray, lengths: np.ndarray) -> None:
    """Raise :class:`HuffmanError` if a symbol that occurs has no code."""
    missing = np.flatnonzero((counts > 0) & (lengths == 0))
    if missing.size:
        raise HuffmanError(f"symbol {int(missing[0])} has no code (it was absent when the code was built)")


def _varint(value: int) -> bytes:
    """Unsigned LEB128: 7 bits a byte, least significant first, high bit = more follows."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int, what: str) -> tuple[int, int]:
    """``(value, new position)`` of the varint at ``pos``; raises :class:`HuffmanError` if cut off or too long."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise HuffmanError(f"Huffman table truncated while reading {what}")
        if shift > 56:
            raise HuffmanError(f"Huffman table has an over-long varint for {what}")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _package_merge(weights: np.ndarray, limit: int) -> np.ndarray:
    """Optimal code lengths, none above ``limit``, for ``weights`` sorted ascending (``2 <= n <= 2**limit``).

    The coin-collector form of package-merge: every symbol has one coin of each
    denomination ``2**-1 .. 2**-limit``; the cheapest set of coins worth ``n - 1``
    gives each symbol as many bits as it has coins selected. The list of every
    level is sorted, and the coins selected at a level are a prefix of its list,
    so only the package/leaf pattern of each list is kept and the prefixes are
    traced back from level 1.
    """
    n = weights.size
    packages_at: list[np.ndarray] = []  # per level limit-1 .. 1: is each list entry a package?
    current = weights
    for _ in range(limit - 1):
        m = current.size // 2
        packages = current[0 : 2 * m : 2] + current[1 : 2 * m : 2]  # sorted: pair sums of a sorted list
        # stable merge, leaves first on ties
        leaf_pos = np.arange(n) + np.searchsorted(packages, weights, side="left")
        pkg_pos = np.arange(m) + np.searchsorted(weights, packages, side="right")
        merged = np.empty(n + m, dtype=weights.dtype)
        merged[leaf_pos] = weights
        merged[pkg_pos] = packages
        is_package = np.zeros(n + m, dtype=bool)
        is_package[pkg_pos] = True
        packages_at.append(is_package)
        current = merged
    lengths = np.zeros(n, dtype=np.int64)
    take = 2 * n - 2  # coins selected at level 1
    for is_package in reversed(packages_at):  # level 1 first
        if take > is_package.size:  # cannot happen when n <= 2**limit
            raise HuffmanError("package-merge failed: too few coins")  # pragma: no cover
        n_packages = int(np.count_nonzero(is_package[:take]))
        lengths[: take - n_packages] += 1
        take = 2 * n_packages
    if take > n:  # pragma: no cover
        raise HuffmanError("package-merge failed: too few coins")
    lengths[:take] += 1
    return lengths


# ----------------------------------------------------------------------------- the code


@dataclass(frozen=True, eq=False)
class HuffmanCode:
    """A canonical prefix code over the symbols ``0 .. n_symbols - 1``, given by its code lengths.

    ``lengths[s]`` is the number of bits of symbol ``s`` (uint8, ``0`` = absent, at
    most :data:`MAX_LENGTH`). Construction checks the lengths form a complete
    code: Kraft sum exactly 1 when two or more symbols are present (one present
    symbol may have any length). Build one with :meth:`from_counts` or
    :meth:`from_symbols`; store it with :meth:`to_bytes`.

    Example:
        >>> code = HuffmanCode(np.array([1, 2, 3, 3], dtype=np.uint8))
        >>> [format(int(c), "b") for c in code.codes()]
        ['0', '10', '110', '111']
        >>> code.encode(np.array([0, 3, 1])).hex()  # 0 111 10 + zero padding
        '78'
    """

    lengths: np.ndarray

    def __post_init__(self) -> None:
        raw = np.asarray(self.lengths)
        if raw.ndim != 1:
            raise HuffmanError(f"code lengths must be 1-D, got shape {raw.shape}")
        if raw.size and raw.dtype.kind not in "iu":
            raise HuffmanError(f"code lengths must be integers, got dtype {raw.dtype}")
        if raw.size > MAX_SYMBOLS:
            raise HuffmanError(f"{raw.size} symbols: more than the {MAX_SYMBOLS} supported")
        if raw.size and (raw.min() < 0 or raw.max() > MAX_LENGTH):
            raise HuffmanError(f"code lengths must lie in 0..{MAX_LENGTH}, got {int(raw.min())}..{int(raw.max())}")
        lengths = raw.astype(np.uint8)
        lengths.setflags(write=False)
        object.__setattr__(self, "lengths", lengths)
        per_length = np.bincount(lengths, minlength=MAX_LENGTH + 1)
        present = int(per_length[1:].sum())
        if present >= 2:
            kraft = sum(int(c) << (MAX_LENGTH - ln) for ln, c in enumerate(per_length) if ln)
            if kraft != 1 << MAX_LENGTH:
                word = "over-full (not a prefix code)" if kraft > 1 << MAX_LENGTH else "incomplete"
                raise HuffmanError(f"code lengths are {word}: Kraft sum {kraft / 2.0**MAX_LENGTH:.6g}, must be 1")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HuffmanCode):
            return NotImplemented
        return np.array_equal(self.lengths, other.lengths)

    def __hash__(self) -> int:
        return hash(self.lengths.tobytes())

    def __repr__(self) -> str:
        present = int(np.count_nonzero(self.lengths))
        longest = int(self.lengths.max()) if self.lengths.size else 0
        return f"HuffmanCode(n_symbols={self.n_symbols}, present={present}, max_length={longest})"

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_counts(cls, counts: Any, max_length: int = 24) -> HuffmanCode:
        """The optimal code for symbol frequencies ``counts`` (one entry per symbol), no code above ``max_length``.

        Symbols with count 0 get no code. The lengths minimise ``sum(counts *
        lengths)`` under the length limit (package-merge): when the limit does not
        bind they are those of a Huffman tree. A single present symbol gets length
        1; all-zero counts give all lengths 0.

        Example:
            >>> HuffmanCode.from_counts(np.array([10, 5, 0, 1, 1])).lengths
            array([1, 2, 0, 3, 3], dtype=uint8)
        """
        if not 1 <= max_length <= MAX_LENGTH:
            raise HuffmanError(f"max_length must lie in 1..{MAX_LENGTH}, got {max_length}")
        c = np.asarray(counts)
        if c.ndim != 1:
            raise HuffmanError(f"counts must be 1-D, got shape {c.shape}")
        if c.size and c.dtype.kind not in "iuf":
            raise HuffmanError(f"counts must be numbers, got dtype {c.dtype}")
        weights = c.astype(np.float64 if c.dtype.kind == "f" else np.int64)
        if weights.size and (not np.isfinite(weights).all() or weights.min() < 0):
            raise HuffmanError("counts must be finite and non-negative")
        lengths = np.zeros(c.size, dtype=np.uint8)
        present = np.flatnonzero(weights > 0)
        if present.size == 1:
            lengths[present] = 1
        elif present.size >= 2:
            if present.size > 1 << max_length:
                raise HuffmanError(f"{present.size} symbols cannot all have codes of at most {max_length} bits")
            order = present[np.argsort(weights[present], kind="stable")]
            limit = min(max_length, present.size - 1)  # a Huffman tree is never deeper than n - 1
            lengths[order] = _package_merge(weights[order], limit)
        return cls(lengths)

    @classmethod
    def from_symbols(cls, symbols: Any, n_symbols: int, max_length: int = 24) -> HuffmanCode:
        """The optimal code for the stream ``symbols`` (integers in ``0 .. n_symbols - 1``).

        Example:
            >>> HuffmanCode.from_symbols(np.array([0, 0, 0, 2, 1]), n_symbols=4).lengths
            array([1, 2, 2, 0], dtype=uint8)
        """
        if n_symbols < 0:
            raise HuffmanError(f"n_symbols must be >= 0, got {n_symbols}")
        counts = _counts(_as_symbols(symbols, n_symbols), n_symbols)
        return cls.from_counts(counts, max_length=max_length)

    # ------------------------------------------------------------------ properties

    @property
    def n_symbols(self) -> int:
        """Size of the alphabet (present and absent symbols)."""
        return int(self.lengths.size)

    def _canonical(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(symbols sorted by (length, symbol), lengths present, first code of each, offset of each)``."""
        present = np.flatnonzero(self.lengths)
        order = present[np.argsort(self.lengths[present], kind="stable")]
        per_length = np.bincount(self.lengths[order], minlength=MAX_LENGTH + 1).astype(np.int64)
        first = np.zeros(MAX_LENGTH + 2, dtype=np.int64)
        for ln in range(1, MAX_LENGTH + 1):  # one step per code length, not per symbol
            first[ln + 1] = (first[ln] + per_length[ln]) << 1
        offset = np.concatenate([[0], np.cumsum(per_length)])  # offset[l]: index in `order` of the first l-bit code
        used = np.flatnonzero(per_length[1:]) + 1
        return order, used, first[used], offset[used]

    def codes(self) -> np.ndarray:
        """The canonical code value of every symbol (uint64; read its low ``lengths[s]`` bits; 0 if absent).

        Example:
            >>> HuffmanCode(np.array([2, 1, 2], dtype=np.uint8)).codes()
            array([2, 0, 3], dtype=uint64)
        """
        order, used, first, offset = self._canonical()
        codes = np.zeros(self.n_symbols, dtype=np.uint64)
        if order.size:
            lens = self.lengths[order].astype(np.int64)
            slot = np.searchsorted(used, lens)
            codes[order] = (first[slot] + np.arange(order.size) - offset[slot]).astype(np.uint64)
        return codes

    def encoded_bits(self, symbols: Any) -> int:
        """Exact size in bits of the payload for ``symbols`` (before padding to whole bytes).

        Example:
            >>> HuffmanCode(np.array([1, 2, 2], dtype=np.uint8)).encoded_bits(np.array([0, 1, 2, 0]))
            6
        """
        counts = _counts(_as_symbols(symbols, self.n_symbols), self.n_symbols)
        _check_coded(counts, self.lengths)
        return int(counts @ self.lengths.astype(np.int64))

    # ------------------------------------------------------------------ payload

    def encode(self, symbols: Any) -> bytes:
        """The codes of ``symbols`` packed most significant bit first, zero padded to a whole byte.

        Raises :class:`HuffmanError` if a symbol is out of range or has no code.

        Example:
            >>> code = HuffmanCode.from_counts(np.array([3, 1, 1]))
            >>> code.encode(np.array([0, 0, 1, 2, 0])).hex()  # 0 0 10 11 0 + padding
            '2c'
        """
        sym = _as_symbols(symbols, self.n_symbols)
        if sym.size == 0:
            return b""
        counts = _counts(sym, self.n_symbols)
        _check_coded(counts, self.lengths)
        table = self.lengths.astype(np.int64)
        nbytes = (int(counts @ table) + 7) // 8
        codes = self.codes()
        # each code, shifted to its bit offset within its first byte, spans at most `span` bytes
        span = (int(self.lengths.max()) + 7 + 7) // 8
        out = np.zeros(nbytes + span, dtype=np.uint8)
        done = 0  # bits written by the chunks before
        for a in range(0, sym.size, _CHUNK):  # chunks keep the temporaries small
            chunk = sym[a : a + _CHUNK]
            lens = table[chunk]
            ends = np.cumsum(lens) + done
            starts = ends - lens
            done = int(ends[-1])
            value = codes[chunk] << (8 * span - (starts & 7) - lens).astype(np.uint64)
            first = int(starts[0]) >> 3
            at = (starts >> 3) - first
            size = int(at[-1]) + span
            acc = np.zeros(size, dtype=np.float64)
            for k in range(span):  # codes never share a bit, so summing the byte pieces is OR-ing them
                piece = ((value >> np.uint64(8 * (span - 1 - k))) & np.uint64(0xFF)).astype(np.float64)
                acc += np.bincount(at + k, weights=piece, minlength=size)
            out[first : first + size] |= acc.astype(np.uint8)  # the chunks share at most one byte
        return out[:nbytes].tobytes()

    def decode(self, payload: bytes | bytearray | memoryview, count: int) -> np.ndarray:
        """The first ``count`` symbols coded in ``payload`` (int64 array).

        Bytes after the last symbol are ignored. Raises :class:`HuffmanError` if
        ``count`` is negative, if the payload holds fewer than ``count`` symbols,
        or if it contains a bit pattern that is no code.

        Example:
            >>> code = HuffmanCode.from_counts(np.array([3, 1, 1]))
            >>> code.decode(bytes.fromhex("2c"), 5)
            array([0, 0, 1, 2, 0])
        """
        count = int(count)
        if count < 0:
            raise HuffmanError(f"symbol count must be >= 0, got {count}")
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        data = np.frombuffer(payload, dtype=np.uint8)
        nbits = 8 * data.size
        order, used, first, offset = self._canonical()
        if order.size == 0:
            raise HuffmanError(f"cannot decode {count} symbols with an empty code")
        if count > nbits:
            raise HuffmanError(f"payload too short: {data.size} bytes cannot hold {count} symbols")
        longest = int(used[-1])
        # only bits [0, count * longest) can hold the start of one of the `count` symbols
        positions = min(nbits, count * longest)
        nbytes = (positions + 7) // 8
        buf = np.zeros(nbytes + 8, dtype=np.uint8)  # zero padded: a window may run past the end
        head = data[: nbytes + 8]
        buf[: head.size] = head
        # left-justified first code of each length: increasing, so the length at a window is a binary search;
        # an incomplete code (one symbol) gets one more bound, above which a window is no code
        bounds = (first << (longest - used)).astype(np.uint64)
        limit = int(first[-1]) + order.size - int(offset[-1])  # one past the last code of the greatest length
        if limit < 1 << longest:
            bounds = np.append(bounds, np.uint64(limit))
        table = slot_table(bounds, longest)
        step = np.append(used, 1 << 40)[: bounds.size]  # bits to the next code start (invalid: far off)
        out = np.empty(count, dtype=np.int64)
        decoded = entry = 0  # symbols found so far; the bit where the next one starts
        while decoded < count:  # one pass per segment of the payload, to bound the memory
            if entry >= positions:
                raise HuffmanError(f"payload too short: it holds {decoded} of the {count} symbols")
            lo = entry & ~7
            hi = min(lo + _SEGMENT, positions)
            slot, nxt = segment(buf, lo, hi, bounds, table, step, longest)
            local = chain(nxt, count - decoded, entry - lo)
            sl = slot[local].astype(np.int64)
            bad = np.flatnonzero(sl == used.size)
            if bad.size:
                at = int(bad[0])
                raise HuffmanError(f"invalid code at bit {lo + int(local[at])} (symbol {decoded + at})")
            ln = used[sl]
            w = windows_at(buf, local.astype(np.int64) + lo, longest)
            index = offset[sl] + (w >> (longest - ln).astype(np.uint64)).astype(np.int64) - first[sl]
            out[decoded : decoded + local.size] = order[index]
            decoded += local.size
            entry = lo + int(local[-1]) + int(ln[-1])
        if entry > nbits:
            raise HuffmanError(f"payload too short: the last of the {count} symbols is cut off")
        return out

    # ------------------------------------------------------------------ table serialisation

    def to_bytes(self) -> bytes:
        """The table, compactly: enough to rebuild the code with :meth:`from_bytes`.

        Layout: ``varint n_symbols``, then one mode byte and the lengths, in
        whichever of two forms is shorter (varints are unsigned LEB128):

        - mode 0, packed: one byte ``w`` (bits per length, ``0..6``, ``0`` when all
          lengths are 0), then ``ceil(n_symbols * w / 8)`` bytes holding the
          lengths as ``w``-bit numbers, most significant bit first, zero padded;
        - mode 1, runs: ``varint n_runs``, then per run of equal lengths one
          byte (the length) and ``varint (run size - 1)``.

        Example:
            >>> code = HuffmanCode.from_counts(np.array([5, 3, 1, 1]))
            >>> code.to_bytes().hex()  # 4 symbols, packed 2-bit: 01 10 11 11
            '0400026f'
        """
        n = self.n_symbols
        head = _varint(n)
        width = int(self.lengths.max()).bit_length() if n else 0
        if width:
            bits = (self.lengths[:, None] >> np.arange(width - 1, -1, -1, dtype=np.uint8)) & 1
            packed = bytes([_PACKED, width]) + np.packbits(bits.ravel()).tobytes()
        else:
            packed = bytes([_PACKED, 0])
        if n == 0:
            return head + packed
        change = np.flatnonzero(np.diff(self.lengths)) + 1
        run_starts = np.concatenate([[0], change])
        run_sizes = np.diff(np.concatenate([run_starts, [n]]))
        if 2 * run_starts.size + 1 >= len(packed):  # runs cannot be shorter: at least 2 bytes a run
            return head + packed
        runs = bytearray([_RUNS]) + _varint(run_starts.size)
        for length, size in zip(self.lengths[run_starts].tolist(), run_sizes.tolist()):  # one step per run
            runs.append(length)
            runs += _varint(size - 1)
        return head + (bytes(runs) if len(runs) < len(packed) else packed)

    @classmethod
    def from_bytes(
        cls, data: bytes | bytearray | memoryview, *, n_symbols: int | None = None, max_present: int | None = None
    ) -> tuple[HuffmanCode, int]:
        """Read a table written by :meth:`to_bytes` at the start of ``data``: ``(code, bytes consumed)``.

        Raises :class:`HuffmanError` saying what is wrong if the table is
        truncated, uses an unknown mode, declares more than :data:`MAX_SYMBOLS`
        symbols or a length above :data:`MAX_LENGTH`, or if its lengths do not
        form a complete prefix code (Kraft sum 1, unless at most one symbol).
        A reader that knows the alphabet (``n_symbols``) or how many symbols the
        stream holds (``max_present``: a code built from a stream gives codes only
        to the symbols in it) has a table that disagrees refused before anything
        the size of the alphabet is built.

        Example:
            >>> HuffmanCode.from_bytes(bytes.fromhex("0400026f") + b"payload")
            (HuffmanCode(n_symbols=4, present=4, max_length=3), 4)
            >>> HuffmanCode.from_bytes(bytes.fromhex("0400026f"), n_symbols=8)
            Traceback (most recent call last):
                ...
            torchslim.io.tslim.huffman.HuffmanError: Huffman table declares 4 symbols, its stream has 8
        """
        data = bytes(data)
        n, pos = _read_varint(data, 0, "the number of symbols")
        if n > MAX_SYMBOLS:
            raise HuffmanError(f"Huffman table declares {n} symbols: more than the {MAX_SYMBOLS} supported")
        if n_symbols is not None and n != n_symbols:
            raise HuffmanError(f"Huffman table declares {n} symbols, its stream has {n_symbols}")
        if pos >= len(data):
            raise HuffmanError("Huffman table truncated before its mode byte")
        mode = data[pos]
        if mode == _PACKED:
            lengths, pos = _packed_lengths(data, pos + 1, n)
        elif mode == _RUNS:
            lengths, pos = _run_lengths(data, pos + 1, n, max_present)
        else:
            raise HuffmanError(f"Huffman table has unknown mode {mode}")
        if lengths.size and lengths.max() > MAX_LENGTH:
            raise HuffmanError(f"Huffman table has a code length {int(lengths.max())}: must be at most {MAX_LENGTH}")
        if max_present is not None and np.count_nonzero(lengths) > max(1, max_present):
            raise HuffmanError(f"Huffman table codes {np.count_nonzero(lengths)} symbols, its stream holds {max_present}")
        return cls(lengths), pos


def _packed_lengths(data: bytes, pos: int, n: int) -> tuple[np.ndarray, int]:
    """The ``n`` code lengths of a packed table whose bit width is at ``pos`` (uint8), and the position after."""
    if pos >= len(data):
        raise HuffmanError("Huffman table truncated before its bit width")
    width = data[pos]
    pos += 1
    if width > 6:
        raise HuffmanError(f"Huffman table has bit width {width}: must be at most 6")
    size = (n * width + 7) // 8
    if pos + size > len(data):
        raise HuffmanError(f"Huffman table truncated: {len(data) - pos} of {size} length bytes")
    if not width:
        return np.zeros(n, dtype=np.uint8), pos
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8, count=size, offset=pos))[: n * width].reshape(n, width)
    weights = (1 << np.arange(width - 1, -1, -1)).astype(np.uint8)
    return (bits * weights).sum(axis=1, dtype=np.uint8), pos + size


def _run_lengths(data: bytes, pos: int, n: int, max_present: int | None) -> tuple[np.ndarray, int]:
    """The ``n`` code lengths of a run-length table whose run count is at ``pos`` (uint8), and the position after."""
    n_runs, pos = _read_varint(data, pos, "the number of runs")
    if n_runs > n or 2 * n_runs > len(data) - pos:
        raise HuffmanError(f"Huffman table declares {n_runs} runs: more than it can hold")
    values, sizes = [], []
    total = present = 0
    for _ in range(n_runs):  # one step per run; bounded by the bytes present
        if pos >= len(data):
            raise HuffmanError("Huffman table truncated in its runs")
        values.append(data[pos])
        size, pos = _read_varint(data, pos + 1, "a run size")
        size += 1
        total += size
        present += size if values[-1] else 0
        if total > n:
            raise HuffmanError(f"Huffman table runs cover more than its {n} symbols")
        sizes.append(size)
    if total != n:
        raise HuffmanError(f"Huffman table runs cover {total} of its {n} symbols")
    if max_present is not None and present > max(1, max_present):  # before building them
        raise HuffmanError(f"Huffman table codes {present} symbols, its stream holds {max_present}")
    return np.repeat(np.array(values, dtype=np.uint8), np.array(sizes, dtype=np.int64)), pos


def entropy_bits(symbols: Any, n_symbols: int) -> float:
    """``n * H``: the empirical entropy of ``symbols``, in bits, for the whole stream.

    No code built from the stream's own counts can be shorter (Huffman is within
    one bit per symbol of it, and far closer for spread-out histograms).

    Example:
        >>> entropy_bits(np.array([0, 1, 0, 1]), n_symbols=2)
        4.0
    """
    sym = _as_symbols(symbols, n_symbols)
    if sym.size == 0:
        return 0.0
    counts = _counts(sym, n_symbols)
    counts = counts[counts > 0].astype(np.float64)
    return float(-(counts * np.log2(counts / sym.size)).sum())
