"""Recipes: YAML files listing the stages of a compression run.

Example recipe::

    version: 1
    name: lenet300-prune90
    seed: 0
    model: zoo:lenet300            # or {name: zoo:resnet_cifar, args: {depth: 20}, weights: w.safetensors},
                                   # mymodels:build (./mymodels.py), {hf: ./tiny-bert, task: sequence-classification}
    data: mnist                    # or {name: mnist, val_size: 5000}, sms-spam, mydata:loaders,
                                   # {csv: texts.csv, text: text, label: label}, {images: DIR}
    device: cpu                    # cuda, cuda:N or auto (the default is cpu; --device overrides)
    stages:
      - {type: train, epochs: 8, lr: 0.1, schedule: cosine}
      - {type: prune, sparsity: 0.9, keep_first_last: false}
      - {type: finetune, epochs: 3, lr: 0.01}

:func:`load_recipe` validates everything that can be checked without building
the model and reports every problem at once in one :class:`ConfigError`: the file
is read with bounds (size, aliases, nesting, integer literals; duplicate keys
refused), every number is finite and bounded, names are plain text, a zoo model's
``args`` and inputs are checked against its builder and the data set, and an
entry point ``package.module:function`` must name a module that can be found
(nothing is imported; running the recipe imports and calls it, like a script).

Example:
    >>> parse_recipe({"name": "t", "model": "zoo:lenet5", "data": "digits", "stages": [{"type": "train"}],
    ...               "measure": {"threads": 1000000}})
    Traceback (most recent call last):
        ...
    torchslim.errors.ConfigError: 2 error(s) in config
      - measure.threads: Input should be less than or equal to 256 (got 1000000)
      - model: zoo model lenet5 needs images of at least 16x16; the data has 1x8x8 inputs (data set 'digits'); set the model's args
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import warnings
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from yaml.constructor import ConstructorError

from torchslim.config import Config, issues_from_validation
from torchslim.data.spec import DataSpec
from torchslim.errors import ConfigError, ConfigIssue, UnknownNameError
from torchslim.measure.latency import MAX_RUNS, MAX_THREADS
from torchslim.stages import STAGES, StageSpec
from torchslim.train import TrainConfig
from torchslim.train.loop import MAX_BATCH, MAX_FLOAT, MAX_SEED
from torchslim.zoo.spec import ModelSpec, data_args, input_problem, plain_text_problem

#: limits on a recipe file, checked while it is read (before anything else sees it)
MAX_RECIPE_BYTES = 1 << 20
MAX_ALIASES = 100  # YAML aliases (*name) in one file
MAX_NODES = 10_000  # YAML nodes in the file (its parse time is bounded by this)
MAX_EXPANDED_NODES = 100_000  # nodes once every alias is expanded (what validation walks)
MAX_DEPTH = 50  # nesting of mappings and lists, aliases expanded
MAX_INT_CHARS = 40  # characters of one integer literal
#: limits on the values in a recipe
MAX_INT = 2**32 - 1  # every integer (counts, sizes, steps, seeds) lies in -MAX_INT..MAX_INT
MAX_TEXT_CHARS = 4096  # any string
MAX_NAME_CHARS = 100  # the recipe's name and each stage's name
MAX_NAME_BYTES = 200  # the recipe's name in UTF-8 (a directory name)
MAX_STAGES = 1000
MAX_LATENCY_BATCH = 4096
#: what ``device:`` (and ``--device``) accepts
DEVICE = re.compile(r"cpu|cuda|cuda:\d{1,3}|auto")
DEVICES = "cpu, cuda, cuda:N or auto"
#: the inputs of the registered data sets (shape of one sample, classes): a zoo model is checked against them
DATA_INPUTS: dict[str, tuple[tuple[int, ...], int]] = {
    "mnist": ((1, 28, 28), 10),
    "fashion-mnist": ((1, 28, 28), 10),
    "digits": ((1, 8, 8), 10),
}


class MeasureSpec(Config):
    """How figures are measured after each stage.

    Bounded so that a recipe that validates can run: batches up to 65,536 samples
    (latency batches up to 4,096), up to 10,000 latency runs, 1 to 256 threads.
    """

    eval_batch: int = Field(default=1000, ge=1, le=MAX_BATCH)
    latency_batch: int = Field(default=64, ge=1, le=MAX_LATENCY_BATCH)
    latency_runs: int = Field(default=20, ge=1, le=MAX_RUNS)
    threads: int | None = Field(default=None, ge=1, le=MAX_THREADS)


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a recipe's name, the name of its run directory (``None``: it can).

    Example:
        >>> name_problem("lenet300-prune90") is None
        True
        >>> name_problem("../x")
        "must be one plain path component (it names the run directory): no '/', '\\\\', '.' or '..'"
    """
    if name in (".", "..") or "/" in name or "\\" in name:
        return "must be one plain path component (it names the run directory): no '/', '\\', '.' or '..'"
    problem = plain_text_problem(name, MAX_NAME_CHARS)
    if problem is None and len(name.encode("utf-8")) > MAX_NAME_BYTES:
        problem = f"is {len(name.encode('utf-8'))} bytes long in UTF-8; at most {MAX_NAME_BYTES} allowed"
    return problem


class _RecipeHead(Config):
    name: str = Field(min_length=1)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    model: ModelSpec
    data: DataSpec
    measure: MeasureSpec = Field(default_factory=MeasureSpec)
    output: str | None = Field(default=None, min_length=1)
    stages: list[Any] = Field(default_factory=list, max_length=MAX_STAGES)
    device: str | None = None
    search: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _something_to_do(self) -> _RecipeHead:
        if not self.stages and self.search is None:
            raise ValueError("stages: a recipe needs at least one stage (or a search: block)")
        return self

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        if v is not None and not DEVICE.fullmatch(v):
            raise ValueError(f"unknown device; allowed: {DEVICES}")
        return v

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        problem = name_problem(v)
        if problem is not None:
            raise ValueError(problem)
        return v

    @field_validator("output")
    @classmethod
    def _plain_output(cls, v: str | None) -> str | None:
        problem = None if v is None else plain_text_problem(v, MAX_TEXT_CHARS)
        if problem is not None:
            raise ValueError(problem)
        return v

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            raw = dict(raw)
            for key in ("model", "data"):
                if isinstance(raw.get(key), str):
                    raw[key] = {"name": raw[key]}
        return raw


class Stage(BaseModel):
    """One validated stage: its registered type, its optional ``name`` and ``finetune`` block, and its config."""

    type: str
    config: Config
    name: str | None = None
    finetune: TrainConfig | None = None

    @property
    def label(self) -> str:
        return self.name or self.type

    def to_dict(self) -> dict[str, Any]:
        """The stage as recipe data (the wrapper's keys, then the config's fields)."""
        wrapper: dict[str, Any] = {"type": self.type}
        if self.name is not None:
            wrapper["name"] = self.name
        if self.finetune is not None:
            wrapper["finetune"] = self.finetune.model_dump(exclude={"version"})
        return {**wrapper, **self.config.model_dump(exclude={"version"})}


class Recipe(BaseModel):
    """A validated recipe."""

    name: str
    seed: int
    model: ModelSpec
    data: DataSpec
    measure: MeasureSpec
    output: str | None
    stages: list[Stage]
    source: str | None = None
    device: str | None = None
    search: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data (YAML/JSON-ready, defaults filled in; ``device`` only when given)."""
        out = {
            "version": 1,
            "name": self.name,
            "seed": self.seed,
            "model": self.model.to_data(),
            "data": self.data.to_data(),
            "measure": self.measure.model_dump(exclude={"version"}),
            "output": self.output,
            "stages": [s.to_dict() for s in self.stages],
        }
        if self.device is not None:
            out["device"] = self.device
        if self.search is not None:
            out["search"] = self.search
        return out

    def fingerprint(self) -> str:
        """SHA-256 of the normalised recipe without its output path and device (used to refuse resuming a different recipe)."""
        data = self.to_dict()
        data.pop("output")
        data.pop("device", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def output_dir(self) -> Path:
        return Path(self.output or Path("runs") / self.name)


def _stage_wrapper(spec: StageSpec, raw: dict[str, Any], path: str) -> tuple[dict[str, Any], list[ConfigIssue]]:
    """Pop the stage wrapper's ``name`` and ``finetune`` (or a deprecated alias of it) from ``raw``."""
    issues: list[ConfigIssue] = []
    wrapper: dict[str, Any] = {"name": raw.pop("name", None)}
    if wrapper["name"] is not None:
        problem = plain_text_problem(wrapper["name"], MAX_NAME_CHARS) if isinstance(wrapper["name"], str) else "must be a string"
        if problem is not None:
            issues.append(ConfigIssue(f"{path}.name", problem, wrapper["name"] if problem == "must be a string" else None))
    tune = raw.pop("finetune", None) if spec.finetune else None
    for alias in spec.finetune_aliases:
        if alias in raw:
            if tune is not None:
                issues.append(ConfigIssue(f"{path}.{alias}", "is the deprecated spelling of 'finetune': give only 'finetune'"))
                raw.pop(alias)
                continue
            warnings.warn(f"{path}.{alias} is deprecated; write the stage's 'finetune' block instead", DeprecationWarning, stacklevel=4)
            tune = raw.pop(alias)
    if tune is not None:
        try:
            wrapper["finetune"] = TrainConfig.parse(tune, prefix=f"{path}.finetune")
        except ConfigError as exc:
            issues += exc.issues
    return wrapper, issues


def _stage_issues(i: int, raw: Any) -> tuple[Stage | None, list[ConfigIssue]]:
    path = f"stages.{i}"
    if not isinstance(raw, dict):
        return None, [ConfigIssue(path, "a stage must be a mapping with a 'type' key", raw)]
    raw = dict(raw)
    kind = raw.pop("type", None)
    if kind is None:
        return None, [ConfigIssue(f"{path}.type", f"missing; allowed: {', '.join(STAGES.names())}")]
    try:
        spec = STAGES.get(str(kind))
    except UnknownNameError:
        return None, [ConfigIssue(f"{path}.type", f"unknown stage type; allowed: {', '.join(STAGES.names())}", kind)]
    wrapper, issues = _stage_wrapper(spec, raw, path)
    cls = spec.config_for(raw)
    try:
        config = cls.parse(raw, prefix=path)
    except ConfigError as exc:
        return None, issues + _with_allowed_keys(exc.issues, cls, path, spec)
    if issues:
        return None, issues
    return Stage(type=str(kind), config=config, **wrapper), []


def _with_allowed_keys(
    issues: list[ConfigIssue], cls: type[Config], path: str, spec: StageSpec | None = None
) -> list[ConfigIssue]:
    """Add the allowed keys to 'unknown key' issues found directly at ``path``."""
    wrapper = ["name"] + (["finetune"] if spec is not None and spec.finetune else []) if spec is not None else []
    allowed = ", ".join([*(k for k in cls.model_fields if k != "version" and k not in wrapper), *wrapper])
    depth = path.count(".") + 1 if path else 0
    return [
        ConfigIssue(i.path, f"unknown key; allowed: {allowed}", i.value)
        if i.message == "unknown key" and i.path.count(".") == depth
        else i
        for i in issues
    ]


def _scan(value: Any, path: str, depth: int, out: tuple[list[ConfigIssue], list[ConfigIssue]]) -> None:
    """Check every value of recipe data: finite, bounded numbers, bounded text, string keys, bounded nesting.

    ``out`` is ``(firm, soft)``: a firm issue replaces a field's own issues at the same
    path; a soft one (a number out of range) gives way to the field's own bound when it has one.
    """
    firm, soft = out
    if len(firm) + len(soft) > MAX_EXPANDED_NODES:
        return
    if depth > MAX_DEPTH:
        firm.append(ConfigIssue(path, f"nested deeper than {MAX_DEPTH} levels"))
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        low, high = (0, MAX_SEED) if path.rpartition(".")[2] == "seed" else (-MAX_INT, MAX_INT)
        if value.bit_length() > 128:  # too long to print in an error (Python refuses past 4,300 digits)
            firm.append(ConfigIssue(path, f"an integer of about {int(value.bit_length() * 0.30103)} digits; must be in {low}..{high}"))
        elif not low <= value <= high:
            soft.append(ConfigIssue(path, f"must be an integer in {low}..{high}", value))
    elif isinstance(value, float):
        if not math.isfinite(value):
            firm.append(ConfigIssue(path, "must be a finite number", value))
        elif abs(value) > MAX_FLOAT:
            soft.append(ConfigIssue(path, f"must be at most {MAX_FLOAT:g} in magnitude", value))
    elif isinstance(value, str):
        if len(value) > MAX_TEXT_CHARS:
            firm.append(ConfigIssue(path, f"is {len(value)} characters long; at most {MAX_TEXT_CHARS} allowed"))
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                firm.append(ConfigIssue(path, "every key must be a string (quote it)", key if isinstance(key, (int, float)) else None))
            else:
                _scan(item, f"{path}.{key}" if path else key, depth + 1, out)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _scan(item, f"{path}.{i}" if path else str(i), depth + 1, out)


def _under(path: str, paths: set[str]) -> bool:
    """``path`` is in ``paths`` or below one of them."""
    parts = path.split(".")
    return any(".".join(parts[:i]) in paths for i in range(1, len(parts) + 1))


def _merge(found: list[ConfigIssue], firm: list[ConfigIssue], soft: list[ConfigIssue]) -> list[ConfigIssue]:
    """The issues of the fields and of :func:`_scan`, one per problem (see :func:`_scan`)."""
    firm_paths = {i.path for i in firm}
    kept = [i for i in found if not _under(i.path, firm_paths)]
    own = {i.path for i in kept}
    return kept + firm + [i for i in soft if i.path not in own]


def _input_issues(spec: ModelSpec, data: DataSpec, path: str) -> list[ConfigIssue]:
    """A zoo model that cannot take the data set's inputs, or text data without a tokenizer; nothing is built."""
    if data.source() in ("text-set", "csv", "jsonl", "hf_dataset") and spec.hf is None:
        return [ConfigIssue(path, f"data {data.label_text!r} is text, tokenized with the model's tokenizer, and {spec.name} "
                            "carries none; name a Hugging Face directory holding a tokenizer: {hf: DIR}")]
    inputs = DATA_INPUTS.get(data.name or "")
    if not spec.name.startswith("zoo:") or inputs is None:
        return []
    name, (shape, classes) = spec.name[4:], inputs
    problem = input_problem(name, data_args(name, spec.args, shape, classes), shape, classes)
    return [] if problem is None else [ConfigIssue(path, f"{problem} (data set {data.name!r}); set the model's args")]


def _model_and_data(data: dict[str, Any]) -> tuple[ModelSpec, DataSpec] | None:
    """The recipe's model and data when both are valid (the rest of the recipe is not), else ``None``."""
    specs = [{"name": v} if isinstance(v, str) else v for v in (data.get("model"), data.get("data"))]
    try:
        return ModelSpec.parse(specs[0]), DataSpec.parse(specs[1])
    except ConfigError:
        return None


def parse_recipe(data: Any, *, source: str | None = None) -> Recipe:
    """Validate recipe data (a mapping, as read from YAML) into a :class:`Recipe`.

    Raises:
        ConfigError: with every problem found (field path, bad value, allowed values).
    """
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue("", "a recipe must be a YAML mapping", type(data).__name__)], source)
    firm: list[ConfigIssue] = []
    soft: list[ConfigIssue] = []
    _scan(data, "", 0, (firm, soft))
    if any(i.message.startswith("an integer of about") for i in firm):  # not given to the fields: they would echo it
        raise ConfigError(firm + soft, source)
    issues: list[ConfigIssue] = []
    version = data.get("version", 1)
    if version != 1:
        issues.append(ConfigIssue("version", "unsupported recipe version; allowed: 1", version if isinstance(version, (int, float, str)) else None))
    raw_stages = data.get("stages")
    head_data = {k: v for k, v in data.items() if k != "version"}
    head = None
    try:
        head = _RecipeHead.model_validate(head_data)
    except ValidationError as exc:
        found = [i for i in issues_from_validation(exc) if not i.path.startswith("stages.")]
        issues += _with_allowed_keys(found, _RecipeHead, "")
    stages: list[Stage] = []
    if isinstance(raw_stages, list) and len(raw_stages) <= MAX_STAGES:
        for i, raw in enumerate(raw_stages):
            stage, found = _stage_issues(i, raw)
            issues += found
            if stage is not None:
                stages.append(stage)
    model_data = (head.model, head.data) if head is not None else _model_and_data(data)
    if model_data is not None:
        model, data_spec = model_data
        issues += _input_issues(model, data_spec, "model")
        for i, stage in enumerate(stages):
            for field in type(stage.config).model_fields:
                value = getattr(stage.config, field)
                if isinstance(value, ModelSpec):
                    issues += _input_issues(value, data_spec, f"stages.{i}.{field}")
    issues = _merge(issues, firm, soft)
    if issues or head is None:
        raise ConfigError(issues, source)
    return Recipe(
        name=head.name,
        seed=head.seed,
        model=head.model,
        data=head.data,
        measure=head.measure,
        output=head.output,
        stages=stages,
        source=source,
        device=head.device,
        search=head.search,
    )


# -- reading the file ----------------------------------------------------------------------------------
class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, bounded: aliases, nodes, nesting and integer literals; string keys, no duplicates.

    Plain scalars that look like dates stay strings (a recipe holds JSON-like data only);
    the tags that build other types (``!!binary``, ``!!timestamp``, ``!!set``...) are refused.
    """

    def __init__(self, text: str, name: str) -> None:
        super().__init__(text)
        self.name = name  # PyYAML's marks (line, column) name the file
        self.aliases = self.nodes = self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise yaml.composer.ComposerError(None, None, f"more than {MAX_ALIASES} aliases", event.start_mark)
            return super().compose_node(parent, index)
        self.nodes += 1
        self.depth += 1
        if self.nodes > MAX_NODES or self.depth > MAX_DEPTH:
            what = f"has more than {MAX_NODES} values" if self.nodes > MAX_NODES else f"is nested deeper than {MAX_DEPTH} levels"
            raise yaml.composer.ComposerError(None, None, f"the recipe {what}", event.start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, KeyError, IndexError, OverflowError) as exc:  # PyYAML's own constructors on odd scalars
            raise ConstructorError(None, None, f"cannot read this {node.tag.rpartition(':')[2]} value ({exc})", node.start_mark) from None

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            lines: dict[str, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if not isinstance(key, str):
                    raise ConstructorError(None, None, f"a key must be a string, got {type(key).__name__} (quote it)", key_node.start_mark)
                if key in lines:
                    shown = repr(key) if len(key) <= 60 else repr(key[:57]) + "..."
                    raise ConstructorError(None, None, f"duplicate key {shown} (lines {lines[key]} and {line})", key_node.start_mark)
                lines[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_bounded_int(self, node: Any) -> int:
        if len(str(node.value)) > MAX_INT_CHARS:
            raise ConstructorError(None, None, f"an integer of {len(node.value)} characters (at most {MAX_INT_CHARS})", node.start_mark)
        return int(self.construct_yaml_int(node))

    def refuse_tag(self, node: Any) -> Any:
        raise ConstructorError(None, None, f"the tag {node.tag!r} is not allowed in a recipe", node.start_mark)


_RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeLoader.add_constructor("tag:yaml.org,2002:int", _RecipeLoader.construct_bounded_int)
for _tag in ("binary", "timestamp", "set", "omap", "pairs"):
    _RecipeLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _RecipeLoader.refuse_tag)


def _check_graph(root: Any) -> None:
    """Refuse a node graph that is recursive or, aliases expanded, too large or too deep."""
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, depth), aliases expanded
    stack = [(root, iter(_children(root)))]
    open_ids = {id(root)}
    while stack:
        node, children = stack[-1]
        child = next(children, None)
        if child is not None:
            if id(child) in open_ids:
                raise yaml.composer.ComposerError(None, None, "a recursive alias (a node that contains itself)", child.start_mark)
            if id(child) not in done:
                open_ids.add(id(child))
                stack.append((child, iter(_children(child))))
            continue
        stack.pop()
        open_ids.discard(id(node))
        kids = [done[id(c)] for c in _children(node)]
        size, depth = 1 + sum(k[0] for k in kids), 1 + max((k[1] for k in kids), default=0)
        if size > MAX_EXPANDED_NODES or depth > MAX_DEPTH:
            what = f"more than {MAX_EXPANDED_NODES} values" if size > MAX_EXPANDED_NODES else f"deeper than {MAX_DEPTH} levels"
            raise yaml.composer.ComposerError(None, None, f"with its aliases expanded, the recipe has {what}", node.start_mark)
        done[id(node)] = (size, depth)


def _children(node: Any) -> list[Any]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _read_text(p: Path) -> str:
    """The recipe file's text: a regular file of at most :data:`MAX_RECIPE_BYTES`, UTF-8."""

    def refuse(message: str) -> ConfigError:
        return ConfigError([ConfigIssue("", message, str(p) if len(str(p)) <= 200 else None)], str(p)[:200])

    try:
        info = os.stat(p)
        if not stat.S_ISREG(info.st_mode):
            raise refuse("is a directory, not a recipe file" if stat.S_ISDIR(info.st_mode) else "is not a regular file")
        if info.st_size > MAX_RECIPE_BYTES:
            raise refuse(f"the recipe file is {info.st_size:,} bytes; at most {MAX_RECIPE_BYTES:,} allowed")
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # replaced since the check above
                raise refuse("is not a regular file")
            raw = f.read(MAX_RECIPE_BYTES + 1)
    except FileNotFoundError:
        raise refuse("recipe file not found") from None
    except (OSError, ValueError) as exc:  # permission, a symlink loop, a name too long or with a NUL byte
        raise refuse(f"cannot read the recipe file: {getattr(exc, 'strerror', None) or exc}") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise refuse(f"the recipe file is larger than {MAX_RECIPE_BYTES:,} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refuse(f"the recipe file is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None


def read_recipe_data(path: str | Path) -> Any:
    """The data of a recipe file, read with the limits of :class:`_RecipeLoader` (a :class:`ConfigError` if not)."""
    p = Path(path)
    text, name = _read_text(p), str(p)[:200]
    try:
        loader = _RecipeLoader(text, name)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, escape...), found on reading
        exc.name = name
        raise ConfigError([ConfigIssue("", f"invalid YAML: {exc}")], name) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_graph(node)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue("", f"invalid YAML: {exc}")], name) from None
    except (ValueError, OverflowError, RecursionError) as exc:  # PyYAML's own: an escape beyond U+10FFFF...
        raise ConfigError([ConfigIssue("", f"invalid YAML: {type(exc).__name__}: {exc}")], name) from None
    finally:
        loader.dispose()


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe YAML file (no model is built).

    The file must be UTF-8 text of at most 1 MiB; YAML aliases, nesting and integer
    literals are bounded and duplicate keys refused (see :class:`_RecipeLoader`).

    Raises:
        ConfigError: the file cannot be read or parsed, or the recipe is invalid.
    """
    return parse_recipe(read_recipe_data(path), source=str(path)[:200])
