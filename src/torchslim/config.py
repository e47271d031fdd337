"""Base class of every torchslim config.

Configs are data: pydantic models that forbid unknown keys, use string enums
(``Literal``), carry a ``version`` and map one-to-one onto recipe YAML. A
validation failure becomes a :class:`~torchslim.errors.ConfigError` that names
every bad field, the bad value and what is allowed.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from torchslim.errors import ConfigError, ConfigIssue

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base config: unknown keys rejected, assignments validated, versioned."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    version: int = 1

    @classmethod
    def parse(cls: type[C], data: Any, *, source: str | None = None, prefix: str = "") -> C:
        """Validate ``data`` (a mapping) into this config or raise ``ConfigError``."""
        if isinstance(data, cls):
            return data
        try:
            return cls.model_validate(data if data is not None else {})
        except ValidationError as exc:
            raise ConfigError(issues_from_validation(exc, prefix), source) from None


def issues_from_validation(exc: ValidationError, prefix: str = "") -> list[ConfigIssue]:
    """Turn a pydantic ``ValidationError`` into ``ConfigIssue`` records (all of them)."""
    issues = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        path = ".".join(p for p in (prefix, loc) if p)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        value = err.get("input") if err["type"] not in ("missing",) else None
        if isinstance(value, dict) and err["type"] != "extra_forbidden":
            value = None  # the whole sub-mapping is noise in a message
        issues.append(ConfigIssue(path, msg, value))
    return issues
