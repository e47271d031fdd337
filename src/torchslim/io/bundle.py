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

import hashlib
import json
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
        info = json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{what} sidecar {sidecar} not found") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {what} sidecar {sidecar}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
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
    try:
        blob = tensors_path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{what} tensors {tensors_path} not found") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {what} tensors {tensors_path}: {exc.strerror or exc}") from None
    if hashlib.sha256(blob).hexdigest() != info.get("sha256"):
        raise CheckpointError(f"{what} {tensors_path} is corrupt: its SHA-256 checksum does not match the sidecar")
    try:
        return info, st_load(blob)
    except Exception as exc:  # noqa: BLE001 - any parse failure is corruption
        raise CheckpointError(f"{what} {tensors_path} is corrupt: {exc}") from None


def read_bundle(path: str | Path, fmt: str, version: int, what: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """:func:`read_verified` on the two files of the bundle at ``path`` (a stem or either file)."""
    return read_verified(*bundle_paths(path), fmt, version, what)
