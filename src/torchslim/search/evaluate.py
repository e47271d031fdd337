"""Scoring one plan: its stages run on a copy of the model exactly as ``torchslim run`` runs them.

The search never scores a plan by a shortcut that ``torchslim run`` would not
reproduce: :func:`score` builds the plan's recipe (the search's model and data, the
plan's stages), runs each stage with the same seed ``torchslim run`` gives it
(``seed * 1000 + index``) through the same stage runners, then measures the model on
the validation split (at most ``val_samples`` samples; the test split is left to the
final report) and the objective on what the run would deploy: the ``.tslim`` file's
bytes, the MACs of one sample, or the ONNX file's median latency in ONNX Runtime.
A plan whose drop before healing is beyond ``max_one_shot_drop`` stops there
(:class:`Hopeless`): no healing can be expected to bring it back within the budget. That drop is
measured after re-estimating the BatchNorm statistics on four training batches (on a copy; the
plan's own model goes to healing untouched), which healing does anyway.

Example:
    >>> from torchslim.search.searchconfig import SearchConfig
    >>> head = {"name": "ex", "model": {"name": "zoo:lenet300", "args": {"in_features": 64}}, "data": "digits"}
    >>> env = Env.build(head, SearchConfig.parse({"objective": "macs", "val_samples": 200}))
    >>> s = score(env, {"channels": 0.5})
    >>> s.objective < env.baseline.objective, 0.0 <= s.accuracy <= 1.0
    (True, True)
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.data import DataBundle
from torchslim.data.batches import batch_size_of
from torchslim.data.core import first_sample
from torchslim.deploy.check import measure_deployed
from torchslim.errors import TorchslimError
from torchslim.measure import count_macs, evaluate_accuracy
from torchslim.pipeline import _stage_seed, load_model_and_data, model_arch
from torchslim.recipe import Recipe, parse_recipe
from torchslim.search.outcome import exact_drop
from torchslim.search.plan import plan_stages
from torchslim.search.result import SensitivityResult
from torchslim.search.searchconfig import SearchConfig
from torchslim.stages import STAGES, StageContext, run_stage
from torchslim.train.recalibrate import recalibrate_batchnorm
from torchslim.zoo.hf import ModelSource

__all__ = ["Env", "Hopeless", "Score", "accuracy_drop_pt", "recipe_for", "score"]

#: the stages a plan runs before its healing (the one-shot check runs after them)
_STRUCTURAL = ("prune", "factorize")


class Hopeless(TorchslimError):
    """The plan's drop before healing is beyond ``max_one_shot_drop``."""


@dataclass
class Score:
    """What one plan achieved: validation accuracy, its drop (points), the objective and the time taken."""

    accuracy: float
    drop: float
    objective: float
    seconds: float
    stages: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Env:
    """What scoring needs, built once per worker: the recipe head, the model before compression, the data."""

    head: dict[str, Any]
    cfg: SearchConfig
    source: ModelSource
    data: DataBundle
    model: nn.Module
    val: list[Any]
    sens: SensitivityResult | None = None
    baseline: Score = field(default_factory=lambda: Score(0.0, 0.0, 0.0, 0.0))

    @classmethod
    def build(cls, head: Mapping[str, Any], cfg: SearchConfig, sens: SensitivityResult | None = None) -> Env:
        """Load the head's model and data (as ``torchslim run`` would) and score the unchanged model."""
        recipe = recipe_for(head, [{"type": "fold"}])
        source, data = load_model_and_data(recipe)
        model = source.model  # in the mode torchslim run hands its first stage (train mode for a built model)
        val, n = [], 0
        for batch in data.loader("val", min(cfg.val_samples, 1000)):
            val.append(batch)
            n += batch_size_of(batch[0])
            if n >= cfg.val_samples:
                break
        if n == 0:
            raise TorchslimError(
                "search: the data has no validation split, and the budget is judged on it (the test split is kept "
                "for the final report); hold part of the training split out with data.val_size (e.g. "
                "{name: sms-spam, val_size: 500})"
            )
        env = cls(dict(head), cfg, source, data, model, val, sens)
        env.baseline = score(env, {}, hopeless_check=False)
        return env

    def example_input(self) -> Any:
        return self.data.example_input()


def accuracy_drop_pt(before: float, after: float) -> float:
    """``100 * (before - after)`` in points, rounded to 1e-9 so that a drop of exactly the budget fits it.

    Accuracies are sample counts over the validation size: 491/500 - 486/500 is five samples,
    exactly 1.0 pt, but 100 * (0.982 - 0.972) is 1.0000000000000009 in floating point, and a
    plan at a 1.0 pt budget was turned away for it.

    Example:
        >>> 100 * (0.982 - 0.972) <= 1.0, accuracy_drop_pt(0.982, 0.972) <= 1.0
        (False, True)
    """
    return exact_drop(100.0 * (before - after))


def recipe_for(head: Mapping[str, Any], stages: list[dict[str, Any]]) -> Recipe:
    """The recipe ``torchslim run`` replays: the head (name, seed, model, data, measure) and ``stages``."""
    return parse_recipe({**dict(head), "stages": stages}, source="search plan")


def _accuracy(env: Env, model: nn.Module) -> float:
    return float(evaluate_accuracy(model, env.val))


def _one_shot_accuracy(env: Env, model: nn.Module) -> float:
    """Accuracy before healing, on a copy whose BatchNorm statistics are re-estimated on 4 training batches.

    Healing re-estimates them anyway; without it a pruned ResNet-20 that healing brings back within a
    point scores near chance here and would be stopped (:mod:`torchslim.train.recalibrate`).
    """
    probe = copy.deepcopy(model)
    recalibrate_batchnorm(probe, env.data.loader("train", 128, shuffle=True, seed=env.cfg.seed))
    return _accuracy(env, probe)


def _run(env: Env, recipe: Recipe, model: nn.Module, out: Path, check: bool) -> Path | None:
    """Run the recipe's stages on ``model`` as the pipeline does; returns the last artefact written."""
    artefact = None
    arch = model_arch(recipe.model, env.data)
    checked = not check
    for index, stage in enumerate(recipe.stages):
        if not checked and stage.type not in _STRUCTURAL:
            checked = True
            drop = accuracy_drop_pt(env.baseline.accuracy, _one_shot_accuracy(env, model))
            if drop > env.cfg.max_one_shot_drop:
                raise Hopeless(f"drop {drop:.1f} pt before healing > max_one_shot_drop {env.cfg.max_one_shot_drop}")
        torch.manual_seed(_stage_seed(recipe.seed, index))
        ctx = StageContext(
            env.data, stage.label, False, initial_model=lambda: copy.deepcopy(env.model), output=out, arch=arch,
            finetune=stage.finetune, build_model=None, source=env.source,
        )
        result = run_stage(STAGES.get(stage.type), model, stage.config, ctx)
        if result.artefact is not None:
            artefact = result.artefact
    return artefact


def _objective(env: Env, model: nn.Module, artefact: Path | None) -> tuple[float, float | None]:
    """``(objective, accuracy measured on the artefact or None)``."""
    cfg = env.cfg
    if cfg.objective == "macs":
        return float(count_macs(model, first_sample(env.example_input()))), None
    if artefact is None:
        raise TorchslimError(f"objective {cfg.objective}: the plan wrote no artefact to measure")
    if cfg.objective == "bytes":
        return float(artefact.stat().st_size), None
    acc, latency = measure_deployed(artefact, env.val, env.example_input(), batch_size=cfg.latency.batch,
                                    threads=cfg.latency.threads, runs=cfg.latency.runs)
    return float(latency.median_ms), acc


def score(env: Env, plan: Mapping[str, Any], *, hopeless_check: bool = True) -> Score:
    """Run ``plan``'s stages on a copy of the model and measure it (see the module docstring).

    Raises:
        Hopeless: the drop before healing is beyond ``max_one_shot_drop``.
        TorchslimError: a stage refused or failed (the message names it).
    """
    t0 = time.perf_counter()
    stages = plan_stages(plan, env.cfg, env.sens)
    model = copy.deepcopy(env.model)
    heals = any(s["type"] in ("finetune", "distill") for s in stages)
    with tempfile.TemporaryDirectory(prefix="torchslim-trial-") as tmp:
        artefact = None
        if stages:  # the unchanged model (the macs baseline) has none
            check = hopeless_check and heals and bool(env.baseline.accuracy)
            artefact = _run(env, recipe_for(env.head, stages), model, Path(tmp), check)
        objective, deployed_acc = _objective(env, model, artefact)
    accuracy = deployed_acc if deployed_acc is not None else _accuracy(env, model)
    drop = accuracy_drop_pt(env.baseline.accuracy, accuracy) if env.baseline.accuracy else 0.0
    extra = {"measured_on": "onnxruntime" if deployed_acc is not None else "torch"}
    return Score(accuracy, drop, objective, time.perf_counter() - t0, stages, extra)
