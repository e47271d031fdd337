"""kd_recovery: does distillation from the unpruned ResNet-20 heal a structurally pruned one better than plain fine-tuning?

The shared trained ResNet-20 on Fashion-MNIST (``benchmarks/_baselines.py``) is
structurally pruned to at most half its MACs exactly as ``prune_structured_resnet``
prunes it (3 of the 7 shape-preserving residual blocks, then channels, widths
multiples of 8), then healed two ways from the same pruned weights, for the same
epochs on the same images with the same optimiser: plain fine-tuning
(cross-entropy) and distillation from the unpruned model (soft targets T=4,
alpha=0.5, ``ts.distill``). Accuracy on the 10,000 test images.

Target: distilled accuracy >= plain fine-tuning accuracy.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/kd_recovery.py`` (alone: ~10 minutes on 2 cores)
"""

from __future__ import annotations

import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _baselines import RESNET20_FMNIST, resnet20_fmnist
from _common import Timer, write_result
from prune_structured_resnet import OURS, calibration_batches

import torchslim as ts
from torchslim.measure import count_macs, count_params, evaluate_accuracy
from torchslim.prune.structured import prune_structured_

EPOCHS = int(os.environ.get("KD_RECOVERY_EPOCHS", 3))
TEMPERATURE, ALPHA = 4.0, 0.5
HEAL = {"epochs": EPOCHS, "batch_size": 128, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True,
        "weight_decay": 5e-4, "schedule": "cosine", "seed": 0}


def main() -> None:
    timer = Timer()
    torch.set_num_threads(int(os.environ.get("KD_THREADS", 2)))  # run it alone
    teacher, data = resnet20_fmnist()
    teacher.eval()
    test = data.loader("test", 1000)
    x = data.example_input()
    teacher_acc = evaluate_accuracy(teacher, test)

    pruned = copy.deepcopy(teacher)
    report = prune_structured_(pruned, OURS, example_input=x, calibration=calibration_batches(data))
    one_shot = evaluate_accuracy(pruned, test)

    plain, healed = pruned, copy.deepcopy(pruned)
    ts.finetune(plain, data, HEAL, progress=False, description="plain fine-tune")
    plain_acc = evaluate_accuracy(plain, test)
    ts.distill_from(healed, copy.deepcopy(teacher), data, {**HEAL, "temperature": TEMPERATURE, "alpha": ALPHA},
               progress=False, description="distillation from the unpruned model")
    kd_acc = evaluate_accuracy(healed, test)

    metrics = {
        "teacher_test_accuracy": teacher_acc,
        "pruned_one_shot_accuracy": one_shot,
        "plain_finetune_test_accuracy": plain_acc,
        "distilled_test_accuracy": kd_acc,
        "kd_minus_plain_pt": 100 * (kd_acc - plain_acc),
        "macs_ratio": report.meta["macs_before"] / report.meta["macs_after"],
        "teacher_macs": report.meta["macs_before"],
        "pruned_macs": count_macs(healed, x),
        "teacher_params": count_params(teacher),
        "pruned_params": count_params(healed),
        "removed_blocks": [l.name for l in report.layers if "influence" in l.details],
        "prune_config": OURS,
        "heal": HEAL,
        "temperature": TEMPERATURE,
        "alpha": ALPHA,
    }
    path = write_result(
        "kd_recovery",
        metrics=metrics,
        baseline={"teacher_test_accuracy": teacher_acc, "teacher_recipe": RESNET20_FMNIST},
        targets={"kd_ge_plain": {"value": kd_acc, "bar": f">= {plain_acc:.4f} (plain fine-tuning)", "met": kd_acc >= plain_acc}},
        wall_s=timer.seconds,
        notes=(
            f"ResNet-20 Fashion-MNIST baseline pruned structurally ({metrics['macs_ratio']:.2f}x fewer MACs: blocks "
            f"{', '.join(metrics['removed_blocks'])} removed, then channels), healed from the same pruned weights for {EPOCHS} "
            "epochs each on the full training split (SGD Nesterov lr 0.01 cosine, wd 5e-4, batch 128): plain cross-entropy vs "
            f"distillation from the unpruned model (T={TEMPERATURE:g}, alpha={ALPHA}). One run, seed 0, 2 threads."
        ),
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
