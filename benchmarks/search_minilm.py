"""search_minilm: ``torchslim search`` for latency on a MiniLM classifier against each family alone (issue 22, acceptance 2).

A ``transformers`` ``BertForSequenceClassification`` built from all-MiniLM-L6-v2's encoder
(6 layers x 384, 12 heads, FFN 1536) and a fresh seeded 2-way head is fine-tuned on
``sms-spam`` by ``torchslim run`` (AdamW, one epoch; texts truncated to ``MAX_LEN`` tokens;
``VAL`` training texts held out for validation), saved as a Hugging Face directory, and
searched from that directory with a 1.0 pt budget on the validation split, objective: the
latency of the exported ONNX file in ONNX Runtime (batch 32, 2 threads). The space: head and
FFN-channel pruning (``structured``), layer removal (``blocks``), int8 (``int8``) and the
healing (a short fine-tune or distillation from the fine-tuned model, ``heal``: AdamW at 5e-5, the
fine-tune's own optimizer; the first runs healed with SGD at 0.01, which collapsed strongly pruned models to the
majority class). Each family
alone gets its own 1-D search at the same budget and healing; the chosen plan's ONNX file,
the best single family's and the unchanged model's are re-timed side by side in interleaved
rounds (medians). The chosen recipe is replayed by ``torchslim run``; its report gives the
test-split drop.

Target (acceptance 2): the searched plan >= 1.3x faster than the best single family at a
validation drop <= 1 pt.

Settings are in ``SEARCH`` below. ``SEARCH_MINILM_SMOKE=1``: tiny caps, a few-minute check that writes no result.
``RESUME=1`` continues the stored study (finished trials and single-family points are read back, not run
again; the earlier runs' seconds are added to this one's).

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/search_minilm.py``
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _baselines import minilm_classifier
from _common import Timer, git_commit, write_result
from _search_figures import figures

from torchslim.io import atomic_write_text
from torchslim.pipeline import load_model_and_data, run_recipe
from torchslim.search.api import search
from torchslim.search.evaluate import recipe_for
from torchslim.zoo.minilm import load_minilm

NAME = "search_minilm"
SEED = 0
SMOKE = os.environ.get("SEARCH_MINILM_SMOKE") == "1"
RESUME = os.environ.get("RESUME") == "1"  # continue the stored study: finished trials are read back, not run again
ROOT = Path("runs") / ("bench-search-minilm-smoke" if SMOKE else "bench-search-minilm")
MAX_LEN = 64
VAL = 500
DATA: dict[str, Any] = {"name": "sms-spam", "max_length": MAX_LEN, "val_size": VAL}
FINETUNE: dict[str, Any] = {"type": "train", "epochs": 1, "optimizer": "adamw", "lr": 5e-5, "batch_size": 32,
                            "schedule": "linear", "warmup_steps": 20, "max_steps": 3 if SMOKE else None}
SEARCH: dict[str, Any] = {
    "budget": 1.0, "objective": "latency", "families": ["structured", "blocks", "int8", "heal"],
    "trials": 2 if SMOKE else 10, "proposals": 1 if SMOKE else 3, "proposals_from": "singles", "refine_trials": 0 if SMOKE else 3,
    "val_samples": VAL, "seed": SEED,
    "heal": {"epochs": [1], "max_steps": 2 if SMOKE else 80, "methods": ["finetune", "distill"], "optimizer": "adamw",
             "lr": 5e-5, "batch_size": 32},
    "sensitivity": {"batches": 1, "batch_size": 32 if SMOKE else 128, "analyses": ["structured"]},
    "latency": {"batch": 32, "threads": 2, "runs": 5 if SMOKE else 15},
}
BAR = 1.3


def _classifier(path: Path) -> None:
    """MiniLM's encoder weights under a fresh seeded 2-way head, saved with the tokenizer as a Hugging Face directory."""
    encoder, tokenizer = load_minilm()
    model = minilm_classifier(encoder, SEED)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def _finetuned() -> tuple[Path, float]:
    """The fine-tuned classifier's directory (made once; kept across runs) and the seconds it took."""
    trained = ROOT / "finetuned"
    if (trained / "config.json").exists():  # made by an earlier run: the seconds its fine-tune took
        return trained, float(json.loads((ROOT / "finetune-run" / "report.json").read_text())["meta"]["wall_s"])
    t0 = time.perf_counter()
    fresh = ROOT / "fresh"
    _classifier(fresh)
    run = run_recipe(recipe_for({"name": "minilm-finetune", "seed": SEED, "model": {"hf": str(fresh)}, "data": DATA},
                                [FINETUNE]), output=ROOT / "finetune-run", overwrite=True, progress=True)
    staging = ROOT / "finetuned.partial"
    shutil.rmtree(staging, ignore_errors=True)
    run.model.save_pretrained(staging)
    run.source.tokenizer.save_pretrained(staging)
    staging.rename(trained)
    return trained, time.perf_counter() - t0


def main() -> None:
    timer = Timer()
    commit = git_commit()
    ROOT.mkdir(parents=True, exist_ok=True)
    trained, finetune_s = _finetuned()
    head = {"name": "minilm-search", "seed": SEED, "model": {"hf": str(trained.resolve())}, "data": DATA,
            "measure": {"latency_batch": 32, "latency_runs": SEARCH["latency"]["runs"], "threads": 2}}
    out = ROOT / "latency"
    spent = out / "timing.json"  # every run's seconds on this study, summed (search.json holds the last run's)
    earlier: dict[str, float] = {}
    if RESUME and spent.exists():  # a continued study: the runs before took their time too
        earlier = {k: float(v) for k, v in json.loads(spent.read_text()).items() if isinstance(v, (int, float))}
    elif not RESUME:
        shutil.rmtree(out, ignore_errors=True)
    example = load_model_and_data(recipe_for(head, [{"type": "fold"}]))[1].example_input()
    t0 = time.perf_counter()
    result = search(head, SEARCH, out=out, progress=True)
    for key in ("sensitivity_s", "search_s", "singles_s", "total_s"):  # a reused analysis counts what it took
        if key in earlier:
            result["timing"][key] = result["timing"].get(key, 0.0) + earlier[key]
            result["timing"]["continued"] = 1.0
    atomic_write_text(spent, json.dumps({k: v for k, v in result["timing"].items() if k != "continued"}))
    m = figures(head, "latency", result, time.perf_counter() - t0, out, example, runs=10 if SMOKE else 30,
                rounds=3 if SMOKE else 9)
    m["finetune_s"] = round(finetune_s, 1)
    m["commit"] = commit
    chosen = m["chosen"]
    targets = {
        f"latency_vs_best_single_ge_{BAR}": {"value": m["ratio_vs_best_single"], "bar": BAR,
                                            "met": bool(m["ratio_vs_best_single"] and m["ratio_vs_best_single"] >= BAR)},
        "val_drop_le_1": {"value": None if chosen is None else chosen["val_drop_pt"], "bar": 1.0,
                          "met": chosen is not None and chosen["val_drop_pt"] <= 1.0},
    }
    print(json.dumps({"metrics": m, "targets": targets}, indent=1, default=str)[:6000])
    if SMOKE:
        return
    write_result(NAME, metrics=m, targets=targets, seed=SEED, wall_s=timer.seconds,
                 baseline={"model": "all-MiniLM-L6-v2 encoder + 2-way head, fine-tuned on sms-spam (this run)"},
                 notes=f"settings: {SEARCH}; resumed: {RESUME}; fine-tune: {FINETUNE}; data: {DATA}; commit {commit}; 2-core CPU; latency "
                       "ratios re-timed side by side in interleaved rounds (medians)")
    for k, v in targets.items():
        print(f"{NAME}: {k}: {v}")


if __name__ == "__main__":
    main()
