"""Recipes: YAML files listing the stages of a compression run.

Example recipe::

    version: 1
    name: lenet300-prune90
    seed: 0
    model: zoo:lenet300            # or {name: zoo:resnet_cifar, args: {depth: 20}, weights: w.safetensors}
    data: mnist                    # or {name: mnist, val_size: 5000}
    stages:
      - {type: train, epochs: 8, lr: 0.1, schedule: cosine}
      - {type: prune, sparsity: 0.9, keep_first_last: false}
      - {type: finetune, epochs: 3, lr: 0.01}

:func:`load_recipe` validates everything that can be checked without building
the model and reports every problem at once in one :class:`ConfigError`.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, field_validator, model_validator

from torchslim.config import Config, issues_from_validation
from torchslim.data import DATASETS
from torchslim.errors import ConfigError, ConfigIssue, UnknownNameError
from torchslim.stages import STAGES, StageSpec
from torchslim.train import TrainConfig
from torchslim.zoo.spec import ModelSpec


class DataSpec(Config):
    """A registered data set, its split options and training augmentation (``jitter``: ±pixels shifts)."""

    name: str
    val_size: int | None = Field(default=None, ge=0)
    jitter: int = Field(default=0, ge=0, le=8)  # training-time random shifts of images, in pixels (0: none)

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if v not in DATASETS:
            raise ValueError(f"unknown data set {v!r}; registered: {', '.join(DATASETS.names())}")
        return v


class MeasureSpec(Config):
    """How figures are measured after each stage."""

    eval_batch: int = Field(default=1000, ge=1)
    latency_batch: int = Field(default=64, ge=1)
    latency_runs: int = Field(default=20, ge=1)
    threads: int | None = Field(default=None, ge=1)


class _RecipeHead(Config):
    name: str = Field(min_length=1)
    seed: int = 0
    model: ModelSpec
    data: DataSpec
    measure: MeasureSpec = Field(default_factory=MeasureSpec)
    output: str | None = None
    stages: list[Any] = Field(min_length=1)

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

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data (YAML/JSON-ready, defaults filled in)."""
        return {
            "version": 1,
            "name": self.name,
            "seed": self.seed,
            "model": self.model.model_dump(exclude={"version"}),
            "data": self.data.model_dump(exclude={"version"}),
            "measure": self.measure.model_dump(exclude={"version"}),
            "output": self.output,
            "stages": [s.to_dict() for s in self.stages],
        }

    def fingerprint(self) -> str:
        """SHA-256 of the normalised recipe without its output path (used to refuse resuming a different recipe)."""
        data = self.to_dict()
        data.pop("output")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def output_dir(self) -> Path:
        return Path(self.output or Path("runs") / self.name)


def _stage_wrapper(spec: StageSpec, raw: dict[str, Any], path: str) -> tuple[dict[str, Any], list[ConfigIssue]]:
    """Pop the stage wrapper's ``name`` and ``finetune`` (or a deprecated alias of it) from ``raw``."""
    issues: list[ConfigIssue] = []
    wrapper: dict[str, Any] = {"name": raw.pop("name", None)}
    if wrapper["name"] is not None and not isinstance(wrapper["name"], str):
        issues.append(ConfigIssue(f"{path}.name", "must be a string", wrapper["name"]))
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


def parse_recipe(data: Any, *, source: str | None = None) -> Recipe:
    """Validate recipe data (a mapping, as read from YAML) into a :class:`Recipe`.

    Raises:
        ConfigError: with every problem found (field path, bad value, allowed values).
    """
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue("", "a recipe must be a YAML mapping", type(data).__name__)], source)
    issues: list[ConfigIssue] = []
    version = data.get("version", 1)
    if version != 1:
        issues.append(ConfigIssue("version", "unsupported recipe version; allowed: 1", version))
    raw_stages = data.get("stages")
    head_data = {k: v for k, v in data.items() if k != "version"}
    head = None
    try:
        head = _RecipeHead.model_validate(head_data)
    except Exception as exc:  # pydantic ValidationError
        from pydantic import ValidationError

        if not isinstance(exc, ValidationError):
            raise
        found = [i for i in issues_from_validation(exc) if not i.path.startswith("stages.")]
        issues += _with_allowed_keys(found, _RecipeHead, "")
    stages: list[Stage] = []
    if isinstance(raw_stages, list):
        for i, raw in enumerate(raw_stages):
            stage, found = _stage_issues(i, raw)
            issues += found
            if stage is not None:
                stages.append(stage)
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
    )


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe YAML file (no model is built)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigIssue("", "recipe file not found", str(p))], str(p)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue("", f"invalid YAML: {exc}")], str(p)) from None
    return parse_recipe(data, source=str(p))
