"""One targeting grammar for every technique.

A *targets* mapping is ordered: each key is an exact qualified module name
(``"fc1"``, ``"layer1.0.conv1"``) or a regular expression prefixed with ``re:``
(``"re:layer[12]\\..*conv"``, matched with :func:`re.fullmatch`); each value is a
per-layer config override (a mapping) or ``None`` to skip the layer. For every
candidate layer the **first** matching key wins. A key that matches no layer is
refused, except an *optional* regular expression, prefixed ``re?:``: the plans
``torchslim search`` writes use it, since an earlier stage of the plan (block
removal) may have removed the layers it names.

Example:
    >>> targets = {"fc3": None, "re:fc.*": {"sparsity": 0.9}}
    >>> resolve_targets(["fc1", "fc2", "fc3"], targets)
    {'fc1': Match(key='re:fc.*', value={'sparsity': 0.9}), 'fc2': ..., 'fc3': Match(key='fc3', value=None)}
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from torchslim.errors import ConfigError, ConfigIssue

V = TypeVar("V")
REGEX_PREFIX = "re:"
#: a regular expression that may match no layer
OPTIONAL_PREFIX = "re?:"


def _pattern(key: str) -> str | None:
    """The regular expression of a ``re:`` or ``re?:`` key (``None``: an exact name)."""
    for prefix in (REGEX_PREFIX, OPTIONAL_PREFIX):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return None


@dataclass(frozen=True)
class Match(Generic[V]):
    """The targets entry that matched a layer: its key and value (``None`` = skip)."""

    key: str
    value: V | None

    @property
    def skip(self) -> bool:
        return self.value is None


def check_target_keys(targets: Mapping[str, Any], path: str = "targets") -> list[ConfigIssue]:
    """Syntax check of the keys (regexes compile); returns the problems found."""
    issues = []
    for key in targets:
        if not isinstance(key, str) or not key:
            issues.append(ConfigIssue(f"{path}", "target keys must be non-empty strings", key))
        elif _pattern(key) is not None:
            try:
                re.compile(_pattern(key) or "")
            except re.error as exc:
                issues.append(ConfigIssue(f"{path}.{key}", f"invalid regular expression: {exc}", key))
    return issues


def _matches(key: str, name: str) -> bool:
    pattern = _pattern(key)
    if pattern is not None:
        return re.fullmatch(pattern, name) is not None
    return key == name


def resolve_targets(
    names: Iterable[str], targets: Mapping[str, V | None] | None, *, path: str = "targets"
) -> dict[str, Match[V]]:
    """Map each candidate layer name to the first targets entry matching it.

    Names no entry matches are absent from the result. An exact-name key that
    names no candidate layer is an error (a typo would otherwise silently do
    nothing); so is a regex that matches nothing.

    Raises:
        ConfigError: listing every key that matched no layer, with the layer names.
    """
    names = list(names)
    targets = dict(targets or {})
    issues = check_target_keys(targets, path)
    if issues:
        raise ConfigError(issues)
    out: dict[str, Match[V]] = {}
    used: set[str] = set()
    for name in names:
        for key, value in targets.items():
            if _matches(key, name):
                out[name] = Match(key, value)
                used.add(key)
                break
    unused = [k for k in targets if k not in used and not k.startswith(OPTIONAL_PREFIX)
              and not any(_matches(k, n) for n in names)]
    if unused:
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise ConfigError(
            [ConfigIssue(f"{path}.{k}", f"matches no layer; candidate layers: {shown}", k) for k in unused]
        )
    return out


def select_layers(
    layers: list[tuple[str, Any]],
    targets: Mapping[str, V | None] | None,
    *,
    filter_fn: Any = None,
    keep_first_last: bool = False,
    kept_note: str = "name it in targets to include it",
) -> tuple[list[tuple[str, Any, Match[V] | None]], list[tuple[str, str]]]:
    """The candidate ``(name, module)`` layers a technique acts on, and the skipped ones with why.

    A layer is skipped when ``filter_fn(module, name)`` rejects it, when
    ``targets`` is given and no key matches it, when its matching value is
    ``None``, or (``keep_first_last``) when it is the first or last candidate and
    no key names it exactly. Returns ``([(name, module, match)], [(name, reason)])``.
    """
    matches = resolve_targets([n for n, _ in layers], targets)
    first, last = (layers[0][0], layers[-1][0]) if layers else (None, None)
    chosen: list[tuple[str, Any, Match[V] | None]] = []
    skipped: list[tuple[str, str]] = []
    for name, module in layers:
        match = matches.get(name)
        if filter_fn is not None and not filter_fn(module, name):
            skipped.append((name, "rejected by filter_fn"))
        elif targets is not None and match is None:
            skipped.append((name, "not matched by any targets key"))
        elif match is not None and match.skip:
            skipped.append((name, f"excluded by targets[{match.key!r}] = null"))
        elif keep_first_last and name in (first, last) and not (match and match.key == name):
            which = "first" if name == first else "last"
            skipped.append((name, f"{which} layer kept (keep_first_last; {kept_note})"))
        else:
            chosen.append((name, module, match))
    return chosen, skipped
