"""How a recipe (or a distillation stage) names a model: ``zoo:NAME`` or an entry point, with weights."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from torchslim.config import Config
from torchslim.zoo.registry import MODELS

ENTRY_POINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class ModelSpec(Config):
    """Where the model comes from: ``zoo:NAME`` or an entry point ``pkg.module:build_fn``."""

    name: str
    args: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if v.startswith("zoo:"):
            if v[4:] not in MODELS:
                raise ValueError(f"unknown zoo model {v[4:]!r}; registered: {', '.join(MODELS.names())}")
        elif not ENTRY_POINT.match(v):
            raise ValueError("must be 'zoo:NAME' or an entry point 'package.module:function'")
        return v

    @field_validator("weights")
    @classmethod
    def _check_weights(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).exists():
            raise ValueError(f"weights file {v!r} not found")
        return v
