"""Meeting a budget by bisection: the one search behind ``macs_target`` (structured pruning) and
``macs_ratio`` (low-rank factorisation).

Example:
    The largest ratio whose cost ``100 * r`` fits a budget of 37, and the smallest
    sparsity whose remaining cost ``100 * (1 - s)`` does:

    >>> round(bisect(lambda r: 100 * r <= 37, 0.0, 1.0, iters=30, fits_below=True), 4)
    0.37
    >>> round(bisect(lambda s: 100 * (1 - s) <= 37, 0.0, 1.0, iters=30, fits_below=False), 4)
    0.63
"""

from __future__ import annotations

from collections.abc import Callable


def bisect(fits: Callable[[float], bool], lo: float, hi: float, *, iters: int, fits_below: bool) -> float:
    """The boundary of a monotone predicate ``fits`` on ``[lo, hi]`` after ``iters`` halvings.

    Args:
        fits: whether a value meets the budget; monotone in the value.
        lo, hi: the interval; the caller has checked that its fitting end fits.
        iters: halvings of the interval.
        fits_below: ``True`` when values at or below the boundary fit (returns the largest
            fitting value found, the interval's low end); ``False`` when values at or above
            it fit (returns the smallest, the interval's high end).
    """
    for _ in range(iters):
        mid = (lo + hi) / 2
        if fits(mid) == fits_below:
            lo = mid
        else:
            hi = mid
    return lo if fits_below else hi
