"""How a recipe (or a distillation stage) names a model: ``zoo:NAME``, an entry point or a Hugging Face directory.

An entry point ``package.module:function`` is code: building the model imports the
module and calls the function, like running a Python script. :class:`ModelSpec`
checks, without importing anything, that the module can be found and is not part of
the standard library or of torchslim (other than :mod:`torchslim.zoo`);
:func:`call_entry_point` imports it, calls it and checks that it returned an
``nn.Module``. The current directory is importable: it is added to the *end* of
``sys.path`` when missing (installed packages win over a same-named local file), so
``model: mymodels:build`` finds ``./mymodels.py`` without ``PYTHONPATH``.

A Hugging Face directory is ``{hf: PATH, task: TASK}`` (or ``name: hf:PATH``), loaded
offline from safetensors by :mod:`torchslim.zoo.hf`.

A zoo model's ``args`` are checked against its builder's signature (names, types,
sizes), and :func:`input_problem` checks that a zoo model fits a data set's inputs,
without building it.

Example:
    >>> ModelSpec(name="zoo:lenet300", args={"in_features": 64}).args
    {'in_features': 64}
    >>> ModelSpec.parse({"name": "zoo:lenet300", "args": {"in_featurs": 64}})
    Traceback (most recent call last):
        ...
    torchslim.errors.ConfigError: 1 error(s) in config
      - args: in_featurs: zoo model 'lenet300' takes no such argument; allowed: in_features, num_classes
    >>> ModelSpec.parse({"name": "os:system"})
    Traceback (most recent call last):
        ...
    torchslim.errors.ConfigError: 1 error(s) in config
      - name: module 'os' is part of the Python standard library, not a model builder (got 'os:system')
"""

from __future__ import annotations

import collections.abc
import importlib
import importlib.util
import inspect
import math
import os
import re
import stat
import sys
import types
import typing
import unicodedata
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import nn

from torchslim.config import Config
from torchslim.errors import ConfigIssue, TorchslimError
from torchslim.zoo.hf import HF_ARGS, HF_TASKS, hf_dir_problem
from torchslim.zoo.registry import MODELS

ENTRY_POINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
#: the largest integer a zoo builder's size argument (a width, depth, image size...) may take
MAX_SIZE_ARG = 65_536
MAX_PATH_CHARS = 4096
_NOT_PLAIN = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})  # controls, format (bidi overrides), lone surrogates, line breaks


def plain_text_problem(text: str, max_chars: int) -> str | None:
    """Why ``text`` is not plain text of at most ``max_chars`` characters (``None`` if it is).

    Plain text has no control or format characters (NUL, escape sequences, bidirectional
    overrides) and no unpaired surrogates.

    Example:
        >>> plain_text_problem("stage [/] one", 100) is None
        True
        >>> plain_text_problem("a\\x00b", 100)
        'must be plain text: no control characters (found U+0000)'
    """
    if len(text) > max_chars:
        return f"is {len(text)} characters long; at most {max_chars} allowed"
    for ch in text:
        if unicodedata.category(ch) in _NOT_PLAIN:
            return f"must be plain text: no control characters (found U+{ord(ch):04X})"
    return None


def importable_cwd() -> str:
    """Make the current directory importable (appended to ``sys.path`` when neither it nor ``''`` is there); returns it.

    ``python script.py`` and ``python -m`` put a directory first on ``sys.path``; the
    ``torchslim`` command puts its own ``bin/`` there instead, so the current directory is
    added, last: an installed package wins over a same-named file here.

    Example:
        >>> importable_cwd() in sys.path or "" in sys.path
        True
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path and "." not in sys.path:
        sys.path.append(cwd)
    return cwd


def _missing_module(dotted: str) -> str | None:
    """The first prefix of the module path ``dotted`` that cannot be found (``None``: all found).

    Looked up with the import system's finders, importing nothing: ``find_spec("a.b")``
    would import ``a`` (running its ``__init__``), so a submodule is looked up in its
    parent's search locations instead.
    """
    importable_cwd()
    parts = dotted.split(".")
    locations: Any = None
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        module = sys.modules.get(name)
        if module is not None:
            locations = getattr(module, "__path__", None)
        else:
            spec = importlib.util.find_spec(name) if i == 0 else _find_in(name, locations)
            if spec is None:
                return name
            locations = spec.submodule_search_locations
        if i + 1 < len(parts) and locations is None:  # a plain module has no submodules
            return ".".join(parts[: i + 2])
    return None


def _find_in(name: str, locations: Any) -> Any:
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        spec = find(name, list(locations)) if find is not None else None
        if spec is not None:
            return spec
    return None


def entry_point_problem(name: str) -> str | None:
    """Why the entry point ``package.module:function`` may not be used (``None`` if it may); imports nothing.

    Example:
        >>> entry_point_problem("torchslim.zoo.lenet:lenet300") is None
        True
        >>> entry_point_problem("no_such_package_xyz.models:build").split(";")[0]
        "module 'no_such_package_xyz' cannot be found (is the package installed?)"
    """
    if not ENTRY_POINT.fullmatch(name):  # not .match: "$" would let a trailing newline through
        return "must be 'zoo:NAME' or an entry point 'package.module:function'"
    module = name.partition(":")[0]
    parts = module.split(".")
    if not all(parts):
        return f"{module!r} is not a module path"
    if parts[0] in sys.stdlib_module_names or parts[0] in sys.builtin_module_names:
        return f"module {module!r} is part of the Python standard library, not a model builder"
    if parts[0] == "torchslim" and parts[:2] != ["torchslim", "zoo"]:
        return f"module {module!r} is part of torchslim; name torchslim's models as 'zoo:NAME'"
    try:
        missing = _missing_module(module)
    except (ImportError, ValueError, AttributeError, TypeError, OSError) as exc:  # a finder failed: say so
        return f"module {module!r} cannot be looked up: {type(exc).__name__}: {exc}"
    if missing is None:
        return None
    where = os.path.join(os.getcwd(), missing.replace(".", os.sep))
    return (
        f"module {missing!r} cannot be found (is the package installed?); the current directory is importable too "
        f"(added to the end of sys.path), and it has no {where}.py: run from the directory that holds it, or install the package"
    )


def load_entry_point(name: str, *, what: str = "model") -> Any:
    """Import the entry point ``package.module:function`` (refused as :func:`entry_point_problem` says) and return it.

    Raises:
        TorchslimError: the entry point is refused, cannot be imported, or is not callable.

    Example:
        >>> load_entry_point("torchslim.zoo.lenet:lenet300").__name__
        'lenet300'
    """
    problem = entry_point_problem(name)
    if problem is not None:
        raise TorchslimError(f"{what} entry point {name!r}: {problem}")
    module_name, fn_name = name.split(":")
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise TorchslimError(f"cannot import {what} entry point {name!r}: {exc}") from None
    if not callable(fn):
        kind = "an nn.Module" if what == "model" else "its data"
        raise TorchslimError(f"{what} entry point {name!r} is a {type(fn).__name__}, not a function returning {kind}")
    return fn


def bind_args(fn: Any, name: str, args: dict[str, Any], *, what: str = "model") -> None:
    """Refuse ``args`` that the entry point ``fn`` (named ``name``) does not take, naming its parameters."""
    try:
        signature: inspect.Signature | None = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read (some builtins): the call itself will say
        signature = None
    if signature is not None:
        try:
            signature.bind(**args)
        except TypeError as exc:
            params = ", ".join(signature.parameters) or "(none)"
            raise TorchslimError(f"{what} entry point {name!r} does not take these args: {exc}; its parameters: {params}") from None


def call_entry_point(name: str, args: dict[str, Any], *, what: str = "model") -> nn.Module:
    """Import the entry point ``package.module:function``, call it with ``args`` and check it built an ``nn.Module``.

    This runs the module's code, as ``python -c "import package.module"`` would.

    Raises:
        TorchslimError: the entry point is refused (:func:`entry_point_problem`), cannot be
            imported, is not callable, does not take ``args``, or returned something else.

    Example:
        >>> call_entry_point("torchslim.zoo.lenet:lenet300", {"in_features": 64}).fc1.in_features
        64
        >>> call_entry_point("torchslim.zoo.lenet:lenet300", {"width": 3})
        Traceback (most recent call last):
            ...
        torchslim.errors.TorchslimError: model entry point 'torchslim.zoo.lenet:lenet300' does not take these args: got an unexpected keyword argument 'width'; its parameters: in_features, num_classes
    """
    fn = load_entry_point(name, what=what)
    bind_args(fn, name, args, what=what)
    model = fn(**args)
    if not isinstance(model, nn.Module):
        raise TorchslimError(f"{what} entry point {name!r} returned {type(model).__name__}, not an nn.Module")
    return model


def _type_problem(hint: Any, value: Any) -> str | None:
    """Why ``value`` does not fit the annotation ``hint`` (``None``: it fits or the annotation is not checked)."""
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be an integer"
        return None if 1 <= value <= MAX_SIZE_ARG else f"must be an integer in 1..{MAX_SIZE_ARG}"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "must be a finite number"
    if hint is str:
        return None if isinstance(value, str) else "must be a string"
    if hint is type(None):
        return None if value is None else "must be null"
    if origin is Literal:
        return None if any(value == p and type(value) is type(p) for p in params) else f"must be one of {list(params)}"
    if origin in (typing.Union, types.UnionType):
        found = [_type_problem(p, value) for p in params]
        return None if any(f is None for f in found) else " or ".join(f for f in found if f)
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return "must be a list"
        if origin is tuple and params and params[-1] is not Ellipsis:
            if len(value) != len(params):
                return f"must be a list of {len(params)} items"
            items = list(zip(params, value, strict=True))
        else:
            items = [(params[0] if params else Any, v) for v in value]
        for i, (p, v) in enumerate(items):
            found_item = _type_problem(p, v)
            if found_item is not None:
                return f"item {i} {found_item}"
    return None


def zoo_arg_issues(name: str, args: dict[str, Any]) -> list[ConfigIssue]:
    """Problems of ``args`` for the zoo model ``name`` (unknown names, wrong types, sizes out of range).

    Example:
        >>> [str(i) for i in zoo_arg_issues("lenet5", {"image_size": "big"})]
        ["image_size: must be an integer (got 'big')"]
    """
    factory = MODELS.get(name)
    params = inspect.signature(factory).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return []
    try:
        hints = typing.get_type_hints(factory)
    except (NameError, TypeError):  # an annotation that cannot be resolved: check the names only
        hints = {}
    issues = []
    for key, value in args.items():
        if key not in params:
            allowed = ", ".join(params) or "(none)"
            issues.append(ConfigIssue(key, f"zoo model {name!r} takes no such argument; allowed: {allowed}"))
            continue
        problem = _type_problem(hints[key], value) if key in hints else None
        if problem is not None:
            shown = value if isinstance(value, (str, int, float)) and len(repr(value)) <= 80 else None
            issues.append(ConfigIssue(key, problem, shown))
    return issues


def _default(name: str, arg: str) -> Any:
    param = inspect.signature(MODELS.get(name)).parameters.get(arg)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def data_args(name: str, args: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """The arguments to build the zoo model ``name`` for a data set: ``args``, then what the data decides.

    ``in_channels`` and ``num_classes`` come from the data when the builder takes them
    and ``args`` does not give them; so do ``in_features`` (the values per sample) and
    ``image_size`` (square images) when the builder's default does not fit the data.

    Example:
        >>> data_args("lenet300", {}, (1, 8, 8), 10)
        {'num_classes': 10, 'in_features': 64}
        >>> data_args("lenet300", {}, (1, 28, 28), 10)
        {'num_classes': 10}
    """
    params = inspect.signature(MODELS.get(name)).parameters
    out = dict(args)
    if "in_channels" in params and "in_channels" not in out and input_shape:
        out["in_channels"] = input_shape[0]
    if "num_classes" in params and "num_classes" not in out:
        out["num_classes"] = num_classes
    values = math.prod(input_shape)
    if "in_features" in params and "in_features" not in out and _default(name, "in_features") != values:
        out["in_features"] = values
    square = len(input_shape) == 3 and input_shape[1] == input_shape[2]
    if "image_size" in params and "image_size" not in out and square and _default(name, "image_size") != input_shape[1]:
        out["image_size"] = input_shape[1]
    return out


#: the smallest image side each zoo convolutional model handles (its convolutions and poolings)
MIN_IMAGE_SIDE = {"lenet5": 16, "densenet_small": 4}
#: zoo models whose inputs are not images
TEXT_MODELS = frozenset({"minilm"})


def input_problem(name: str, args: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> str | None:
    """Why the zoo model ``name`` built with ``args`` cannot take a data set's inputs (``None``: it can).

    ``args`` are the arguments it is built with (see :func:`data_args`). Nothing is built.

    Example:
        >>> input_problem("lenet5", data_args("lenet5", {}, (1, 8, 8), 10), (1, 8, 8), 10)
        'zoo model lenet5 needs images of at least 16x16; the data has 1x8x8 inputs'
        >>> input_problem("lenet300", {"in_features": 784}, (1, 8, 8), 10)
        'zoo model lenet300 takes in_features=784 values per sample; the data has 1x8x8 = 64'
    """
    shape = "x".join(map(str, input_shape))
    if name in TEXT_MODELS:
        return f"zoo model {name} is a text encoder (token ids in); the data has {shape} images"
    given = {k: args.get(k, _default(name, k)) for k in ("in_channels", "num_classes", "in_features", "image_size")}
    params = inspect.signature(MODELS.get(name)).parameters
    if "in_features" in params and given["in_features"] != math.prod(input_shape):
        return f"zoo model {name} takes in_features={given['in_features']} values per sample; the data has {shape} = {math.prod(input_shape)}"
    if "in_channels" in params and input_shape and given["in_channels"] != input_shape[0]:
        return f"zoo model {name} takes in_channels={given['in_channels']}; the data has {input_shape[0]} channel(s) ({shape})"
    if "num_classes" in params and isinstance(given["num_classes"], int) and given["num_classes"] < num_classes:
        return f"zoo model {name} has num_classes={given['num_classes']} outputs; the data has {num_classes} classes"
    side = MIN_IMAGE_SIDE.get(name, 1)
    if len(input_shape) == 3 and min(input_shape[1:]) < side:
        return f"zoo model {name} needs images of at least {side}x{side}; the data has {shape} inputs"
    size = given["image_size"]
    if "image_size" in params and (len(input_shape) != 3 or input_shape[1:] != (size, size)):
        return f"zoo model {name} takes {size}x{size} images (image_size); the data has {shape} inputs"
    patch = args.get("patch_size", _default(name, "patch_size"))
    if "patch_size" in params and isinstance(size, int) and isinstance(patch, int) and patch > 0 and size % patch:
        return f"zoo model {name}: image_size {size} is not a multiple of patch_size {patch}; set model args patch_size"
    return None


def _path_problem(v: str) -> str | None:
    problem = plain_text_problem(v, MAX_PATH_CHARS)
    if problem is not None:
        return problem
    try:
        mode = Path(v).stat().st_mode
    except FileNotFoundError:
        return f"weights file {v!r} not found"
    except OSError as exc:  # a symlink loop, a name too long, a directory without search permission...
        return f"weights file {v!r} cannot be read: {exc.strerror or exc}"
    return None if stat.S_ISREG(mode) else f"weights file {v!r} is not a regular file"


class ModelSpec(Config):
    """Where the model comes from: ``zoo:NAME``, an entry point ``pkg.module:build_fn`` or a Hugging Face directory.

    A Hugging Face directory is ``{hf: PATH, task: TASK}`` (``task`` defaults to
    ``sequence-classification``; see :data:`~torchslim.zoo.hf.HF_TASKS`); its ``name`` is
    ``hf:PATH`` (either spelling works). Its weights are the directory's own, its ``args``
    only ``num_labels``. ``weights`` (a safetensors file, shapes checked by key) is for
    zoo and entry-point models.

    Example:
        >>> ModelSpec.parse({"hf": "/no/such/dir"})
        Traceback (most recent call last):
            ...
        torchslim.errors.ConfigError: 1 error(s) in config
          - hf: Hugging Face directory '/no/such/dir' not found (got '/no/such/dir')
    """

    name: str = Field(max_length=300)
    args: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = None
    hf: str | None = None
    task: Literal["sequence-classification", "causal-lm", "feature-extraction", "image-classification"] | None = None

    #: fields added with Hugging Face directories: left out of :meth:`to_data` while unset (fingerprints stay)
    LATER_FIELDS: typing.ClassVar[tuple[str, ...]] = ("hf", "task")

    @model_validator(mode="before")
    @classmethod
    def _hf_name(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            hf, name = raw.get("hf"), raw.get("name")
            if isinstance(hf, str) and "name" not in raw:
                raw = {**raw, "name": f"hf:{hf}"}
            elif isinstance(name, str) and name.startswith("hf:") and "hf" not in raw:
                raw = {**raw, "hf": name[3:]}
        return raw

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if v.startswith("zoo:"):
            if v[4:] not in MODELS:
                raise ValueError(f"unknown zoo model {v[4:]!r}; registered: {', '.join(MODELS.names())}")
            return v
        if v.startswith("hf:"):  # the directory is checked as the 'hf' field
            return v
        problem = entry_point_problem(v)
        if problem is not None:
            if problem.startswith("must be"):
                problem = "must be 'zoo:NAME', an entry point 'package.module:function' or 'hf:PATH' (a Hugging Face directory)"
            raise ValueError(problem)
        return v

    @field_validator("args")
    @classmethod
    def _check_args(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        name = info.data.get("name", "")
        if isinstance(name, str) and name.startswith("zoo:") and name[4:] in MODELS:
            issues = zoo_arg_issues(name[4:], v)
            if issues:
                raise ValueError("; ".join(map(str, issues)))
        if isinstance(name, str) and name.startswith("hf:"):
            unknown = sorted(set(v) - set(HF_ARGS))
            if unknown:
                raise ValueError(f"a Hugging Face model takes no args {', '.join(unknown)}; allowed: {', '.join(HF_ARGS)}")
            labels = v.get("num_labels")
            if "num_labels" in v and (isinstance(labels, bool) or not isinstance(labels, int) or not 1 <= labels <= MAX_SIZE_ARG):
                raise ValueError(f"num_labels must be an integer in 1..{MAX_SIZE_ARG}")
        return v

    @field_validator("weights")
    @classmethod
    def _check_weights(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and str(info.data.get("name", "")).startswith("hf:"):
            raise ValueError("a Hugging Face directory's weights are its own model.safetensors; remove weights")
        if v is not None:
            problem = _path_problem(v)
            if problem is not None:
                raise ValueError(problem if problem.startswith("weights") else f"weights file name {problem}")
        return v

    @field_validator("hf")
    @classmethod
    def _check_hf(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            name = info.data.get("name")
            if isinstance(name, str) and name != f"hf:{v}":
                raise ValueError(f"names another model than name {name!r}: give one of them")
            problem = plain_text_problem(v, MAX_PATH_CHARS) or hf_dir_problem(v)
            if problem is not None:
                raise ValueError(problem)
        return v

    @field_validator("task")
    @classmethod
    def _check_task(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and not str(info.data.get("name", "")).startswith("hf:"):
            raise ValueError(f"only a Hugging Face model (hf: DIR) takes a task; tasks: {', '.join(HF_TASKS)}")
        return v

    def to_data(self) -> dict[str, Any]:
        """The spec as recipe data; fields added later are left out while unset."""
        return self.model_dump(exclude={"version", *(f for f in self.LATER_FIELDS if getattr(self, f) is None)})
