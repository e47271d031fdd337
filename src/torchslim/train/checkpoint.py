"""Checkpoints: safetensors tensors + a JSON sidecar, both written atomically.

``<stem>.safetensors`` holds the state dict (pruning masks included);
``<stem>.json`` holds the format version, the SHA-256 of the tensors file, the
structure steps of structured pruning (replayed onto a fresh model before its
weights are loaded) and whatever metadata the caller adds. Loading verifies the checksum and that the
tensors fit the model before touching it; nothing is unpickled.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save as st_save
from torch import nn

from torchslim._io import atomic_write_bytes, atomic_write_text
from torchslim.encode.kmeans import CODES_SUFFIX, attach_codes, validate_codes
from torchslim.errors import CheckpointError, TorchslimError
from torchslim.graph.slicing import recorded_structure, replay_structure
from torchslim.prune.mask import MASK_SUFFIX, attach_mask

FORMAT = "torchslim-checkpoint"
FORMAT_VERSION = 1


def _paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def save_checkpoint(model: nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Save ``model``'s state dict to ``<path>.safetensors`` and a sidecar ``<path>.json``.

    Returns the path of the tensors file. The sidecar is written last, so a
    sidecar always describes a complete tensors file.
    """
    tensors_path, sidecar = _paths(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = st_save(state, metadata={"format": "pt"})
    atomic_write_bytes(tensors_path, blob)
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tensors": tensors_path.name,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "bytes": len(blob),
        "structure": recorded_structure(model),
        "quant": model.__dict__.get("_torchslim_quant"),
        "meta": meta or {},
    }
    atomic_write_text(sidecar, json.dumps(info, indent=2, sort_keys=True))
    return tensors_path


def read_sidecar_file(sidecar: Path, fmt: str, version: int, what: str) -> dict[str, Any]:
    """Read a JSON sidecar and check its ``format`` and ``format_version`` (``what`` names the file kind in errors)."""
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{what} sidecar {sidecar} not found") from None
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
    """The checked sidecar and the safetensors tensors, verified against the sidecar's SHA-256 (nothing unpickled)."""
    info = read_sidecar_file(sidecar, fmt, version, what)
    try:
        blob = tensors_path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{what} tensors {tensors_path} not found") from None
    if hashlib.sha256(blob).hexdigest() != info.get("sha256"):
        raise CheckpointError(f"{what} {tensors_path} is corrupt: its SHA-256 does not match the sidecar")
    try:
        return info, st_load(blob)
    except Exception as exc:  # noqa: BLE001 - any parse failure is corruption
        raise CheckpointError(f"{what} {tensors_path} is corrupt: {exc}") from None


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint's sidecar JSON."""
    return read_sidecar_file(_paths(path)[1], FORMAT, FORMAT_VERSION, "checkpoint")


def load_checkpoint(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a checkpoint into ``model`` after verifying its checksum; returns the sidecar's ``meta``."""
    tensors_path, sidecar = _paths(path)
    info, state = read_verified(tensors_path, sidecar, FORMAT, FORMAT_VERSION, "checkpoint")
    load_structured_state(model, info.get("structure") or [], state, source=str(tensors_path), quant=info.get("quant"))
    return dict(info.get("meta", {}))


def load_structured_state(
    model: nn.Module,
    steps: list[dict[str, Any]],
    state: dict[str, torch.Tensor],
    *,
    source: str,
    quant: dict[str, Any] | None = None,
) -> None:
    """Replay recorded structure ``steps`` (and quantization ``quant``) onto ``model``, then load ``state``.

    The model is untouched on any mismatch: a changed structure is rebuilt and
    loaded on a copy first.

    Raises:
        CheckpointError: the structure cannot be replayed, or the state does not fit.
    """
    if quant is not None and model.__dict__.get("_torchslim_quant") is not None:
        quant = None  # already quantized (e.g. loading into the model that was saved)
    if not steps and quant is None:
        load_state(model, state, source=source)
        return
    from torchslim.quant.ptq import _transplant, rebuild_quantized  # late: torchslim.quant imports training

    work = copy.deepcopy(model)
    try:
        if steps:
            replay_structure(work, steps)
        if quant is not None:
            rebuild_quantized(work, quant, state)
    except TorchslimError as exc:
        raise CheckpointError(f"{source}: cannot rebuild the recorded structure on this model: {exc}") from None
    load_state(work, state, source=source)
    _transplant(model, work)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], *, source: str = "state dict") -> None:
    """Load ``state`` into ``model``, re-attaching pruning masks; the model is untouched on mismatch.

    Raises:
        CheckpointError: naming missing and unexpected keys and shape mismatches.
    """
    own = model.state_dict()
    modules = dict(model.named_modules())
    # constraint buffers a fresh model lacks: pruning masks (<param>_mask) and sharing codes (<param>_codes)
    extras: list[tuple[str, nn.Module, str, torch.Tensor]] = []
    problems: list[str] = []
    for key, value in state.items():
        suffix = next((s for s in (MASK_SUFFIX, CODES_SUFFIX) if key.endswith(s)), None)
        if key in own or suffix is None:
            continue
        mod_name, _, buf = key.rpartition(".")
        module, pname = modules.get(mod_name), buf[: -len(suffix)]
        param = getattr(module, pname, None) if module is not None else None
        if not isinstance(param, torch.Tensor) or param.shape != value.shape:
            problems.append(f"{'mask' if suffix == MASK_SUFFIX else 'sharing codes'} {key} fit no parameter of the model")
        else:
            if suffix == CODES_SUFFIX:
                try:
                    validate_codes(value, param, key)
                except ValueError as exc:
                    problems.append(str(exc))
                    continue
            extras.append((suffix, module, pname, value))
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own and not k.endswith((MASK_SUFFIX, CODES_SUFFIX))]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            problems.append(f"{label}: {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}")
    if problems:
        raise CheckpointError(f"{source} does not match the model architecture: " + "; ".join(problems))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    for suffix, module, pname, value in extras:
        if suffix == MASK_SUFFIX:
            attach_mask(module, pname, value)
    for suffix, module, pname, value in extras:
        if suffix == CODES_SUFFIX:  # after the weights are loaded: snapping a shared weight is then a no-op
            attach_codes(module, pname, value)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a weights file into ``model``: a safetensors file, a torchslim checkpoint, or a
    PyTorch state dict (``.pt``/``.pth``/``.bin``, read with ``torch.load(weights_only=True)``)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"weights file {p} not found")
    if p.suffix == ".safetensors" and _paths(p)[1].exists():
        load_checkpoint(model, p)
        return
    try:
        if p.suffix == ".safetensors":
            state = st_load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - report any parse failure as a bad file
        raise CheckpointError(f"cannot read weights file {p}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"weights file {p} does not hold a state dict of tensors")
    load_state(model, state, source=str(p))
