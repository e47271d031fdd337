"""Checkpoints: safetensors tensors + a JSON sidecar (a :mod:`torchslim.io.bundle`), both written atomically.

``<stem>.safetensors`` holds the state dict (constraint buffers such as pruning
masks included); ``<stem>.json`` holds the format version, the SHA-256 of the
tensors file, the model's provenance records (structure steps, quantization:
replayed onto a fresh model before its weights are loaded, see
:mod:`torchslim.graph.provenance`) and whatever metadata the caller adds.
Loading verifies the checksum and that the tensors fit the model before touching
it; nothing is unpickled.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as st_load_file
from torch import nn

from torchslim.errors import CheckpointError, TorchslimError
from torchslim.graph import constraints, provenance
from torchslim.graph.transaction import transplant
from torchslim.io.bundle import bundle_paths, read_sidecar_file, read_verified, write_bundle

FORMAT = "torchslim-checkpoint"
FORMAT_VERSION = 1
_paths = bundle_paths  # the name this module used before the bundle


def save_checkpoint(model: nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Save ``model``'s state dict to ``<path>.safetensors`` and a sidecar ``<path>.json``.

    Returns the path of the tensors file. The sidecar is written last, so a
    sidecar always describes a complete tensors file.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fields = {"provenance": provenance.records(model), "meta": meta or {}}
    return write_bundle(path, state, FORMAT, FORMAT_VERSION, fields, tensors_format="pt")


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint's sidecar JSON."""
    return read_sidecar_file(bundle_paths(path)[1], FORMAT, FORMAT_VERSION, "checkpoint")


def load_checkpoint(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a checkpoint into ``model`` after verifying its checksum; returns the sidecar's ``meta``."""
    tensors_path, sidecar = bundle_paths(path)
    info, state = read_verified(tensors_path, sidecar, FORMAT, FORMAT_VERSION, "checkpoint")
    meta = info.get("meta", {})
    if not isinstance(meta, dict):
        raise CheckpointError(f"{sidecar}: its meta is a {type(meta).__name__}, not a mapping")
    load_structured_state(model, sidecar_provenance(info, str(sidecar)), state, source=str(tensors_path))
    return dict(meta)


def sidecar_provenance(info: dict[str, Any], source: str) -> list[dict[str, Any]]:
    """The provenance records of a sidecar (files from before provenance: its ``structure`` and ``quant``)."""
    try:
        if "provenance" in info:
            return provenance.check_records(info["provenance"])
        structure, quant = info.get("structure"), info.get("quant")
        if not isinstance(structure, (list, type(None))) or not isinstance(quant, (dict, type(None))):
            raise CheckpointError("its structure must be a list and its quant record a mapping")
        return provenance.check_records(provenance.from_legacy(structure, quant))
    except TorchslimError as exc:
        raise CheckpointError(f"{source}: {exc}") from None


def records_of(steps: Any, quant: Any, source: str) -> list[dict[str, Any]]:
    """The checked provenance records of ``steps`` (records, or bare structure steps) and a separate ``quant`` record.

    Raises:
        CheckpointError: naming ``source``, when they are not records of the expected form.
    """
    if not isinstance(steps, list) or not isinstance(quant, (dict, type(None))):
        raise CheckpointError(f"{source}: the recorded structure must be a list and the quant record a mapping")
    recs = steps if all(isinstance(s, dict) and set(s) == {"kind", "data"} for s in steps) else None
    if recs is None or quant is not None:
        recs = provenance.from_legacy([s for s in steps if not (isinstance(s, dict) and set(s) == {"kind", "data"})], quant)
    try:
        return provenance.check_records(recs)
    except TorchslimError as exc:
        raise CheckpointError(f"{source}: {exc}") from None


def load_structured_state(
    model: nn.Module,
    steps: list[dict[str, Any]],
    state: dict[str, torch.Tensor],
    *,
    source: str,
    quant: dict[str, Any] | None = None,
    dtypes: bool = False,
) -> None:
    """Rebuild the provenance records ``steps`` the model lacks (structure, quantization), then load ``state``.

    ``steps`` are provenance records (``{"kind", "data"}``); bare structure steps
    and a separate ``quant`` record, as files from before provenance hold them,
    are accepted too. The model is untouched on any mismatch: a changed structure
    is rebuilt and loaded on a copy first. ``dtypes``: see :func:`load_state`.

    Raises:
        CheckpointError: the records cannot be replayed, or the state does not fit.
    """
    recs = records_of(steps, quant, source)
    if _canon(provenance.records(model)) == _canon(recs):
        load_state(model, state, source=source, dtypes=dtypes)
        return
    work = copy.deepcopy(model)
    try:
        provenance.replay(work, recs, state)
    except TorchslimError as exc:
        raise CheckpointError(f"{source}: cannot rebuild the recorded structure on this model: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - records read from a file: any failure to replay them is a bad file
        raise CheckpointError(
            f"{source}: cannot rebuild the recorded structure on this model: malformed record ({type(exc).__name__}: {exc})"
        ) from None
    load_state(work, state, source=source, dtypes=dtypes)
    transplant(model, work)


def _canon(recs: list[dict[str, Any]]) -> str:
    return json.dumps(recs, sort_keys=True)


def _constraint_extras(
    model: nn.Module, state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]
) -> tuple[list[tuple[constraints.Constraint, nn.Module, str, torch.Tensor]], list[str]]:
    """Constraint buffers in ``state`` that a fresh ``model`` lacks (masks, sharing codes), checked; and problems."""
    modules = dict(model.named_modules())
    extras: list[tuple[constraints.Constraint, nn.Module, str, torch.Tensor]] = []
    problems: list[str] = []
    for key, value in state.items():
        c = constraints.of_key(key)
        if key in own or c is None:
            continue
        mod_name, _, buf = key.rpartition(".")
        module, pname = modules.get(mod_name), buf[: -len(c.suffix)]
        param = getattr(module, pname, None) if module is not None else None
        if not isinstance(param, torch.Tensor) or param.shape != value.shape:
            problems.append(f"{c.name} buffer {key} fits no parameter of the model")
            continue
        if c.validate is not None:
            try:
                c.validate(value, param, key)
            except ValueError as exc:
                problems.append(str(exc))
                continue
        extras.append((c, module, pname, value))
    return extras, problems


def load_state(model: nn.Module, state: dict[str, torch.Tensor], *, source: str = "state dict", dtypes: bool = False) -> None:
    """Load ``state`` into ``model``, re-attaching constraints (pruning masks, sharing codes); untouched on mismatch.

    ``dtypes``: every tensor must have the dtype of the model's (a ``.tslim``
    file: a relabelled record is refused rather than converted); by default
    values are converted, as ``load_state_dict`` does.

    Raises:
        CheckpointError: naming missing and unexpected keys, shape (and dtype) mismatches.
    """
    own = model.state_dict()
    extras, problems = _constraint_extras(model, state, own)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own and constraints.of_key(k) is None]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    kinds = [
        f"{k}: file {str(state[k].dtype).removeprefix('torch.')} vs model {str(own[k].dtype).removeprefix('torch.')}"
        for k in own
        if dtypes and k in state and state[k].dtype != own[k].dtype
    ]
    found = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes), ("dtype mismatches", kinds))
    for label, items in found:
        if items:
            problems.append(f"{label}: {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}")
    if problems:
        raise CheckpointError(f"{source} does not match the model architecture: " + "; ".join(problems))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    for late in (False, True):  # constraints that snap weights attach after the weights are loaded
        for c, module, pname, value in sorted(extras, key=lambda e: e[0].order):
            if c.after_weights == late:
                c.attach(module, pname, value)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a weights file into ``model``: a safetensors file, a torchslim checkpoint, or a
    PyTorch state dict (``.pt``/``.pth``/``.bin``, read with ``torch.load(weights_only=True)``)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"weights file {p} not found")
    if p.suffix == ".safetensors" and bundle_paths(p)[1].exists():
        load_checkpoint(model, p)
        return
    _sniff_weights(p)
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


def _sniff_weights(p: Path) -> None:
    """Refuse, with a clear message, a weights file that is neither safetensors nor a ``torch.save`` file."""
    try:
        if not p.is_file():
            raise CheckpointError(f"cannot read weights file {p}: not a regular file")
        with open(p, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise CheckpointError(f"cannot read weights file {p}: {exc.strerror or exc}") from None
    size = p.stat().st_size
    if head.startswith(b"TSLIM\x00"):
        raise CheckpointError(f"cannot read weights file {p}: it is a .tslim file (load it with ts.load)")
    safetensors = len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8
    if not (safetensors or head.startswith((b"PK\x03\x04", b"\x80"))):  # safetensors, zip or pickle (legacy torch.save)
        raise CheckpointError(
            f"cannot read weights file {p}: not a safetensors file, torchslim checkpoint or PyTorch state dict "
            f"(it starts with {head!r})"
        )
