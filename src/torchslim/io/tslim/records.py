"""Records of a ``.tslim`` file: one state-dict entry each, tensors as bit patterns, checked header fields.

A :class:`Record` is what the container stores for one state-dict entry: its
name, shape, dtype, the encoding (``enc``, a codec of
:mod:`torchslim.io.tslim.codecs`), the payload parts and the codec's header
fields. Tensors are handled as bit patterns (floats viewed as same-width
integers), so ``-0.0`` and NaN payloads survive every encoding.

Example:
    >>> t = torch.tensor([1.0, -0.0, float("nan")])
    >>> same_bits(from_pattern(pattern(t), "float32", [3]), t)
    True
    >>> int_field({"k": 3}, "k", 0, 2, "fc1.weight")
    Traceback (most recent call last):
        ...
    torchslim.io.tslim.records.TslimFormatError: record fc1.weight: field 'k' must be an integer in 0..2, got 3
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from torchslim.errors import CheckpointError

#: How integer streams are packed: canonical Huffman codes or fixed width.
CODINGS = ("huffman", "fixed")
#: The most elements a record may declare (a guard against garbage shapes).
MAX_ELEMENTS = 1 << 34
#: The most dimensions a record's shape may have.
MAX_DIMS = 32

#: dtype name -> (torch dtype, numpy dtype holding its bit pattern)
DTYPES: dict[str, tuple[torch.dtype, np.dtype[Any]]] = {
    "float32": (torch.float32, np.dtype("<i4")),
    "float64": (torch.float64, np.dtype("<i8")),
    "float16": (torch.float16, np.dtype("<i2")),
    "bfloat16": (torch.bfloat16, np.dtype("<i2")),
    "int64": (torch.int64, np.dtype("<i8")),
    "int32": (torch.int32, np.dtype("<i4")),
    "int16": (torch.int16, np.dtype("<i2")),
    "int8": (torch.int8, np.dtype("i1")),
    "uint8": (torch.uint8, np.dtype("u1")),
    "bool": (torch.bool, np.dtype("u1")),
}
BITS_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16, torch.bfloat16: torch.int16}


class TslimFormatError(CheckpointError):
    """A ``.tslim`` file is truncated, corrupt, of another version, or does not fit the model."""


@dataclass
class Record:
    """One state-dict entry as stored: ``parts`` are ``(name, bytes)`` in payload order, ``info`` the codec's fields.

    A parsed record carries its payload parts in ``info["_payload"]`` (fields
    starting with ``_`` are never written to the header).
    """

    name: str
    shape: list[int]
    dtype: str
    enc: str
    parts: list[tuple[str, bytes]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Payload bytes of the record."""
        return sum(len(b) for _, b in self.parts)


def check_shape(shape: Any, name: str) -> list[int]:
    """``shape``, checked to be a list of at most :data:`MAX_DIMS` sizes of at most :data:`MAX_ELEMENTS` elements in all.

    Example:
        >>> check_shape([300, 784], "fc1.weight")
        [300, 784]
        >>> check_shape([1 << 20, 1 << 20], "fc1.weight")
        Traceback (most recent call last):
            ...
        torchslim.io.tslim.records.TslimFormatError: record fc1.weight: shape [1048576, 1048576] is too large (more than 17179869184 elements)
    """
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise TslimFormatError(f"record {name}: bad shape {shape!r} (a list of at most {MAX_DIMS} sizes)")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_ELEMENTS for d in shape):
        raise TslimFormatError(f"record {name}: bad shape {shape!r}")
    if math.prod(max(d, 1) for d in shape) > MAX_ELEMENTS:  # an empty tensor's other sizes still make strides
        raise TslimFormatError(f"record {name}: shape {shape} is too large (more than {MAX_ELEMENTS} elements)")
    return shape


def decoded_bytes(record: Record) -> int:
    """Bytes of the tensor ``record`` decodes to (its shape and dtype are checked).

    Example:
        >>> decoded_bytes(Record("w", [300, 784], "float32", "raw"))
        940800
    """
    return math.prod(record.shape) * DTYPES[record.dtype][1].itemsize


def dtype_name(dtype: torch.dtype) -> str:
    """The record dtype name of ``dtype``; raises :class:`TslimFormatError` for one the container cannot store."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise TslimFormatError(f"cannot store dtype {name}; supported: {', '.join(DTYPES)}")
    return name


def pattern(t: torch.Tensor) -> np.ndarray:
    """Flat bit patterns of ``t`` in the numpy dtype of its record (floats as same-width integers)."""
    name = dtype_name(t.dtype)
    flat = t.detach().cpu().contiguous().flatten()
    if flat.dtype in BITS_VIEW:
        flat = flat.view(BITS_VIEW[flat.dtype])
    elif flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    return flat.numpy().astype(DTYPES[name][1], copy=False)


def from_pattern(bits: np.ndarray, name: str, shape: list[int]) -> torch.Tensor:
    """Inverse of :func:`pattern`: the tensor of dtype ``name`` and ``shape`` with the bit patterns ``bits``."""
    dtype, np_dtype = DTYPES[name]
    arr = torch.from_numpy(np.array(bits, dtype=np_dtype.newbyteorder("="), copy=True))
    if dtype in BITS_VIEW:
        arr = arr.view(dtype)
    elif dtype == torch.bool:
        arr = arr.bool()
    return arr.reshape(shape)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` have the same dtype, shape and bit patterns."""
    return a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape) and np.array_equal(pattern(a), pattern(b))


def int_field(info: dict[str, Any], key: str, lo: int, hi: int, name: str) -> int:
    """``info[key]``, checked to be an integer in ``lo..hi`` (``name``: the record, for the error)."""
    value = info.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise TslimFormatError(f"record {name}: field {key!r} must be an integer in {lo}..{hi}, got {value!r}")
    return value


def coding_field(info: dict[str, Any], name: str) -> str:
    """``info["coding"]``, checked to be one of :data:`CODINGS`."""
    coding = info.get("coding")
    if coding not in CODINGS:
        raise TslimFormatError(f"record {name}: coding must be one of {', '.join(CODINGS)}, got {coding!r}")
    return str(coding)


def check_coding(coding: str) -> None:
    """Raise ``ValueError`` unless ``coding`` is one of :data:`CODINGS`."""
    if coding not in CODINGS:
        raise ValueError(f"unknown coding {coding!r}; allowed: {', '.join(CODINGS)}")
