"""The fast stage: plans proposed from the sensitivity analysis alone, before any candidate is trained.

Each family's one-shot accuracy loss is predicted from the sensitivities, adding the
layers' measured drops (linear between measured settings, none at "unchanged"):
weight bits and low-rank through the same knapsack allocation their stages use
(:func:`torchslim.search.plan.allocate`), channel pruning and sparsity at the setting
applied to every unit. A family's *limit* is its strongest setting whose predicted loss
stays within ``heal_factor`` times the budget (healing recovers part of a one-shot loss).
Proposals then scale every family from unchanged towards its limit by a common factor
``t`` (largest first) until the families' summed prediction fits, for each healing
choice: the study's first trials, which the sampler then refines. Where weight sharing is
in the space, the proposals quantize by it (its loss is predicted from the weight-bits
analysis, which it undercuts once its centroids are healed).

Example:
    >>> from torchslim.search.searchconfig import SearchConfig
    >>> cfg = SearchConfig.parse({"objective": "macs", "families": ["structured", "heal"], "proposals": 2})
    >>> [p["channels"] for p in proposals(None, cfg)]   # no sensitivities: the middle of each range
    [0.65, 0.65]
"""

from __future__ import annotations

import math
from typing import Any

from torchslim.search.plan import RANGES, allocate
from torchslim.search.plan import unchanged as _off
from torchslim.search.result import AnalysisResult, SensitivityResult
from torchslim.search.searchconfig import SearchConfig

__all__ = ["predicted_drop", "proposals", "proposals_from_singles"]

#: a one-shot loss up to this many budgets is expected to heal within the budget
HEAL_FACTOR = 3.0
_ANALYSIS = {"bits": "bits", "lowrank": "lowrank", "channels": "structured", "sparsity": "unstructured"}
_PARAM_OF = {"structured": "channels", "lowrank": "lowrank", "unstructured": "sparsity", "bits": "bits", "share": "bits"}


def _params(fams: list[str]) -> list[str]:
    """The numeric parameters of the searched families that the fast stage sets (weight bits once)."""
    return list(dict.fromkeys(_PARAM_OF[f] for f in fams if f in _PARAM_OF))


def _damage_at(analysis: AnalysisResult, baseline: float, unit_index: int, x: float, zero: float) -> float:
    """The unit's measured drop at setting ``x`` (points), linear between settings; 0 at ``zero``."""
    unit = analysis.units[unit_index]
    pts = sorted([(zero, 0.0)] + [(o.setting, max(0.0, baseline - (o.accuracy or 0.0)) * 100) for o in unit.options
                                  if o.status == "ok"], key=lambda p: abs(p[0] - zero))
    for (a, da), (b, db) in zip(pts, pts[1:]):
        if abs(x - zero) <= abs(b - zero):
            w = 0.0 if b == a else (x - a) / (b - a)
            return da + w * (db - da)
    return pts[-1][1] if len(pts) > 1 else 0.0


def predicted_drop(sens: SensitivityResult, param: str, value: float) -> float:
    """Predicted one-shot drop (points) of one family's setting, summed over its units."""
    name = _ANALYSIS[param]
    if not any(a.name == name for a in sens.analyses) or sens.baseline.accuracy is None:
        return 0.0
    analysis, base = sens.analysis(name), sens.baseline.accuracy
    if param in ("bits", "lowrank"):
        top = max(analysis.settings) if param == "bits" else 1.0
        keep = min(1.0, value / top)
        chosen = allocate(analysis, base, keep, lambda u, s: u.params * s, untouched=None if param == "bits" else 1.0)
        index = {u.name: i for i, u in enumerate(analysis.units)}
        zero = 32.0 if param == "bits" else 1.0
        return sum(_damage_at(analysis, base, index[n], s, zero) for n, s in chosen.items())
    setting = 1.0 - math.sqrt(value) if param == "channels" else value  # MACs kept ~ (channels kept)^2
    return sum(_damage_at(analysis, base, i, setting, 0.0) for i in range(len(analysis.units)))


def _limit(sens: SensitivityResult, param: str, allowed: float) -> float:
    """The strongest value of ``param`` on its grid whose predicted drop is within ``allowed``."""
    low, high, step = RANGES[param]
    off = _off(param)
    values = [round(low + i * step, 6) for i in range(int(round((high - low) / step)) + 1)]
    values.sort(key=lambda v: abs(v - off))  # mildest first
    best = off
    for v in values:
        if predicted_drop(sens, param, v) > allowed:
            break
        best = v
    return best


def _snap(param: str, value: float) -> float:
    low, high, step = RANGES[param]
    return round(min(high, max(low, low + round((value - low) / step) * step)), 6)


def proposals(sens: SensitivityResult | None, cfg: SearchConfig) -> list[dict[str, Any]]:
    """Up to ``cfg.proposals`` plans (Optuna parameter dicts) from the sensitivities (see the module docstring)."""
    fams = cfg.space_families()
    params = _params(fams)
    allowed = HEAL_FACTOR * max(cfg.budget, 0.1)
    heal_choices: list[dict[str, Any]] = [{}]
    if "heal" in fams:
        heal_choices = [{"heal_epochs": max(cfg.heal.epochs), "heal_method": m} for m in cfg.heal.methods]
    out: list[dict[str, Any]] = []
    for t in (1.0, 0.75, 0.5, 0.35, 0.25):
        plan: dict[str, Any] = {}
        for p in params:
            low, high, _ = RANGES[p]
            off = _off(p)
            limit = _limit(sens, p, allowed) if sens is not None else (low + high) / 2
            plan[p] = _snap(p, off + t * (limit - off) if sens is not None else limit)
        if sens is not None and sum(predicted_drop(sens, p, plan[p]) for p in params) > allowed and t > 0.25:
            continue
        if "blocks" in fams:
            plan["blocks"] = 0.0
        if "share" in fams:  # weight sharing with its centroids healed: Deep Compression's order
            plan["quantizer"] = "kmeans"
        if "int8" in fams:
            plan["int8"] = True
        if "fold" in fams:
            plan["fold"] = True
        for heal in heal_choices:
            candidate = {**plan, **heal}
            if candidate not in out:
                out.append(candidate)
        if len(out) >= cfg.proposals:
            break
    return out[: cfg.proposals]


#: the fractions of each family's measured limit the combinations take, with how many families they combine;
#: from the full limits down (on ResNet-20 / Fashion-MNIST, 0.8 of the limits of sparsity and shared values
#: left most of the budget unspent: 0.1 pt of 1.0)
_MIXES = ((2, 1.0), (2, 0.9), (3, 0.85), (2, 0.8), (3, 0.7), (2, 0.65), (3, 0.55), (2, 0.5))


def proposals_from_singles(singles: list[dict[str, Any]], cfg: SearchConfig) -> list[dict[str, Any]]:
    """Plans combining the families that did best alone, each at a fraction of its measured limit.

    ``singles`` are the rows of each family alone (:func:`torchslim.search.singles.run_singles`),
    healed as every candidate is: a family's *limit* is its strongest setting whose healed drop
    is within the budget, a better guide than a one-shot prediction (sparsity and shared values
    heal far better than their one-shot loss says). The families are ranked by their best
    objective alone (a family setting what a better one sets, the other quantizer of the weight
    bits, is left out); the proposals combine the best two or three, each ``t`` of the way from
    unchanged to its limit (``t`` from 1, the full limits, down), every other family left unchanged. Per-layer
    settings then come from the sensitivity allocation, as for any plan.

    Example:
        >>> from torchslim.search.searchconfig import SearchConfig
        >>> cfg = SearchConfig.parse({"objective": "bytes", "families": ["unstructured", "bits", "share", "heal"],
        ...                           "heal": {"epochs": [1], "methods": ["finetune"]}, "proposals": 2})
        >>> rows = [{"family": "unstructured", "status": "ok", "drop": 0.6, "objective": 300.0, "plan": {"sparsity": 0.8}},
        ...         {"family": "share", "status": "ok", "drop": 0.9, "objective": 80.0,
        ...          "plan": {"bits": 2.0, "uniform": True, "quantizer": "kmeans"}},
        ...         {"family": "bits", "status": "ok", "drop": 0.5, "objective": 120.0, "plan": {"bits": 4.0, "uniform": True}}]
        >>> [(p["sparsity"], p["bits"], p["quantizer"]) for p in proposals_from_singles(rows, cfg)]
        [(0.8, 2.0, 'kmeans'), (0.7, 2.5, 'kmeans')]
    """
    fams = cfg.space_families()
    best: dict[str, dict[str, Any]] = {}
    for r in singles:
        if r.get("status") == "ok" and r["drop"] <= cfg.budget:
            if r["family"] not in best or r["objective"] < best[r["family"]]["objective"]:
                best[r["family"]] = r
    ranked: list[dict[str, Any]] = []  # best first; a family whose settings an earlier one already sets is left out
    for f in sorted(best, key=lambda f: best[f]["objective"]):
        params = {p for p in best[f]["plan"] if p in RANGES}
        if params and not params <= {p for r in ranked for p in r["plan"] if p in RANGES}:
            ranked.append(best[f])
    base: dict[str, Any] = {p: _off(p) for p in _params(fams) + (["blocks"] if "blocks" in fams else [])}
    if "bits" in fams and "share" in fams:
        base["quantizer"] = "rtn"
    heal: dict[str, Any] = {"heal_epochs": max(cfg.heal.epochs), "heal_method": cfg.heal.methods[0]} if "heal" in fams else {}
    flags: dict[str, Any] = {k: True for k in ("int8", "fold") if k in fams}
    out: list[dict[str, Any]] = []
    for k, t in _MIXES:
        if len(ranked) < k:
            continue
        plan: dict[str, Any] = {**base, **flags, **heal}
        for row in ranked[:k]:
            for param, limit in row["plan"].items():
                if param in RANGES:
                    plan[param] = _snap(param, _off(param) + t * (float(limit) - _off(param)))
                    if param == "bits":
                        plan["quantizer"] = row["plan"].get("quantizer", "rtn")
        if plan not in out:
            out.append(plan)
        if len(out) >= cfg.proposals:
            break
    return out[: cfg.proposals]
