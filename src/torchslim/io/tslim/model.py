"""A model to and from a ``.tslim`` file: the state dict's records, the provenance, the architecture reference.

:func:`encode_model` / :func:`save` store ``model``'s state dict (codecs chosen by
:mod:`torchslim.io.tslim.policy`), its recorded structure and quantization, and
an architecture reference; :func:`load` builds the model (a zoo architecture, or
one the caller gives), replays the recorded structure and quantization on it
and loads the state (:func:`torchslim.io.checkpoint.load_structured_state`).

``ts.save`` is :func:`torchslim.encode.save`: it also offers a quantized model's
weights as their integers (:mod:`torchslim.encode.quantized`), which this
module, knowing no technique, cannot read from the model itself.

Example:
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = save(ts.create_model("lenet300"), f"{tmp.name}/lenet300.tslim", arch="zoo:lenet300")
    >>> type(load(path)).__name__
    'LeNet300'
    >>> tmp.cleanup()
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from torchslim.errors import CheckpointError
from torchslim.graph import provenance
from torchslim.graph.slicing import recorded_structure
from torchslim.io.atomic import atomic_write_bytes
from torchslim.io.checkpoint import load_structured_state
from torchslim.io.tslim.format import TslimFormatError, assemble, read
from torchslim.io.tslim.policy import Offers, encode_state
from torchslim.io.tslim.records import check_coding
from torchslim.zoo import create_model


def encode_model(
    model: nn.Module,
    *,
    arch: str | dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    coding: str = "huffman",
    offers: Offers | None = None,
) -> bytes:
    """The bytes of the ``.tslim`` file of ``model`` (see :func:`save`; ``offers``: :mod:`torchslim.io.tslim.policy`)."""
    check_coding(coding)
    records = encode_state(model.state_dict(), coding, offers)
    if isinstance(arch, str):
        arch = {"model": arch, "args": {}}
    return assemble(
        records,
        arch=arch or {},
        structure=recorded_structure(model),
        quant=provenance.latest(model, "quant"),
        meta=meta or {},
    )


def save(
    model: nn.Module,
    path: str | Path,
    *,
    arch: str | dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    coding: str = "huffman",
    offers: Offers | None = None,
) -> Path:
    """Write ``model`` as a ``.tslim`` file (atomically); returns the path.

    It checks before writing that the file decodes to the model's state dict bit
    for bit (a tensor that would not falls back to ``raw``); saving the same
    model twice gives the same bytes.

    Args:
        model: any model; pruned (masks), shared (codes) and structurally pruned
            models are stored compactly, everything else raw.
        path: destination (``.tslim`` is the usual suffix).
        arch: the architecture reference :func:`load` builds when given no model:
            ``"zoo:<name>"`` or ``{"model": "zoo:<name>", "args": {...}}``.
        meta: JSON-ready facts stored in the header.
        coding: ``huffman`` (Deep Compression) or ``fixed`` (fixed-width indices).
        offers: records the technique side offers for some entries (see
            :mod:`torchslim.io.tslim.policy`).
    """
    return atomic_write_bytes(path, encode_model(model, arch=arch, meta=meta, coding=coding, offers=offers))


def build_from_arch(arch: dict[str, Any], source: str) -> nn.Module:
    """Build the zoo model a file's ``arch`` names (only ``zoo:`` names: a file never chooses code to import)."""
    name, args = arch.get("model"), arch.get("args", {})
    if not isinstance(name, str) or not name.startswith("zoo:") or not isinstance(args, dict):
        raise TslimFormatError(
            f"{source} names no zoo architecture (arch {arch!r}); pass the model: ts.load(path, model_builder)"
        )
    return create_model(name[4:], **args)


def load(path: str | Path, model: nn.Module | Callable[[], nn.Module] | None = None) -> nn.Module:
    """Load a ``.tslim`` file into a model; outputs equal those of the model saved, bit for bit.

    Args:
        path: the file.
        model: a fresh instance of the architecture, a zero-argument builder of
            one, or ``None`` to build the file's zoo architecture. Structured
            pruning recorded in the file is replayed on it; pruning masks and
            sharing codes are re-attached.

    Returns:
        The model, in eval mode.

    Raises:
        TslimFormatError: a corrupt or truncated file, an unsupported version, or
            an architecture that does not fit (naming the mismatching entries);
            a given model is then left untouched.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = ts.save(ts.create_model("lenet300"), f"{tmp.name}/lenet300.tslim", arch="zoo:lenet300")
        >>> model = ts.load(path)
        >>> type(model).__name__, model.training
        ('LeNet300', False)
        >>> tmp.cleanup()
    """
    f = read(path)
    if model is None:
        target = build_from_arch(f.arch, f.path)
    elif isinstance(model, nn.Module):
        target = model
    else:
        target = model()
        if not isinstance(target, nn.Module):
            raise TslimFormatError(f"the model builder returned {type(target).__name__}, not an nn.Module")
    try:
        load_structured_state(target, f.structure, f.state, source=f.path, quant=f.quant)
    except TslimFormatError:
        raise
    except CheckpointError as exc:
        raise TslimFormatError(str(exc)) from None
    return target.eval()
