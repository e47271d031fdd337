"""Base class of every torchslim config, and the one calibration config.

Configs are data: pydantic models that forbid unknown keys, use string enums
(``Literal``), carry a checked ``version`` and map one-to-one onto recipe YAML.
A validation failure becomes a :class:`~torchslim.errors.ConfigError` that
names every bad field, the bad value and what is allowed.

A renamed field keeps working for one release: a config lists it in
``RENAMED`` (old key → new dotted path) and the old key is moved to the new
place with a :class:`DeprecationWarning` that shows the new spelling.

Example:
    >>> CalibrationConfig.parse({"batches": 4}).batch_size
    128
    >>> CalibrationConfig.parse({"version": 99})
    Traceback (most recent call last):
        ...
    torchslim.errors.ConfigError: 1 error(s) in config
      - version: unsupported version; supported: 1 (got 99)
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from torchslim.errors import ConfigError, ConfigIssue

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base config: unknown keys rejected, assignments validated, versioned.

    Class attributes:
        SUPPORTED_VERSIONS: the ``version`` values this release reads.
        RENAMED: ``{old_key: "new.dotted.path"}``; an old key still works for one
            release, with a :class:`DeprecationWarning`.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)
    SUPPORTED_VERSIONS: ClassVar[tuple[int, ...]] = (1,)
    RENAMED: ClassVar[dict[str, str]] = {}

    version: int = 1

    @field_validator("version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v not in cls.SUPPORTED_VERSIONS:
            raise ValueError(f"unsupported version; supported: {', '.join(map(str, cls.SUPPORTED_VERSIONS))}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, raw: Any) -> Any:
        if not cls.RENAMED or not isinstance(raw, dict) or not any(k in raw for k in cls.RENAMED):
            return raw
        raw = dict(raw)
        for old, new in cls.RENAMED.items():
            if old in raw:
                _move(raw, old, new, cls.__name__)
        return raw

    @classmethod
    def parse(cls: type[C], data: Any, *, source: str | None = None, prefix: str = "") -> C:
        """Validate ``data`` (a mapping, an instance, or ``None`` for the defaults) or raise ``ConfigError``."""
        if isinstance(data, cls):
            return data
        try:
            return cls.model_validate(data if data is not None else {})
        except ValidationError as exc:
            raise ConfigError(issues_from_validation(exc, prefix), source) from None


def _move(raw: dict[str, Any], old: str, new: str, owner: str) -> None:
    """Move ``raw[old]`` to the dotted path ``new`` (creating sub-mappings), warning about the old spelling."""
    value = raw.pop(old)
    warnings.warn(
        f"{owner}: '{old}' is deprecated and will be removed in the next release; write '{new}' instead",
        DeprecationWarning,
        stacklevel=6,
    )
    *parents, leaf = new.split(".")
    node = raw
    for part in parents:
        sub = node.get(part)
        if isinstance(sub, BaseModel):
            sub = sub.model_dump()
        node[part] = dict(sub) if isinstance(sub, dict) else {}
        node = node[part]
    if leaf in node:
        raise ValueError(f"'{old}' is the deprecated spelling of '{new}': give only '{new}'")
    node[leaf] = value


class CalibrationConfig(Config):
    """Where a technique that needs data (calibration, statistics, gradients) draws it from.

    Attributes:
        batches: calibration batches used (at most; one pass serves every layer).
        batch_size: samples per batch when torchslim draws the batches from a data set
            (a recipe stage); a loader passed to a verb keeps its own batch size.
        split: the data split the batches come from (``train``, ``val`` or ``test``).
        seed: seed of the shuffled draw.

    Example:
        >>> cal = CalibrationConfig(batches=2, batch_size=32)
        >>> x, _ = next(iter(ts.load_data("digits").calibration_loader(cal)))
        >>> x.shape
        torch.Size([32, 1, 8, 8])
    """

    batches: int = Field(default=8, ge=1)
    batch_size: int = Field(default=128, ge=1)
    split: Literal["train", "val", "test"] = "train"
    seed: int = 0


def calibration_field(**defaults: Any) -> Any:
    """A ``calibration`` field whose default :class:`CalibrationConfig` has ``defaults``.

    Example:
        >>> class Demo(Config):
        ...     calibration: CalibrationConfig = calibration_field(batches=16)
        >>> Demo().calibration.batches
        16
    """
    return Field(default_factory=lambda: CalibrationConfig(**defaults))


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
