"""quant_mixed: mixed-precision vs uniform weight bits at equal bytes, ResNet-20 on Fashion-MNIST.

The trained ResNet-20 baseline (benchmarks/_baselines.py) is quantized weight-only
(per-channel symmetric, BatchNorm folded, MSE-optimal clipping), post-training, no
fine-tuning: once with the same bits in every layer (2, 3 and 4 bits), once with per-layer
bits from ``mixed_precision_`` (sensitivity = output KL on 4 training batches of 128,
candidates 2-8 bits, exact allocation) under the same weight-byte budget. Accuracy on the
whole test set; the chosen bits per layer are recorded.
"""

from __future__ import annotations

import copy
import itertools
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer, write_result

from torchslim.measure import evaluate_accuracy, num_threads
from torchslim.quant import mixed_precision_, quantize_

SEED = 0
BUDGETS = (2, 3, 4)
CANDIDATES = [2, 3, 4, 5, 6, 8]
BASE = {"mode": "weight_only", "weight": {"observer": "mse"}}


def main() -> None:
    timer = Timer()
    from _baselines import RESNET20_FMNIST, resnet20_fmnist

    with num_threads(1):
        base, data = resnet20_fmnist()
        base.eval()
        test = data.loader("test", 1000)
        calib = list(itertools.islice(iter(data.loader("train", 128, shuffle=True, seed=123)), 4))
        metrics: dict[str, Any] = {"float_accuracy": evaluate_accuracy(base, test)}
        targets: dict[str, Any] = {}
        for bits in BUDGETS:
            uniform = copy.deepcopy(base)
            rep_u = quantize_(uniform, {**BASE, "weight": {**BASE["weight"], "bits": bits}})
            acc_u = evaluate_accuracy(uniform, test)
            mixed = copy.deepcopy(base)
            rep_m = mixed_precision_(
                mixed,
                {"average_bits": bits, "candidate_bits": CANDIDATES, "quantize": BASE, "sensitivity_batches": 4},
                calibration=calib,
            )
            acc_m = evaluate_accuracy(mixed, test)
            uniform_bytes = sum(layer.params * bits / 8 for layer in rep_u.layers)
            metrics[f"budget_{bits}bit"] = {
                "uniform_accuracy": acc_u,
                "mixed_accuracy": acc_m,
                "uniform_weight_bytes": uniform_bytes,
                "mixed_weight_bytes": rep_m.meta["weight_bytes"],
                "mixed_bits": rep_m.meta["bits"],
            }
            targets[f"mixed_minus_uniform_{bits}bit_pt"] = {
                "value": round(100 * (acc_m - acc_u), 3), "bar": 0.0, "met": bool(acc_m >= acc_u)}
            print(bits, metrics[f"budget_{bits}bit"], flush=True)
            targets[f"mixed_bytes_within_budget_{bits}bit"] = {
                "value": rep_m.meta["weight_bytes"], "bar": uniform_bytes, "met": bool(rep_m.meta["weight_bytes"] <= uniform_bytes)}
    path = write_result(
        "quant_mixed",
        metrics=metrics,
        baseline={"float_accuracy": metrics["float_accuracy"], "recipe": RESNET20_FMNIST},
        targets=targets,
        seed=SEED,
        wall_s=timer.seconds,
        notes="weight-only PTQ, no fine-tuning; bytes = sum(params * bits) / 8 over quantized weights (scales excluded, equal count in both).",
    )
    print(path)
    for key, t in targets.items():
        print(f"{key}: {t['value']} (bar {t['bar']}) {'met' if t['met'] else 'MISSED'}")


if __name__ == "__main__":
    main()
