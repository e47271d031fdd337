"""Each family alone: a 1-D search at the same budget and healing, to say what combining adds.

A family's ladder (:func:`torchslim.search.plan.single_plans`: channel pruning's MACs
kept, uniform weight bits or shared values, low-rank's parameters kept, sparsity, int8)
is ordered mildest first, the objective falling and the drop rising along it; the
strongest setting within the budget is found by bisection (a ladder of ``n`` settings
costs about ``log2(n + 1)`` candidates, not ``n``). The points are stored as trials of their own study
(``<study>:single:<family>``) in the search's storage, so a restarted search does not
score them again.

Example:
    >>> best_single([{"family": "bits", "status": "ok", "drop": 0.4, "objective": 10.0},
    ...              {"family": "lowrank", "status": "ok", "drop": 2.0, "objective": 5.0}], 1.0)["family"]
    'bits'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from torchslim.errors import TorchslimError
from torchslim.search.evaluate import Env, Hopeless, score
from torchslim.search.outcome import exact_drop
from torchslim.search.plan import describe, single_plans

__all__ = ["best_single", "run_singles"]


def _done(study: optuna.Study) -> dict[int, dict[str, Any]]:
    out = {}
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) and "index" in t.user_attrs:
            row = dict(t.user_attrs["row"])
            if "drop" in row:
                row["drop"] = exact_drop(row["drop"])
            out[int(t.user_attrs["index"])] = row
    return out


def _score_row(env: Env, family: str, plan: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"family": family, "plan": plan, "summary": describe(plan)}
    try:
        s = score(env, plan)
    except Hopeless as exc:
        return {**row, "status": "pruned", "reason": str(exc)}
    except TorchslimError as exc:
        return {**row, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:2000]}
    return {**row, "status": "ok", "accuracy": s.accuracy, "drop": s.drop, "objective": s.objective,
            "seconds": s.seconds, "stages": s.stages}


def run_singles(env: Env, url: str, tick: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Walk every family's ladder (resuming from the storage); returns one row per point scored."""
    rows: list[dict[str, Any]] = []
    storage = optuna.storages.RDBStorage(url)
    for family, ladder in single_plans(env.cfg).items():
        study = optuna.create_study(storage=storage, study_name=f"{env.cfg.study}:single:{family}",
                                    directions=["minimize", "minimize"], load_if_exists=True)
        done = _done(study)
        low, high = 0, len(ladder) - 1
        while low <= high:
            index = (low + high) // 2
            plan = ladder[index]
            if tick is not None:
                tick(f"{family} alone: {describe(plan)}")
            row = done.get(index)
            if row is None:
                row = _score_row(env, family, plan)
                trial = study.ask()
                trial.set_user_attr("index", index)
                trial.set_user_attr("row", row)
                if row["status"] == "ok":
                    study.tell(trial, [row["objective"], row["drop"]])
                else:
                    study.tell(trial, state=TrialState.PRUNED if row["status"] == "pruned" else TrialState.FAIL)
            rows.append(row)
            if row["status"] == "ok" and row["drop"] <= env.cfg.budget:
                low = index + 1  # within the budget: try stronger
            else:
                high = index - 1
    return rows


def best_single(rows: list[dict[str, Any]], budget: float) -> dict[str, Any] | None:
    """The single-family point with the smallest objective within the budget (``None``: none is)."""
    ok = [r for r in rows if r.get("status") == "ok" and r["drop"] <= budget]
    return min(ok, key=lambda r: (r["objective"], r["drop"])) if ok else None
