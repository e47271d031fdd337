"""Explicit, decorator-based registries (criteria, data sets, zoo models, stages...).

A registry maps a name to an object. Registration happens where the object is
defined, with a decorator; a failed lookup raises :class:`UnknownNameError`
listing every registered name.

Example:
    >>> MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
    >>> @MODELS.register("lenet300")
    ... def lenet300() -> nn.Module: ...
    >>> MODELS.get("lenet300").__name__
    'lenet300'
    >>> MODELS.get("lenet5")
    Traceback (most recent call last):
        ...
    torchslim.errors.UnknownNameError: unknown model 'lenet5'; registered: lenet300
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from torchslim.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of objects of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; a duplicate name is an error."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """Return the object registered as ``name`` or raise listing what exists."""
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, list(self._items)) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
