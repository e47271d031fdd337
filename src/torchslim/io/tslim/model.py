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
from typing import Any, cast

from torch import nn

from torchslim.errors import CheckpointError
from torchslim.graph import provenance
from torchslim.graph.slicing import recorded_structure
from torchslim.io.atomic import atomic_write_bytes
from torchslim.io.bundle import decode_budget
from torchslim.io.checkpoint import load_structured_state
from torchslim.io.tslim.arch import bounded_build, check_architecture, short_repr, zoo_name
from torchslim.io.tslim.format import TslimFile, TslimFormatError, assemble, parse, read_bytes
from torchslim.io.tslim.policy import Offers, encode_state
from torchslim.io.tslim.records import Record, check_coding
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
    """Build the zoo model a file's ``arch`` names (only ``zoo:`` names: a file never chooses code to import).

    Unbounded: :func:`load` checks the architecture against the file's records first.

    Raises:
        TslimFormatError: ``arch`` names no zoo model, or the model cannot be built with its args.
    """
    name = zoo_name(arch, source)
    if name is None:
        raise TslimFormatError(
            f"{source} names no zoo architecture (arch {short_repr(arch)}); pass the model: ts.load(path, model_builder)"
        )
    try:
        return create_model(name, **arch.get("args", {}))
    except Exception as exc:  # noqa: BLE001 - the args come from a file: any failure is a bad file
        raise TslimFormatError(f"{source}: cannot build zoo:{name} with args {short_repr(arch.get('args'))}: {exc}") from None


def load_file(
    path: str | Path, model: nn.Module | Callable[[], nn.Module] | None = None, *, need_model: bool = True
) -> tuple[TslimFile, nn.Module | None]:
    """Read and check a ``.tslim`` file and load it into a model: what :func:`load` and ``torchslim inspect`` do.

    :func:`load_data` on the file's bytes.
    """
    return load_data(read_bytes(path), model, source=str(path), need_model=need_model)


def load_data(
    data: bytes,
    model: nn.Module | Callable[[], nn.Module] | None = None,
    *,
    source: str = "<bytes>",
    need_model: bool = True,
) -> tuple[TslimFile, nn.Module | None]:
    """Check ``.tslim`` bytes and load them into a model (see :func:`load_file`; ``source`` names them in errors).

    With no ``model``, the zoo architecture the file names is built on the
    ``meta`` device first (bounded by what the file may decode to) and every
    record's shape and dtype checked against it, before any record is decoded
    or any real tensor built; then the records are decoded, the real model
    built and the state loaded (dtypes must agree, nothing is converted).

    Args:
        data: the file's bytes.
        model: as for :func:`load`.
        source: what ``data`` is, for messages.
        need_model: with ``False``, a file that names no zoo architecture (and no
            ``model``) is checked without one: ``(file, None)``.

    Raises:
        TslimFormatError: anything wrong with the file, or a model it does not fit.

    Example:
        >>> data = ts.encode.tslim.encode_model(ts.create_model("lenet300"), arch="zoo:lenet300")
        >>> f, model = load_data(data)
        >>> f.arch["model"], type(model).__name__
        ('zoo:lenet300', 'LeNet300')
    """
    checked: dict[str, Any] = {}

    def check(f: TslimFile, records: list[Record]) -> None:
        if model is not None:
            return
        name = zoo_name(f.arch, f.path)
        if name is None and need_model:
            build_from_arch(f.arch, f.path)  # raises: names no zoo architecture
        if name is not None:
            budget = decode_budget(f.file_bytes)
            try:
                built = check_architecture(name, f.arch.get("args", {}), f.structure, f.quant, records, budget, f.path)
            except TslimFormatError:
                raise
            except Exception as exc:  # noqa: BLE001 - a hostile header: any failure to check it is a bad file
                raise TslimFormatError(f"{f.path}: cannot check its architecture: {type(exc).__name__}: {exc}") from None
            checked.update(name=name, model=built, records=len(records))

    f = parse(data, source, verify=check)
    if model is None:
        if "name" not in checked:
            return f, None
        target = checked["model"] or bounded_build(
            checked["name"], f.arch.get("args", {}), checked["records"], decode_budget(f.file_bytes), f.path, meta=False
        )
    elif isinstance(model, nn.Module):
        target = model
    else:
        target = model()
        if not isinstance(target, nn.Module):
            raise TslimFormatError(f"the model builder returned {type(target).__name__}, not an nn.Module")
    try:
        load_structured_state(target, f.structure, f.state, source=f.path, quant=f.quant, dtypes=True)
    except TslimFormatError:
        raise
    except CheckpointError as exc:
        raise TslimFormatError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - records that parse but cannot be loaded are a bad file
        raise TslimFormatError(f"{f.path}: cannot load its records into the model: {type(exc).__name__}: {exc}") from None
    return f, target.eval()


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
            an architecture that does not fit (naming the mismatching entries:
            shapes and dtypes); a given model is then left untouched. Every
            check is made before any record is decoded or any tensor of the size
            the file claims is built (see :func:`load_file`).

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = ts.save(ts.create_model("lenet300"), f"{tmp.name}/lenet300.tslim", arch="zoo:lenet300")
        >>> model = ts.load(path)
        >>> type(model).__name__, model.training
        ('LeNet300', False)
        >>> tmp.cleanup()
    """
    return cast(nn.Module, load_file(path, model)[1])  # need_model: a model, or a refusal
