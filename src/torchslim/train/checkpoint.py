"""Checkpoints moved to :mod:`torchslim.io.checkpoint`; this module re-exports them."""

from torchslim.io.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    load_checkpoint,
    load_state,
    load_structured_state,
    load_weights,
    read_sidecar,
    read_sidecar_file,
    read_verified,
    save_checkpoint,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "load_checkpoint",
    "load_state",
    "load_structured_state",
    "load_weights",
    "read_sidecar",
    "read_sidecar_file",
    "read_verified",
    "save_checkpoint",
]
