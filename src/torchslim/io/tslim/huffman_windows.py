"""Bit windows and code chains: the vectorised kernels of canonical Huffman decoding.

:meth:`torchslim.io.tslim.huffman.HuffmanCode.decode` reads a ``max length``-bit
window at every bit position of the payload (:func:`windows`), finds the code
length starting there (:func:`slots`, a lookup table on the top bits with a
binary search over the canonical code boundaries for the rest), and follows the
chain of code starts from bit 0 by pointer doubling (:func:`chain`). Nothing
here loops in Python per symbol or per bit.

Example:
    >>> nxt = np.array([2, 3, 4, 4, 4])        # from every position, where the next code starts (4: the end)
    >>> chain(nxt.copy(), 10).tolist()
    [0, 2]
"""

from __future__ import annotations

import numpy as np

_CHUNK = 1 << 18  # bit positions read per numpy pass (a multiple of 8)


def windows(buf: np.ndarray, lo: int, hi: int, width: int) -> np.ndarray:
    """The ``width``-bit number (``width <= 57``) starting at each bit ``lo .. hi - 1`` of ``buf`` (``lo % 8 == 0``).

    ``buf`` must hold 8 bytes past bit ``hi``.
    """
    first, last = lo >> 3, (hi + 7) >> 3
    words = np.zeros(last - first, dtype=np.uint64)
    for k in range(8):  # the big-endian 64-bit word starting at every byte
        words |= buf[first + k : last + k].astype(np.uint64) << np.uint64(56 - 8 * k)
    windows = words[:, None] << np.arange(8, dtype=np.uint64)
    windows >>= np.uint64(64 - width)
    return windows.ravel()[: hi - lo]


def windows_at(buf: np.ndarray, bits: np.ndarray, width: int) -> np.ndarray:
    """The ``width``-bit number starting at each bit position in ``bits`` (8 bytes of ``buf`` past each)."""
    byte = bits >> 3
    words = np.zeros(bits.size, dtype=np.uint64)
    for k in range(8):
        words |= buf[byte + k].astype(np.uint64) << np.uint64(56 - 8 * k)
    return (words << (bits & 7).astype(np.uint64)) >> np.uint64(64 - width)


def slot_table(bounds: np.ndarray, width: int) -> np.ndarray:
    """For each value of a window's top (at most 16) bits: its slot in ``bounds``, or -1 if the rest decides it."""
    top = min(width, 16)
    shift = np.uint64(width - top)
    prefix = np.arange(1 << top, dtype=np.uint64)
    low = np.searchsorted(bounds, prefix << shift, side="right") - 1
    high = np.searchsorted(bounds, ((prefix + np.uint64(1)) << shift) - np.uint64(1), side="right") - 1
    return np.where(low == high, low, -1).astype(np.int8)  # at most 33 bounds


def slots(windows: np.ndarray, bounds: np.ndarray, table: np.ndarray, width: int) -> np.ndarray:
    """For each ``width``-bit window, the index of the last of the sorted ``bounds`` at or below it.

    The table on the top bits answers most windows; those whose top bits
    straddle a bound (long codes) fall back to a binary search.
    """
    slot = table[windows >> np.uint64(width - min(width, 16))]
    todo = np.flatnonzero(slot < 0)
    if todo.size:
        slot[todo] = np.searchsorted(bounds, windows[todo], side="right") - 1
    return slot


def segment(
    buf: np.ndarray, lo: int, hi: int, bounds: np.ndarray, table: np.ndarray, step: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(slot, nxt)`` for the bits ``lo .. hi - 1``, relative to ``lo``; ``nxt[hi - lo]`` is a sentinel.

    ``slot[p]``: which of ``bounds`` the code starting at bit ``lo + p`` falls
    under; ``nxt[p]``: where the next code then starts (the sentinel if past
    ``hi`` or if there is no valid code at ``p``).
    """
    n = hi - lo
    slot = np.empty(n, dtype=np.int8)
    nxt = np.empty(n + 1, dtype=np.int32 if n < np.iinfo(np.int32).max else np.int64)
    nxt[n] = n
    for a in range(0, n, _CHUNK):  # chunks keep the temporaries small
        b = min(a + _CHUNK, n)
        slot[a:b] = slots(windows(buf, lo + a, lo + b, width), bounds, table, width)
        nxt[a:b] = np.minimum(np.arange(a, b) + step[slot[a:b]], n)
    return slot, nxt


def chain(nxt: np.ndarray, count: int, start: int = 0) -> np.ndarray:
    """Up to ``count`` entries of ``start, nxt[start], nxt[nxt[start]], ...``, stopping at the sentinel.

    ``nxt`` must map every position to a later one, or to the sentinel
    ``end = nxt.size - 1``, which maps to itself; the entries before the
    sentinel are returned (increasing). No Python step per entry: pointer
    doubling (``jump`` = ``nxt`` applied ``starts.size`` times) until the prefix
    holds ``max(64, min(count, end) / 16384)`` entries, then the rest block by
    block, each block the jump from the one before (at most ~16k numpy calls on
    blocks of 64 or more entries: cheaper than more doubling passes over every
    position). ``nxt`` is overwritten.
    """
    end = nxt.size - 1
    starts = np.array([start], dtype=nxt.dtype)
    jump, spare = nxt, np.empty_like(nxt)
    target = max(64, min(count, end) >> 14)
    while starts.size < min(count, target) and starts[-1] != end:
        starts = np.concatenate([starts, jump[starts]])
        if starts.size < count and starts[-1] != end:
            np.take(jump, jump, out=spare, mode="clip")  # every entry is a valid index: clip changes nothing
            jump, spare = spare, jump
    blocks = [starts]
    done = starts.size
    while done < count and blocks[-1][-1] != end:
        blocks.append(jump.take(blocks[-1]))
        done += starts.size
    out = np.concatenate(blocks)[:count]
    return out[: np.searchsorted(out, end)]

