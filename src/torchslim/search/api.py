"""``ts.search``: the best plan under an accuracy budget, across pruning, quantization, low-rank, folding and healing.

The search runs in five steps, each kept in the output directory so that a restarted
search continues:

1. the unchanged model is scored on the validation split (accuracy, objective);
2. the sensitivity analysis (``sensitivity.json``; reused when present or named);
3. the fast stage proposes plans from it (:mod:`torchslim.search.propose`), queued as the
   study's first trials;
4. the refinement stage: an Optuna study (``study.db`` or ``storage``), in this process or
   in ``workers`` processes (:mod:`torchslim.search.study`);
5. each family alone (:mod:`torchslim.search.singles`), then the outcome: the Pareto front,
   the chosen plan as a recipe (``chosen.yaml``), or the closest plans and their misses; and
   the chosen recipe replayed by ``torchslim run`` into ``replay/`` (its report is measured on
   the test split).

Example:
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> head = {"name": "digits-search", "model": {"name": "zoo:lenet300", "args": {"in_features": 64}}, "data": "digits"}
    >>> cfg = {"objective": "macs", "families": ["structured"], "budget": 100.0, "trials": 2, "proposals": 1,
    ...        "singles": False, "replay": False, "sensitivity": {"analyses": ["structured"], "batches": 1}}
    >>> result = search(head, cfg, out=out, progress=False)
    >>> len(result["trials"]), result["chosen"] is not None, sorted(p.name for p in Path(out).glob("*.yaml"))
    (2, True, ['chosen.yaml'])
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from torchslim.errors import TorchslimError
from torchslim.io import atomic_write_text
from torchslim.measure import evaluate_accuracy
from torchslim.pipeline import run_recipe
from torchslim.search.config import SensitivityConfig
from torchslim.search.evaluate import Env, _objective, accuracy_drop_pt, recipe_for
from torchslim.search.outcome import UNITS, choose, pareto, trial_rows, write_outcome
from torchslim.search.propose import proposals, proposals_from_singles
from torchslim.search.result import SensitivityResult
from torchslim.search.searchconfig import SearchConfig
from torchslim.search.sensitivity import sensitivity
from torchslim.search.singles import best_single, run_singles
from torchslim.search.study import (
    counted,
    enqueue_proposals,
    finished_trials,
    open_study,
    run_study,
    run_workers,
    storage_url,
)

__all__ = ["search"]

#: the sensitivity analysis each family's allocation reads (weight sharing allocates its bits as weight bits do)
_ANALYSIS_OF = {"structured": "structured", "unstructured": "unstructured", "bits": "bits", "share": "bits",
                "lowrank": "lowrank"}


def _head(recipe: Mapping[str, Any]) -> dict[str, Any]:
    head = {k: v for k, v in dict(recipe).items() if k in ("name", "seed", "model", "data", "measure", "device")}
    for key in ("name", "model", "data"):
        if key not in head:
            raise TorchslimError(f"search: the recipe head needs {key!r} (name, model, data; seed and measure optional)")
    return head


def _sensitivity(env: Env, cfg: SearchConfig, out: Path, progress: bool) -> tuple[SensitivityResult | None, float]:
    t0 = time.perf_counter()
    wanted_set = {_ANALYSIS_OF[f] for f in cfg.space_families() if f in _ANALYSIS_OF}
    wanted = [a for a in cfg.sensitivity.analyses if a in wanted_set]
    if not wanted:
        return None, 0.0
    if cfg.sensitivity_file is not None:
        return SensitivityResult.from_json(cfg.sensitivity_file), 0.0
    saved = out / "sensitivity.json"
    if saved.exists():
        return SensitivityResult.from_json(saved), 0.0
    sens_cfg = SensitivityConfig.parse({**cfg.sensitivity.model_dump(), "analyses": wanted, "seed": cfg.seed})
    result = sensitivity(env.model, env.data, sens_cfg, progress=progress)
    result.to_json(saved)
    return result, time.perf_counter() - t0


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), disable=not enabled, transient=False)


def _best_text(study: Any, cfg: SearchConfig, unit: str) -> str:
    rows = trial_rows(finished_trials(study))
    chosen, _ = choose(rows, cfg.budget, 1.0)
    if chosen is None:
        return "search: no plan within the budget yet"
    return f"search: best {chosen['objective']:.4g} {unit} at {chosen['drop']:.2f} pt ({chosen['summary']})"


def _refine(env: Env, cfg: SearchConfig, url: str, progress: bool, deadline: float | None,
            plans: list[dict[str, Any]]) -> Any:
    study = open_study(cfg, url)
    enqueue_proposals(study, plans)
    unit = UNITS[cfg.objective]
    with _progress(progress) as bar:
        task = bar.add_task("search", total=cfg.trials, completed=min(cfg.trials, counted(study)))

        def poll(s: Any, *_: Any) -> None:
            bar.update(task, completed=min(cfg.trials, counted(s)), description=_best_text(s, cfg, unit))

        if cfg.workers > 1:
            run_workers(env, url, deadline=deadline, poll=poll)
        else:
            run_study(env, study, callback=poll, deadline=deadline)
        poll(study)
    return study


def _replay(env: Env, recipe: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run the chosen recipe with ``torchslim run`` and measure it as the search did (and on the test split)."""
    t0 = time.perf_counter()
    result = run_recipe(recipe_for(env.head, recipe["stages"]), output=out / "replay", overwrite=True, progress=False)
    files = [p for p in (out / "replay").iterdir() if p.suffix in (".tslim", ".onnx")]
    artefact = max(files, key=lambda p: p.stat().st_mtime) if files else None
    objective, deployed = _objective(env, result.model, artefact)
    accuracy = deployed if deployed is not None else float(evaluate_accuracy(result.model, env.val))
    after = result.report.after
    return {"output": str(out / "replay"), "val_accuracy": accuracy, "val_drop": accuracy_drop_pt(env.baseline.accuracy, accuracy),
            "objective": objective, "test_accuracy": after.accuracy if after is not None else None,
            "test_accuracy_before": result.report.before.accuracy if result.report.before is not None else None,
            "seconds": time.perf_counter() - t0}


def _families_alone(singles: list[dict[str, Any]], budget: float) -> dict[str, Any]:
    return {fam: best_single([r for r in singles if r["family"] == fam], budget) for fam in dict.fromkeys(r["family"] for r in singles)}


def _healing(rows: list[dict[str, Any]], budget: float) -> dict[str, Any]:
    out = {}
    for method in ("finetune", "distill"):
        fits = [r for r in rows if r.get("status") == "ok" and r["drop"] <= budget and int(r["plan"].get("heal_epochs", 0)) > 0
                and r["plan"].get("heal_method") == method]
        out[method] = min(fits, key=lambda r: (r["objective"], r["drop"])) if fits else None
    return out


def search(
    recipe: Mapping[str, Any], config: SearchConfig | Mapping[str, Any] | None = None, *, out: str | Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Search the plan with the smallest objective whose validation drop is within the budget.

    Args:
        recipe: the recipe head: ``name``, ``model`` (a trained model: ``weights:`` or a Hugging
            Face directory), ``data``, optionally ``seed`` and ``measure`` (other keys are ignored).
        config: a :class:`SearchConfig` or a mapping.
        out: the output directory (created; a search restarted on it continues).
        progress: show progress bars.

    Returns:
        The outcome as plain data (also written as ``search.json``): ``baseline``, ``trials``,
        ``pareto``, ``chosen`` (``None`` when no plan meets the budget) and ``closest``, ``singles``
        and ``alone`` (each family alone), ``healing``, ``recipe`` (the chosen plan's recipe),
        ``replay`` and ``timing``.
    """
    cfg = SearchConfig.parse(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    head = _head(recipe)
    start = time.perf_counter()
    deadline = time.time() + cfg.time if cfg.time is not None else None
    if cfg.threads is not None and cfg.workers == 1:
        torch.set_num_threads(cfg.threads)
    env = Env.build(head, cfg)
    env.sens, sens_s = _sensitivity(env, cfg, out, progress)
    atomic_write_text(out / "head.json", json.dumps(head, indent=1) + "\n")
    url = storage_url(out, cfg.storage)
    singles: list[dict[str, Any]] = []
    singles_s = 0.0

    def alone() -> None:  # each family alone, timed
        nonlocal singles, singles_s
        t0 = time.perf_counter()
        singles = run_singles(env, url)
        singles_s = time.perf_counter() - t0

    first = cfg.singles and cfg.proposals_from == "singles"  # the families alone first: the proposals build on them
    if first:
        alone()
    plans = proposals_from_singles(singles, cfg) if singles else []
    t0 = time.perf_counter()
    study = _refine(env, cfg, url, progress, deadline, plans or proposals(env.sens, cfg))
    search_s = time.perf_counter() - t0
    if cfg.singles and not first:
        alone()
    rows = trial_rows(finished_trials(study))
    # a family alone is a plan too: the answer is never worse than the best of them
    candidates = rows + [{**r, "number": f"{r['family']} alone"} for r in singles if r.get("status") == "ok"]
    chosen, closest = choose(candidates, cfg.budget, env.baseline.objective, cfg.min_ratio)
    pick = chosen or (closest[0] if closest else None)
    plan_recipe = None
    if pick is not None:
        plan_recipe = recipe_for({**head, "name": f"{head['name']}-searched"}, pick["stages"]).to_dict()
        plan_recipe.pop("output", None)
    result: dict[str, Any] = {
        "objective": cfg.objective, "budget": cfg.budget, "min_ratio": cfg.min_ratio,
        "baseline": {"accuracy": env.baseline.accuracy, "objective": env.baseline.objective},
        "trials": rows, "pareto": pareto(candidates), "chosen": chosen, "closest": closest,
        "singles": singles, "alone": _families_alone(singles, cfg.budget), "healing": _healing(candidates, cfg.budget),
        "recipe": plan_recipe, "config": cfg.model_dump(mode="json"), "head": head, "storage": url,
        "timing": {"sensitivity_s": sens_s, "search_s": search_s, "singles_s": singles_s},
        "machine": {"date": _dt.date.today().isoformat(), "platform": platform.platform(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    if chosen is not None and plan_recipe is not None and cfg.replay:
        result["replay"] = _replay(env, plan_recipe, out)
    result["timing"]["total_s"] = time.perf_counter() - start
    write_outcome(result, out, plan_recipe)
    return result

