"""Keeping earlier spellings working for one release, each with a DeprecationWarning that shows the new one."""

from __future__ import annotations

import sys
import types
import warnings
from collections.abc import Callable
from typing import Any


def deprecated_alias(fn: Callable[..., Any], old: str, new: str) -> Callable[..., Any]:
    """``fn`` under its earlier name ``old``: calling it warns that ``new`` is the name now.

    Example:
        >>> import warnings
        >>> double = deprecated_alias(lambda x: 2 * x, "twice", "double")
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     value = double(3)
        >>> value, str(caught[0].message)
        (6, 'twice(...) is deprecated; call double(...)')
    """

    def alias(*args: Any, **kwargs: Any) -> Any:
        warnings.warn(f"{old}(...) is deprecated; call {new}(...)", DeprecationWarning, stacklevel=2)
        return fn(*args, **kwargs)

    alias.__name__ = old.rpartition(".")[2]
    alias.__qualname__ = alias.__name__
    alias.__doc__ = f"Deprecated: use :func:`{new}`.\n\n" + (fn.__doc__ or "").split("\n\n")[0]
    return alias


def callable_module(module_name: str, fn: Callable[..., Any], old: str, new: str) -> None:
    """Make the already-imported package ``module_name`` callable as ``fn`` (with a DeprecationWarning).

    ``ts.measure`` and ``ts.distill`` were functions that shadowed their
    subpackages; they are the subpackages again, and calling them still works
    for one release.
    """
    module = sys.modules[module_name]

    class _CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            warnings.warn(f"{old}(...) is deprecated; call {new}(...)", DeprecationWarning, stacklevel=2)
            return fn(*args, **kwargs)

    module.__class__ = _CallableModule


def moved_names(module: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` forwarding ``names`` (old name -> ``"new.module:new_name"``) lazily, with a warning.

    Lazy, so that a shim never imports the package that replaced it when the module loads.

    Example:
        >>> import warnings
        >>> getter = moved_names("old.place", {"Path": "pathlib:Path"})
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     cls = getter("Path")
        >>> cls.__name__, str(caught[0].message)
        ('Path', 'old.place.Path moved: use `from pathlib import Path`')
    """

    def __getattr__(name: str) -> Any:
        target = names.get(name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new_module, _, new_name = target.partition(":")
        warnings.warn(f"{module}.{name} moved: use `from {new_module} import {new_name}`", DeprecationWarning, stacklevel=2)
        import importlib

        return getattr(importlib.import_module(new_module), new_name)

    return __getattr__
