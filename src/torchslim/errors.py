"""Typed errors raised by torchslim.

Every error a user can cause derives from :class:`TorchslimError`; the CLI prints
its message (no traceback unless ``--debug``) and exits non-zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class TorchslimError(Exception):
    """Base class of every error torchslim raises on bad input or bad state."""


class UnknownNameError(TorchslimError, KeyError):
    """A registry lookup failed; the message lists every registered name."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind, self.name, self.known = kind, name, sorted(known)
        super().__init__(f"unknown {kind} {name!r}; registered: {', '.join(self.known) or '(none)'}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config or recipe: where, what was given, what is wrong."""

    path: str
    message: str
    value: Any = None

    def __str__(self) -> str:
        value = "" if self.value is None else f" (got {shown(self.value)})"
        return f"{self.path or '<root>'}: {self.message}{value}"


def shown(value: Any, limit: int = 200) -> str:
    """``repr(value)`` for a message: at most ``limit`` characters, never an error (huge integers included).

    Example:
        >>> shown(10 ** 5000)
        '<an integer of about 5001 digits>'
        >>> shown("x" * 300)[-18:]
        'xxx... (302 chars)'
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 13000:
        return f"<an integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a message must never fail on the value it reports
        return f"<a {type(value).__name__}>"
    return text if len(text) <= limit else f"{text[:limit - 20]}... ({len(text)} chars)"


class ConfigError(TorchslimError):
    """A config or recipe is invalid; ``issues`` lists every problem found at once."""

    def __init__(self, issues: list[ConfigIssue], source: str | None = None) -> None:
        self.issues = list(issues)
        self.source = source
        head = f"{len(self.issues)} error(s) in {source or 'config'}"
        super().__init__(head + "\n" + "\n".join(f"  - {i}" for i in self.issues))


class DataNotFoundError(TorchslimError):
    """A data set's files are not installed; the message says how to install them."""


class CheckpointError(TorchslimError):
    """A checkpoint or weights file is missing, corrupt, or does not fit the model."""


class TransformRefusedError(TorchslimError):
    """A technique refused to transform a model; the model was left unchanged."""


class TrainingDivergedError(TorchslimError):
    """The training loss became NaN or infinite; the model's parameters and buffers were restored.

    ``epoch`` and ``step`` say where (1-based), ``lr`` the learning rate of that step.
    """

    def __init__(self, message: str, *, epoch: int, step: int, lr: float) -> None:
        self.epoch, self.step, self.lr = epoch, step, lr
        super().__init__(message)
