"""Deprecated location of the atomic writers: use :mod:`torchslim.io`."""

from __future__ import annotations

import warnings
from typing import Any

_MOVED = {"atomic_write_bytes", "atomic_write_text"}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        warnings.warn(
            f"torchslim._io.{name} moved: use `from torchslim.io import {name}`", DeprecationWarning, stacklevel=2
        )
        import torchslim.io.atomic as atomic

        return getattr(atomic, name)
    raise AttributeError(f"module 'torchslim._io' has no attribute {name!r}")
