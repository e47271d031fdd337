"""The figures of one ``ts.search`` outcome, shared by the search benchmarks (``search_resnet20``, ``search_minilm``).

:func:`figures` reads a search's result (the chosen plan, each family alone, the replay on
the test split, the timing) into the benchmark's metrics; for the latency objective the
chosen plan's ONNX file, the best single family's and the unchanged model's are re-timed
side by side in interleaved rounds (medians), and that ratio replaces the one from the
search's own (separately timed) measurements.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from _common import interleaved

from torchslim.deploy.runtime import measure_ort_latency
from torchslim.pipeline import run_recipe
from torchslim.search.evaluate import recipe_for


def latency_side_by_side(head: dict[str, Any], result: dict[str, Any], out: Path, example: Any, *,
                         batch: int = 32, threads: int = 2, runs: int = 30, rounds: int = 9) -> dict[str, Any]:
    """Re-time the chosen plan's ONNX file, the best single family's and the unchanged model's, interleaved."""
    best = min((r for r in result["alone"].values() if r), key=lambda r: r["objective"], default=None)
    chosen_onnx = Path(result["replay"]["output"]) / "model.onnx"
    if best is None or not chosen_onnx.exists():
        return {}
    single_dir = out / "best-single-replay"
    run_recipe(recipe_for({**head, "name": "best-single"}, best["stages"]), output=single_dir, overwrite=True, progress=False)
    base_dir = out / "unchanged-replay"
    run_recipe(recipe_for({**head, "name": "unchanged"}, [s for s in best["stages"] if s["type"] == "export"]),
               output=base_dir, overwrite=True, progress=False)
    files = {"chosen": chosen_onnx, "best_single": single_dir / "model.onnx", "unchanged": base_dir / "model.onnx"}
    medians, timed = interleaved({k: (lambda f=f: measure_ort_latency(str(f), example, batch_size=batch, threads=threads,
                                                                      runs=runs))
                                  for k, f in files.items()}, rounds=rounds)
    return {"ms": {k: round(v, 3) for k, v in medians.items()}, "rounds_ms": timed,
            "best_single": best["summary"], "ratio_vs_best_single": round(medians["best_single"] / medians["chosen"], 3),
            "speedup_vs_unchanged": round(medians["unchanged"] / medians["chosen"], 3),
            "settings": {"batch": batch, "threads": threads, "runs": runs, "rounds": rounds}}


def figures(head: dict[str, Any], objective: str, result: dict[str, Any], wall: float | None, out: Path,
            example: torch.Tensor | dict[str, torch.Tensor] | None = None, **latency: int) -> dict[str, Any]:
    """The benchmark's figures of one search's outcome (``example``: the input the latency side by side times)."""
    alone = {f: (None if r is None else {"plan": r["summary"], "drop_pt": round(r["drop"], 3), "objective": r["objective"]})
             for f, r in result["alone"].items()}
    best = min((r for r in result["alone"].values() if r), key=lambda r: r["objective"], default=None)
    chosen, replay = result["chosen"], result.get("replay", {})
    found: dict[str, Any] = {
        "baseline_val_accuracy": result["baseline"]["accuracy"], "baseline_objective": result["baseline"]["objective"],
        "chosen": None if chosen is None else {"plan": chosen["summary"], "val_drop_pt": round(chosen["drop"], 3),
                                               "objective": chosen["objective"], "stages": chosen["stages"]},
        "alone": alone, "best_single": None if best is None else best["summary"],
        "ratio_vs_best_single": None if chosen is None or best is None else round(best["objective"] / chosen["objective"], 3),
        "replay": {k: replay.get(k) for k in ("val_accuracy", "val_drop", "objective", "test_accuracy", "test_accuracy_before")},
        "test_drop_pt": None if not replay or replay.get("test_accuracy") is None else
        round(100 * (replay["test_accuracy_before"] - replay["test_accuracy"]), 3),
        "trials": len(result["trials"]), "pareto": [(r["summary"], round(r["drop"], 3), r["objective"]) for r in result["pareto"]],
        "healing": {m: (None if r is None else (r["summary"], round(r["drop"], 3), r["objective"]))
                    for m, r in result["healing"].items()},
        "timing_s": {k: round(v, 1) for k, v in result["timing"].items()},
        "wall_s": None if wall is None else round(wall, 1),
        "config": {k: result["config"].get(k) for k in ("trials", "proposals", "proposals_from", "refine_trials",
                                                         "max_one_shot_drop", "heal", "val_samples", "seed")},
    }
    if objective == "latency" and chosen is not None and example is not None:
        found["side_by_side"] = latency_side_by_side(head, result, out, example, **latency)
        if found["side_by_side"]:
            found["ratio_vs_best_single"] = found["side_by_side"]["ratio_vs_best_single"]
    return found
