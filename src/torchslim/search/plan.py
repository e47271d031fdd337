"""A plan: one value per family of the search space, and the recipe stages that carry it out.

The search samples a few numbers per plan (:func:`suggest`): how much of the model's
MACs channel pruning keeps, which fraction of the removable blocks goes, how many of
the factorisable parameters low-rank keeps, the global sparsity, the average weight
bits and their quantizer (``rtn``: weight-only affine quantization; ``kmeans``: weight
sharing, whose centroids the healing then fine-tunes), int8 or not, BatchNorm folding,
and the healing (epochs, fine-tune or distil).
Where a family has per-layer settings (weight bits, low-rank ratio), the fast stage
decides them from the sensitivity analysis: a greedy knapsack (:func:`allocate`) that
spends the family's budget on the layers where it costs the least accuracy per byte.
:func:`plan_stages` turns a plan into the recipe stages that ``torchslim run`` replays,
in a fixed order (``uniform: true`` in a plan skips the allocation: one setting everywhere): channels and blocks, low-rank, sparsity, healing, folding,
quantization (or weight sharing, then the centroids' healing: Deep Compression's order),
then the stage that writes the measured artefact (``encode`` for bytes, ``export`` for latency).

Example:
    >>> from torchslim.search.searchconfig import SearchConfig
    >>> cfg = SearchConfig.parse({"objective": "latency", "families": ["structured", "int8", "heal"]})
    >>> stages = plan_stages({"channels": 0.5, "int8": True, "heal_epochs": 1, "heal_method": "finetune"}, cfg, None)
    >>> [s["type"] for s in stages]
    ['prune', 'finetune', 'quantize', 'export']
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from torchslim.search.result import AnalysisResult, SensitivityResult, UnitResult
from torchslim.search.searchconfig import SearchConfig

__all__ = ["OFF", "allocate", "describe", "plan_stages", "single_plans", "suggest", "unchanged"]

#: the value of each numeric family that leaves the model as it is
OFF: dict[str, float] = {"channels": 1.0, "blocks": 0.0, "lowrank": 1.0, "sparsity": 0.0, "bits": 32.0}

#: the numeric families' ranges and steps ``(low, high, step)``
RANGES: dict[str, tuple[float, float, float]] = {
    "channels": (0.25, 1.0, 0.05),
    "blocks": (0.0, 0.45, 0.05),
    "lowrank": (0.2, 1.0, 0.05),
    "sparsity": (0.0, 0.95, 0.05),
    "bits": (2.0, 8.0, 0.5),
}


def unchanged(param: str) -> float:
    """The sampled value of ``param`` nearest to leaving the model as it is (weight bits: the widest sampled, 8)."""
    return RANGES["bits"][1] if param == "bits" else OFF[param]


_PARAM = {"structured": "channels", "blocks": "blocks", "lowrank": "lowrank", "unstructured": "sparsity", "bits": "bits"}


def suggest(trial: Any, cfg: SearchConfig) -> dict[str, Any]:
    """Sample a plan from an Optuna ``trial`` over the config's families."""
    fams = cfg.space_families()
    plan: dict[str, Any] = {}
    for fam, param in _PARAM.items():
        if fam in fams:
            low, high, step = RANGES[param]
            plan[param] = trial.suggest_float(param, low, high, step=step)
    if "share" in fams:
        if "bits" not in fams:
            low, high, step = RANGES["bits"]
            plan["bits"] = trial.suggest_float("bits", low, high, step=step)
            plan["quantizer"] = "kmeans"
        else:
            plan["quantizer"] = trial.suggest_categorical("quantizer", ["rtn", "kmeans"])
    if "int8" in fams:
        plan["int8"] = trial.suggest_categorical("int8", [False, True])
    if "fold" in fams:
        plan["fold"] = trial.suggest_categorical("fold", [False, True])
    if "heal" in fams:
        plan["heal_epochs"] = trial.suggest_categorical("heal_epochs", list(cfg.heal.epochs))
        plan["heal_method"] = trial.suggest_categorical("heal_method", list(cfg.heal.methods))
    return plan


def _damage(baseline: float | None, option_acc: float | None) -> float:
    return max(0.0, (baseline or 0.0) - (option_acc or 0.0))


def allocate(
    analysis: AnalysisResult, baseline: float | None, keep: float, cost: Callable[[UnitResult, float], float],
    untouched: float | None = None,
) -> dict[str, float]:
    """Per-layer settings that bring the analysis' total cost down to ``keep`` of its highest, losing the least.

    Greedy knapsack: every unit starts at its mildest measured setting (or ``untouched``,
    which costs nothing in accuracy); the move with the smallest accuracy lost per unit of
    cost saved is taken until the total cost is at most ``keep`` times the total at the
    mildest settings (or no move is left). Options that were refused or failed are never
    chosen; a unit with none measured stays as it is.

    Args:
        analysis: one analysis of a sensitivity result.
        baseline: the unchanged model's validation accuracy.
        keep: the fraction of the total cost to keep (``1``: the mildest settings).
        cost: ``(unit, setting) -> cost`` (bytes, parameters kept).
        untouched: the setting meaning "leave the layer alone", when it is an option.

    Returns:
        ``{layer: setting}`` for every unit with a measured option.
    """
    mild_first = sorted(analysis.settings, reverse=True)  # bits and parameters kept: the larger, the milder

    def ladder(u: UnitResult) -> list[tuple[float, float]]:
        by = {o.setting: o for o in u.options if o.status == "ok"}
        steps = [(untouched, 0.0)] if untouched is not None else []
        return steps + [(s, _damage(baseline, by[s].accuracy)) for s in mild_first if s in by]

    ladders = {u.name: (u, ladder(u)) for u in analysis.units}
    ladders = {k: v for k, v in ladders.items() if len(v[1]) > (0 if untouched is None else 1)}
    at = dict.fromkeys(ladders, 0)
    total = sum(cost(u, lad[0][0]) for u, lad in ladders.values())
    target = keep * total
    now = total
    while now > target:
        best: tuple[float, str] | None = None
        for name, (u, lad) in ladders.items():
            i = at[name]
            if i + 1 < len(lad):
                saved = cost(u, lad[i][0]) - cost(u, lad[i + 1][0])
                if saved > 0:
                    ratio = (lad[i + 1][1] - lad[i][1]) / saved
                    if best is None or ratio < best[0]:
                        best = (ratio, name)
        if best is None:
            break
        u, lad = ladders[best[1]]
        now -= cost(u, lad[at[best[1]]][0]) - cost(u, lad[at[best[1]] + 1][0])
        at[best[1]] += 1
    return {name: lad[at[name]][0] for name, (_, lad) in ladders.items()}


def grouped_targets(settings: Mapping[str, float], field: str, cast: Callable[[float], Any] = float) -> dict[str, Any]:
    """``targets`` giving each layer its setting, one regex key per distinct value.

    A key also matches the parts a factorised layer becomes (``name.0``, ``name.1``), and is
    an optional regular expression (``re?:``): a block-removal stage earlier in the plan may
    have removed every layer it names.

    >>> t = grouped_targets({"a.conv": 4, "b": 8, "c": 4}, "bits", int)
    >>> list(t.values())
    [{'bits': 4}, {'bits': 8}]
    >>> [[bool(re.fullmatch(k[4:], n)) for n in ("a.conv", "a.conv.1", "c", "b", "a.convx")] for k in t]
    [[True, True, True, False, False], [False, False, False, True, False]]
    """
    by: dict[float, list[str]] = {}
    for name, value in sorted(settings.items()):
        by.setdefault(value, []).append(name)
    return {"re?:^(?:" + "|".join(re.escape(n) for n in names) + r")(?:\.[0-9]+)?$": {field: cast(v)}
            for v, names in sorted(by.items())}


def _bits_targets(sens: SensitivityResult | None, avg_bits: float) -> tuple[int, dict[str, Any] | None]:
    """The default bit width and per-layer bits for an average of ``avg_bits`` (uniform without sensitivities)."""
    if sens is None or not any(a.name == "bits" for a in sens.analyses):
        return max(2, min(8, round(avg_bits))), None
    analysis = sens.analysis("bits")
    top = max(analysis.settings)
    chosen = allocate(analysis, sens.baseline.accuracy, min(1.0, avg_bits / top), lambda u, s: u.params * s)
    return int(top), grouped_targets(chosen, "bits", int)


def _lowrank_targets(sens: SensitivityResult | None, keep: float) -> dict[str, Any]:
    """Per-layer ``ratio`` for keeping ``keep`` of the factorisable parameters (uniform without sensitivities)."""
    if sens is None or not any(a.name == "lowrank" for a in sens.analyses):
        return {"ratio": keep}
    analysis = sens.analysis("lowrank")
    chosen = allocate(analysis, sens.baseline.accuracy, keep, lambda u, s: u.params * s, untouched=1.0)
    lowered = {name: r for name, r in chosen.items() if r < 1.0}
    return {"targets": grouped_targets(lowered, "ratio")} if lowered else {}


def _heal_stage(plan: Mapping[str, Any], cfg: SearchConfig, centroids: bool = False) -> dict[str, Any] | None:
    epochs = int(plan.get("heal_epochs", 0))
    if epochs <= 0:
        return None
    train: dict[str, Any] = {"epochs": epochs, "lr": cfg.heal.centroid_lr if centroids else cfg.heal.lr,
                             "batch_size": cfg.heal.batch_size, "schedule": "cosine"}
    if cfg.heal.optimizer == "adamw":
        train.update(optimizer="adamw", weight_decay=0.01)
    else:  # the default: the stages (and so the replays) of searches before the option stay as they were
        train.update(nesterov=True, weight_decay=5e-4)
    if cfg.heal.max_steps is not None:
        train["max_steps"] = cfg.heal.max_steps
    what = " (centroids)" if centroids else ""
    if plan.get("heal_method", "finetune") == "distill":
        return {"type": "distill", "name": f"heal{what} (distil)", "teacher": "initial", **train}
    return {"type": "finetune", "name": f"heal{what}", **train}


def _structure_stages(plan: Mapping[str, Any], cfg: SearchConfig, sens: SensitivityResult | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    channels, blocks = float(plan.get("channels", 1.0)), float(plan.get("blocks", 0.0))
    if channels < 1.0 - 1e-9 or blocks > 1e-9:
        stage: dict[str, Any] = {"type": "prune", "name": "channels", "granularity": "channel", "keep_first_last": False,
                                 **cfg.channel_widths()}
        stage["macs_target"] = round(channels, 4) if channels < 1.0 - 1e-9 else 0.999
        if blocks > 1e-9:
            stage["remove_blocks"] = round(blocks, 4)
        out.append(stage)
    lowrank = float(plan.get("lowrank", 1.0))
    if lowrank < 1.0 - 1e-9:
        rule = _lowrank_targets(None if plan.get("uniform") else sens, round(lowrank, 4))
        if rule:
            out.append({"type": "factorize", "name": "low-rank", "keep_first_last": False, **rule})
    sparsity = float(plan.get("sparsity", 0.0))
    if sparsity > 1e-9:
        out.append({"type": "prune", "name": "sparsity", "sparsity": round(sparsity, 4), "scope": "global",
                    "keep_first_last": False})
    return out


def plan_stages(plan: Mapping[str, Any], cfg: SearchConfig, sens: SensitivityResult | None) -> list[dict[str, Any]]:
    """The recipe stages of ``plan`` (plain dicts, as a recipe YAML lists them)."""
    stages = _structure_stages(plan, cfg, sens)
    heal = _heal_stage(plan, cfg)
    if heal is not None:
        stages.append(heal)
    if plan.get("fold"):
        stages.append({"type": "fold"})
    bits = float(plan.get("bits", OFF["bits"]))
    if bits <= 8.0:
        top, targets = _bits_targets(None if plan.get("uniform") else sens, bits)
        if plan.get("quantizer", "rtn") == "kmeans":
            share: dict[str, Any] = {"type": "share", "name": "weight sharing", "bits": top}
            if targets:
                share["targets"] = targets
            stages.append(share)
            centroids = _heal_stage(plan, cfg, centroids=True)
            if centroids is not None:
                stages.append(centroids)
        else:
            stage: dict[str, Any] = {"type": "quantize", "name": "weight bits", "mode": "weight_only",
                                     "weight": {"bits": top}, "keep_first_last": False}
            if targets:
                stage["targets"] = targets
            stages.append(stage)
    if plan.get("int8"):
        stages.append({"type": "quantize", "name": "int8", "mode": "static", "keep_first_last": False})
    if cfg.objective == "bytes":
        stages.append({"type": "encode", "name": "artefact"})
    elif cfg.objective == "latency":
        stages.append({"type": "export", "name": "artefact", "format": "onnx",
                       "threads": cfg.latency.threads, "check": {"split": "val", "batches": 2, "min_agreement": 0.9}})
    return stages


def single_plans(cfg: SearchConfig) -> dict[str, list[dict[str, Any]]]:
    """For each compressing family, its 1-D ladder of plans (mildest first), with the largest healing."""
    heal = {"heal_epochs": max(cfg.heal.epochs), "heal_method": "finetune"} if "heal" in cfg.space_families() else {}
    ladders: dict[str, list[dict[str, Any]]] = {
        "structured": [{"channels": c} for c in (0.8, 0.65, 0.5, 0.4, 0.3, 0.25)],
        "blocks": [{"blocks": b} for b in (0.15, 0.3, 0.45)],
        "lowrank": [{"lowrank": r, "uniform": True} for r in (0.75, 0.6, 0.5, 0.4, 0.3, 0.2)],  # one ratio everywhere
        "unstructured": [{"sparsity": s} for s in (0.5, 0.7, 0.8, 0.9, 0.95)],
        "bits": [{"bits": b, "uniform": True} for b in (8.0, 6.0, 5.0, 4.0, 3.0, 2.0)],  # one width everywhere
        "share": [{"bits": b, "uniform": True, "quantizer": "kmeans"} for b in (6.0, 5.0, 4.0, 3.0, 2.0)],
        "int8": [{"int8": True}],
    }
    return {f: [{**p, **heal} for p in ladders[f]] for f in cfg.space_families() if f in ladders}


def describe(plan: Mapping[str, Any]) -> str:
    """A one-line summary of a plan (the parts that change the model)."""
    parts = []
    for key, label in (("channels", "MACs kept"), ("lowrank", "low-rank kept")):
        if float(plan.get(key, 1.0)) < 1.0:
            parts.append(f"{label} {float(plan[key]):.2f}")
    if float(plan.get("blocks", 0.0)) > 0:
        parts.append(f"blocks {float(plan['blocks']):.2f}")
    if float(plan.get("sparsity", 0.0)) > 0:
        parts.append(f"sparsity {float(plan['sparsity']):.2f}")
    if float(plan.get("bits", 32.0)) <= 8:
        parts.append(f"{float(plan['bits']):g} bits" + (" k-means" if plan.get("quantizer") == "kmeans" else ""))
    if plan.get("int8"):
        parts.append("int8")
    if plan.get("fold"):
        parts.append("fold")
    if plan.get("uniform"):
        parts.append("uniform")
    if int(plan.get("heal_epochs", 0)) > 0:
        parts.append(f"{plan.get('heal_method', 'finetune')} {int(plan['heal_epochs'])} ep")
    return ", ".join(parts) or "unchanged"
