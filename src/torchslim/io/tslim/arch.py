"""The architecture a ``.tslim`` file names, checked against its records before anything is decoded or built.

A file's ``arch`` names a zoo model and its arguments; a hostile header can ask
for any size (``{"in_features": 2**21}``). :func:`check_architecture` builds the
model on the ``meta`` device (no memory for its tensors) while counting what it
registers, so a model with more modules or tensor bytes than the file may
decode to (:func:`~torchslim.io.bundle.decode_budget`) is refused while it is
being built; it then replays the file's recorded structure and quantization on
the meta model and compares every tensor's shape and dtype with the records.
Only when all of that fits does :func:`torchslim.io.tslim.model.load` decode the
records and build the real model (under the same bounds).

A zoo model that cannot be built on the ``meta`` device (one that loads
pretrained weights) is built for real, under the same bounds, if its arguments
hold no numbers (nothing in them can make it larger).

Example:
    >>> from torchslim.io.tslim.records import Record
    >>> records = [Record("fc1.weight", [300, 784], "float32", "raw")]
    >>> zoo_name({"model": "zoo:lenet300", "args": {}}, "m.tslim"), zoo_name({}, "m.tslim")
    ('lenet300', None)
    >>> bounded_build("lenet300", {"in_features": 2**21}, len(records), 1 << 20, "m.tslim")
    Traceback (most recent call last):
        ...
    torchslim.io.tslim.records.TslimFormatError: m.tslim: the architecture zoo:lenet300 {'in_features': 2097152} holds more than 1048576 bytes of tensors: more than the file may decode to
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as torch_module

from torchslim.errors import TorchslimError
from torchslim.graph import constraints, provenance
from torchslim.io.checkpoint import records_of
from torchslim.io.tslim.records import DTYPES, MAX_ELEMENTS, Record, TslimFormatError
from torchslim.zoo import create_model

__all__ = ["bounded_build", "check_architecture", "short_repr", "zoo_name"]


def zoo_name(arch: dict[str, Any], source: str) -> str | None:
    """The zoo model ``arch`` names (``None``: it names no zoo model); malformed references are refused."""
    name, args = arch.get("model"), arch.get("args", {})
    if not isinstance(name, str) or not name.startswith("zoo:"):
        return None
    if not isinstance(args, dict):
        raise TslimFormatError(f"{source}: the architecture's args must be a mapping, got {type(args).__name__}")
    for value in _scalars(args):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_ELEMENTS:
            raise TslimFormatError(f"{source}: the architecture's args hold {value}: larger than any tensor may be")
    return name[4:]


def _scalars(value: Any) -> Iterator[Any]:
    """Every scalar of the JSON data ``value`` (no recursion: the header's depth is bounded anyway)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        else:
            yield item


@contextmanager
def _bounded(max_items: int, max_bytes: int, what: str) -> Iterator[None]:
    """Refuse (in this thread) a model that registers more than ``max_items`` modules and tensors or ``max_bytes``."""
    me, seen = threading.get_ident(), {"items": 0, "bytes": 0}

    def count(tensor: torch.Tensor | None) -> None:
        if threading.get_ident() != me:
            return
        seen["items"] += 1
        if seen["items"] > max_items:
            raise TslimFormatError(f"{what} has more than {max_items} modules and tensors: more than the file holds")
        if isinstance(tensor, torch.Tensor):
            seen["bytes"] += tensor.numel() * tensor.element_size()
            if seen["bytes"] > max_bytes:
                raise TslimFormatError(f"{what} holds more than {max_bytes} bytes of tensors: more than the file may decode to")

    handles = [
        torch_module.register_module_module_registration_hook(lambda m, n, sub: count(None)),
        torch_module.register_module_parameter_registration_hook(lambda m, n, t: count(t)),
        torch_module.register_module_buffer_registration_hook(lambda m, n, t: count(t)),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _items(n_records: int) -> int:
    """The most modules and tensors a model stored in ``n_records`` records may register while it is built."""
    return 32 * n_records + 1024


def short_repr(value: Any, limit: int = 200) -> str:
    """``repr(value)``, cut to ``limit`` characters (header values in messages).

    Example:
        >>> short_repr(list(range(100)), 20)
        '[0, 1, 2, 3, 4, 5...'
    """
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _no_numbers(args: dict[str, Any]) -> bool:
    """Whether ``args`` holds nothing that can size a model (only booleans, strings and nulls)."""
    return all(isinstance(v, (bool, str)) or v is None for v in _scalars(args))


def bounded_build(name: str, args: dict[str, Any], n_records: int, max_bytes: int, source: str, *, meta: bool = True) -> nn.Module:
    """Build zoo model ``name`` (on the ``meta`` device unless ``meta=False``), refused as soon as it registers
    more modules and tensors than a file of ``n_records`` records can account for, or more than ``max_bytes`` of tensors.

    Raises:
        TslimFormatError: too large, unknown, or not buildable with ``args``.
    """
    what = f"the architecture zoo:{name} {short_repr(args)}"
    limit = _items(n_records)
    try:
        with _bounded(limit, max_bytes, what), torch.device("meta" if meta else "cpu"), warnings.catch_warnings():
            if meta:  # a hostile header's odd sizes (zero-element layers...) warn: not the user's concern
                warnings.simplefilter("ignore")
            return create_model(name, **args)
    except TslimFormatError as exc:
        raise TslimFormatError(f"{source}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a hostile header: any failure to build is a bad file
        if meta and not isinstance(exc, TorchslimError) and _no_numbers(args):  # not buildable on meta (pretrained)
            return bounded_build(name, args, n_records, max_bytes, source, meta=False)
        kind = "" if isinstance(exc, TorchslimError) else f"{type(exc).__name__}: "
        raise TslimFormatError(f"{source}: cannot build {what}: {kind}{exc}") from None


def check_architecture(
    name: str, args: dict[str, Any], structure: list[Any], quant: Any, records: list[Record], max_bytes: int, source: str
) -> nn.Module | None:
    """Check the model the file names against ``records``, building it bounded (on ``meta`` when it can be).

    The recorded structure and quantization are replayed on the meta model and
    every record's shape and dtype compared with the model's.

    Returns:
        ``None`` when checked on ``meta`` (the caller builds the real model); the
        real model when it could only be built for real (the caller loads into it).

    Raises:
        TslimFormatError: the model is too large, cannot be built, or does not fit the records.
    """
    model = bounded_build(name, args, len(records), max_bytes, source)
    if not any(t.is_meta for t in model.state_dict().values()):
        return model  # built for real: the load that follows checks it after decoding
    try:
        state = {r.name: torch.empty(r.shape, dtype=DTYPES[r.dtype][0], device="meta") for r in records}
        with _bounded(_items(len(records)), max_bytes, "the recorded structure"):
            provenance.replay(model, records_of(structure, quant, source), state)
    except TslimFormatError:
        raise
    except Exception:  # noqa: BLE001 - not replayable on meta: the real load checks it after decoding
        return None
    problems = _mismatches(model.state_dict(), records)
    if problems:
        raise TslimFormatError(f"{source} does not match the model architecture: " + "; ".join(problems))
    return None


def _mismatches(own: dict[str, torch.Tensor], records: list[Record]) -> list[str]:
    """Missing and unexpected keys, shape and dtype mismatches between a model's state and the records."""
    by_name = {r.name: r for r in records}
    missing = [k for k in own if k not in by_name]
    unexpected, shapes, kinds = [], [], []
    for r in records:
        c = constraints.of_key(r.name)
        target = own.get(r.name)
        if target is None and c is not None:
            target = own.get(r.name[: -len(c.suffix)])  # a mask or codes buffer takes its parameter's shape
            if target is None:
                unexpected.append(r.name)
            elif list(target.shape) != r.shape:
                shapes.append(f"{r.name}: file {tuple(r.shape)} vs model {tuple(target.shape)}")
            continue
        if target is None:
            unexpected.append(r.name)
        elif list(target.shape) != r.shape:
            shapes.append(f"{r.name}: file {tuple(r.shape)} vs model {tuple(target.shape)}")
        elif DTYPES[r.dtype][0] != target.dtype:
            kinds.append(f"{r.name}: file {r.dtype} vs model {str(target.dtype).removeprefix('torch.')}")
    found = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes), ("dtype mismatches", kinds))
    return [f"{label}: {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}" for label, items in found if items]
