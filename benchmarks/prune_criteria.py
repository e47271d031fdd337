"""prune_criteria: every importance criterion against random, LeNet-300-100 on MNIST at 95 % sparsity.

Baseline: LeNet-300-100 trained 10 epochs (SGD lr 0.1, momentum 0.9, weight
decay 1e-4, cosine, batch 128: the demo recipe), cached under
``$TORCHSLIM_CACHE/baselines`` (trained here when absent). For every registered
criterion: one-shot global pruning of all three layers to 95 % sparsity
(calibration: 8 batches of 128 training images for criteria that need data),
test accuracy right after pruning, then the same fine-tune for every criterion
(1 epoch, SGD lr 0.01, momentum 0.9, cosine, batch 128, masks applied) and the
test accuracy again. Target: every non-random criterion beats random (after
the fine-tune; the before-fine-tune figures are reported too).

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/prune_criteria.py``
"""

from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _baselines import trained
from _common import Timer, write_result

import torchslim as ts
from torchslim.measure import count_nonzeros, evaluate_accuracy
from torchslim.prune import CRITERIA, prune_

THREADS = int(os.environ.get("PRUNE_THREADS", 1))
SPARSITY = 0.95
LENET300_MNIST = {"epochs": 10, "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
                  "weight_decay": 1e-4, "schedule": "cosine", "seed": 0}
FINETUNE = {"epochs": 1, "batch_size": 128, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "schedule": "cosine", "seed": 0}


def main() -> None:
    timer = Timer()
    torch.set_num_threads(THREADS)
    data = ts.load_data("mnist")
    base, cached = trained("lenet300_mnist", lambda: ts.create_model("lenet300"), data, LENET300_MNIST)
    test = data.loader("test", 1000)
    base_acc = evaluate_accuracy(base, test)
    print(f"baseline accuracy {100 * base_acc:.2f}% (cached: {cached})", flush=True)

    table: dict[str, dict[str, float]] = {}
    for name in CRITERIA.names():
        model = ts.create_model("lenet300")
        model.load_state_dict(base.state_dict())
        t0 = time.perf_counter()
        prune_(model, {"sparsity": SPARSITY, "criterion": name, "keep_first_last": False,
                       "calibration": {"batches": 8, "batch_size": 128}},
               calibration=data.loader("train", 128, shuffle=True, seed=0))
        score_s = time.perf_counter() - t0
        pruned = evaluate_accuracy(model, test)
        ts.finetune(model, data, FINETUNE, progress=False, description=f"finetune {name}")
        after = evaluate_accuracy(model, test)
        table[name] = {"accuracy_pruned": pruned, "accuracy_finetuned": after, "prune_seconds": round(score_s, 2),
                       "nonzeros": count_nonzeros(model)}
        print(f"{name:20s} pruned {100 * pruned:6.2f}%  fine-tuned {100 * after:6.2f}%  ({score_s:.1f}s)", flush=True)

    rand = table["random"]
    targets = {}
    for name, row in table.items():
        if name == "random":
            continue
        targets[f"{name}_beats_random"] = {
            "value": round(100 * row["accuracy_finetuned"], 2),
            "bar": f"> random {100 * rand['accuracy_finetuned']:.2f}",
            "met": row["accuracy_finetuned"] > rand["accuracy_finetuned"],
        }
    targets["all_beat_random"] = {"value": sum(t["met"] for t in targets.values()), "bar": f"= {len(targets)}",
                                  "met": all(t["met"] for t in targets.values())}
    path = write_result(
        "prune_criteria",
        metrics={"sparsity": SPARSITY, "threads": THREADS, "criteria": table},
        baseline={"accuracy": base_acc, "nonzeros": count_nonzeros(base), "cached": cached, "train": LENET300_MNIST},
        targets=targets,
        wall_s=timer.seconds,
        notes="one-shot global pruning of fc1, fc2, fc3 (biases kept); same 1-epoch fine-tune for every criterion",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
