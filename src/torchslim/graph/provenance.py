"""Provenance: what was done to a model's structure, as JSON records that rebuild it on a fresh model.

Structured pruning slices modules, quantization swaps layers and inserts
quantizers: a checkpoint of such a model does not fit a freshly built one. Each
such technique appends a record ``{"kind": ..., "data": ...}`` (JSON data) to the
model's provenance and registers a *rebuilder* for its kind: ``(model, data,
state)`` gives a fresh model the recorded structure (``state``, the state dict
about to be loaded, tells shapes that the record does not). Checkpoints store the
records; loading replays the ones the model lacks, in order.

Example:
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> record(model, "structure", {"modules": {"0": {"out": [0, 1, 2]}, "2": {"in": [0, 1, 2]}}})
    >>> [r["kind"] for r in records(model)]
    ['structure']
    >>> fresh = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> replay(fresh, records(model), {})
    >>> fresh[0].out_features, records(fresh) == records(model)
    (3, True)
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.registry import Registry

ATTR = "_torchslim_provenance"
Rebuilder = Callable[[nn.Module, Any, dict[str, torch.Tensor]], None]
REBUILDERS: Registry[Rebuilder] = Registry("provenance kind")


def register_rebuilder(kind: str) -> Callable[[Rebuilder], Rebuilder]:
    """Decorator: ``fn(model, data, state)`` rebuilds a record of ``kind`` on a fresh model.

    The rebuilder must not append the record itself: :func:`replay` does.
    """
    return REBUILDERS.register(kind)


def records(model: nn.Module) -> list[dict[str, Any]]:
    """A copy of ``model``'s provenance records, oldest first."""
    return copy.deepcopy(model.__dict__.get(ATTR, []))


def of_kind(model: nn.Module, kind: str) -> list[Any]:
    """The ``data`` of every record of ``kind`` (copies), oldest first."""
    return [r["data"] for r in records(model) if r["kind"] == kind]


def latest(model: nn.Module, kind: str) -> Any | None:
    """The ``data`` of the newest record of ``kind`` (a copy), or ``None``."""
    found = of_kind(model, kind)
    return found[-1] if found else None


def record(model: nn.Module, kind: str, data: Any) -> None:
    """Append a record (``data`` must be JSON data: it is stored in checkpoints)."""
    try:
        json.dumps(data)
    except (TypeError, ValueError) as exc:
        raise TorchslimError(f"a {kind!r} provenance record must be JSON data: {exc}") from None
    model.__dict__.setdefault(ATTR, []).append({"kind": kind, "data": copy.deepcopy(data)})


def set_records(model: nn.Module, recs: list[dict[str, Any]]) -> None:
    """Replace ``model``'s provenance by ``recs`` (checked)."""
    model.__dict__[ATTR] = [dict(r) for r in check_records(recs)]


def check_records(recs: Any) -> list[dict[str, Any]]:
    """``recs`` if it is a list of ``{"kind": str, "data": ...}`` records, else a ``TorchslimError``."""
    if not isinstance(recs, list) or not all(
        isinstance(r, dict) and set(r) == {"kind", "data"} and isinstance(r["kind"], str) for r in recs
    ):
        raise TorchslimError("provenance must be a list of {kind, data} records")
    return copy.deepcopy(recs)


def from_legacy(structure: list[Any] | None, quant: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Records from the ``structure`` and ``quant`` keys files written before provenance existed."""
    recs = [{"kind": "structure", "data": s} for s in structure or []]
    if quant is not None:
        recs.append({"kind": "quant", "data": quant})
    return recs


def _canon(recs: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(r, sort_keys=True) for r in recs]


def replay(model: nn.Module, recs: list[dict[str, Any]], state: dict[str, torch.Tensor]) -> None:
    """Bring ``model`` to the provenance ``recs``: rebuild, in order, the records it does not have yet.

    Works in place; callers that need all-or-nothing run it on a copy (see
    :func:`torchslim.io.checkpoint.load_structured_state`).

    Raises:
        TorchslimError: the model already carries different records, or a kind has no rebuilder.
    """
    recs = check_records(recs)
    current = records(model)
    if _canon(recs[: len(current)]) != _canon(current):
        have = ", ".join(r["kind"] for r in current) or "none"
        want = ", ".join(r["kind"] for r in recs) or "none"
        raise TorchslimError(f"the model's recorded transformations ({have}) differ from the file's ({want})")
    for rec in recs[len(current) :]:
        REBUILDERS.get(rec["kind"])(model, copy.deepcopy(rec["data"]), state)
        model.__dict__.setdefault(ATTR, []).append(copy.deepcopy(rec))
