"""The safetensors + JSON sidecar bundle: tensors in ``<stem>.safetensors``, facts about them in ``<stem>.json``.

Checkpoints (:mod:`torchslim.io.checkpoint`), sparse saves
(:mod:`torchslim.prune.sparse`) and packed quantized weights
(:mod:`torchslim.quant.packed`) are all such a bundle; they differ only in
their format name and in the fields they add to the sidecar. The sidecar
always holds ``format``, ``format_version``, ``tensors`` (the tensors file's
name), ``sha256`` and ``bytes`` of the tensors file. Both files are written
atomically, the tensors first and the sidecar last, so a sidecar always
describes a complete tensors file. Reading checks the sidecar's format and
version, verifies the SHA-256 and parses the safetensors bytes: nothing is
unpickled, and every failure is a :class:`~torchslim.errors.CheckpointError`
naming the file.

Example:
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = write_bundle(f"{tmp.name}/b", {"w": torch.ones(2)}, "example", 1, {"note": "x"})
    >>> path.name
    'b.safetensors'
    >>> info, tensors = read_bundle(f"{tmp.name}/b", "example", 1, "example")
    >>> info["note"], info["bytes"] == path.stat().st_size, tensors["w"].tolist()
    ('x', True, [1.0, 1.0])
    >>> tmp.cleanup()
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from torchslim.errors import CheckpointError
from torchslim.io.atomic import atomic_write_bytes, atomic_write_text

#: The keys every sidecar holds; a caller's fields may not reuse them.
RESERVED = ("format", "format_version", "tensors", "sha256", "bytes")
#: The most bytes a sidecar (or any JSON document torchslim reads beside its tensors) may have.
MAX_SIDECAR = 64 << 20
#: The deepest nesting of lists and mappings a sidecar or a ``.tslim`` header may have.
MAX_JSON_DEPTH = 64
#: A compressed file may decode to at most ``MAX_EXPANSION`` times its size plus ``DECODE_ALLOWANCE`` bytes.
MAX_EXPANSION = 1024
DECODE_ALLOWANCE = 32 << 20


def decode_budget(file_bytes: int) -> int:
    """The most bytes of tensors a file of ``file_bytes`` bytes may decode to (or make a reader build).

    Sparse and entropy-coded files legitimately decode to many times their size
    (Deep Compression: 35-49x; an all-zero tensor costs a few bytes); a hostile
    file can claim anything. This bound lets every real file through and keeps a
    reader's memory within a multiple of the file's size plus a fixed allowance.

    Example:
        >>> decode_budget(1000) == 1000 * MAX_EXPANSION + DECODE_ALLOWANCE
        True
    """
    return MAX_EXPANSION * max(0, file_bytes) + DECODE_ALLOWANCE


def json_cost(text: bytes) -> int:
    """An upper bound of the bytes of Python objects ``json.loads(text)`` would build (no parsing).

    Every JSON value but the first follows a ``,``, ``:``, ``[`` or ``{``; a container
    costs at most 100 bytes, any other value at most 40 bytes plus its text.

    Example:
        >>> json_cost(b"[[], [], []]") > json_cost(b'"a string of 26 characters"')
        True
    """
    containers = text.count(b"[") + text.count(b"{")
    values = containers + text.count(b",") + text.count(b":") + 1
    return 100 * containers + 40 * values + 2 * len(text)


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """The nesting depth of the JSON data ``value`` (a scalar: 0), counted up to ``limit + 1`` (no recursion).

    Example:
        >>> json_depth({"a": [1, {"b": []}]}), json_depth(7)
        (4, 0)
    """
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return depth
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_json(text: bytes, *, max_cost: int | None = None) -> Any:
    """UTF-8 JSON ``text`` as Python data; anything else is a ``ValueError`` saying what is wrong.

    Refused: invalid UTF-8 or JSON, integers beyond Python's digit limit, nesting
    deeper than :data:`MAX_JSON_DEPTH`, and (``max_cost``) documents whose objects
    could take more than ``max_cost`` bytes (see :func:`json_cost`).

    Example:
        >>> parse_json(b'{"a": [1, 2]}')
        {'a': [1, 2]}
        >>> parse_json(b"[" * 100 + b"]" * 100)
        Traceback (most recent call last):
            ...
        ValueError: nested deeper than 64 levels
    """
    if max_cost is not None and json_cost(text) > max_cost:
        raise ValueError(f"too many values for its size (more than {max_cost} bytes once parsed)")
    try:
        value = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8: {exc}") from None
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, MemoryError) as exc:  # JSONDecodeError, or an integer beyond the digit limit
        raise ValueError(f"not valid JSON: {exc}") from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def read_limited(path: Path, limit: int) -> bytes:
    """The bytes of the regular file ``path``, refusing (``ValueError``) one of more than ``limit`` bytes.

    Raises:
        OSError: ``path`` cannot be opened (missing, a directory, no permission).
        ValueError: not a regular file (a device, a pipe), or larger than ``limit``.
    """
    info = os.stat(path)
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
    if not stat.S_ISREG(info.st_mode):  # a device or a pipe: never read (it may never end)
        raise ValueError("not a regular file")
    if info.st_size > limit:
        raise ValueError(f"{info.st_size} bytes, more than the {limit} allowed")
    with open(path, "rb") as fh:
        data = fh.read(info.st_size)
        if fh.read(1):
            raise ValueError("the file grew while it was read")
    return data


def bundle_paths(path: str | Path) -> tuple[Path, Path]:
    """``(<stem>.safetensors, <stem>.json)`` for a stem, or for either file of the bundle.

    Example:
        >>> [p.name for p in bundle_paths("runs/model.json")]
        ['model.safetensors', 'model.json']
    """
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def write_bundle(
    path: str | Path,
    tensors: Mapping[str, torch.Tensor],
    fmt: str,
    version: int,
    fields: Mapping[str, Any] | None = None,
    *,
    tensors_format: str | None = None,
    compact: bool = False,
) -> Path:
    """Write ``tensors`` and a sidecar naming ``fmt`` / ``version`` plus ``fields``; returns the tensors file's path.

    Args:
        path: the stem (or either file of the bundle).
        tensors: contiguous CPU tensors, by name.
        fmt: the sidecar's ``format``.
        version: the sidecar's ``format_version``.
        fields: more JSON data for the sidecar (not one of :data:`RESERVED`).
        tensors_format: the safetensors header's ``format`` metadata (default ``fmt``).
        compact: a one-line sidecar (default: indented by 2); keys are always sorted.

    Raises:
        ValueError: a field reuses a reserved key.
    """
    fields = dict(fields or {})
    clash = sorted(set(fields) & set(RESERVED))
    if clash:
        raise ValueError(f"sidecar fields {clash} are reserved; a bundle sets {', '.join(RESERVED)} itself")
    tensors_path, sidecar = bundle_paths(path)
    blob = st_save(dict(tensors), metadata={"format": tensors_format or fmt})
    atomic_write_bytes(tensors_path, blob)
    info = {
        "format": fmt,
        "format_version": version,
        "tensors": tensors_path.name,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "bytes": len(blob),
        **fields,
    }
    text = json.dumps(info, separators=(",", ":"), sort_keys=True) if compact else json.dumps(info, indent=2, sort_keys=True)
    atomic_write_text(sidecar, text)
    return tensors_path


def read_sidecar_file(sidecar: Path, fmt: str, version: int, what: str) -> dict[str, Any]:
    """Read a JSON sidecar and check its ``format`` and ``format_version`` (``what`` names the file kind in errors).

    Raises:
        CheckpointError: the sidecar is missing, unreadable, corrupt, of another format or version.
    """
    try:
        info = parse_json(read_limited(sidecar, MAX_SIDECAR))
    except FileNotFoundError:
        raise CheckpointError(f"{what} sidecar {sidecar} not found") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {what} sidecar {sidecar}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CheckpointError(f"{what} sidecar {sidecar} is corrupt: {exc}") from None
    if not isinstance(info, dict) or info.get("format") != fmt:
        raise CheckpointError(f"{sidecar} is not a torchslim {what} sidecar")
    if info.get("format_version") != version:
        raise CheckpointError(
            f"{sidecar}: unsupported {what} format_version {info.get('format_version')!r} (this torchslim reads {version})"
        )
    return info


def read_verified(
    tensors_path: Path, sidecar: Path, fmt: str, version: int, what: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The checked sidecar and the safetensors tensors, verified against the sidecar's SHA-256 (nothing unpickled).

    Raises:
        CheckpointError: naming the file that is missing, corrupt, or does not match the sidecar.
    """
    info = read_sidecar_file(sidecar, fmt, version, what)
    size = info.get("bytes")
    limit = size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else 1 << 62
    try:
        blob = read_limited(tensors_path, limit)
    except FileNotFoundError:
        raise CheckpointError(f"{what} tensors {tensors_path} not found") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {what} tensors {tensors_path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CheckpointError(f"{what} {tensors_path} is corrupt: {exc} (its sidecar says {size!r} bytes)") from None
    if "bytes" in info and size != len(blob):
        raise CheckpointError(f"{what} {tensors_path} is corrupt: it has {len(blob)} bytes, its sidecar says {size!r}")
    if hashlib.sha256(blob).hexdigest() != info.get("sha256"):
        raise CheckpointError(f"{what} {tensors_path} is corrupt: its SHA-256 checksum does not match the sidecar")
    try:
        return info, st_load(blob)
    except Exception as exc:  # noqa: BLE001 - any parse failure is corruption
        raise CheckpointError(f"{what} {tensors_path} is corrupt: {exc}") from None


def read_bundle(path: str | Path, fmt: str, version: int, what: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """:func:`read_verified` on the two files of the bundle at ``path`` (a stem or either file)."""
    return read_verified(*bundle_paths(path), fmt, version, what)
