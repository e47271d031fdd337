"""prune_structured_resnet: ResNet-20 on Fashion-MNIST at 2x fewer MACs, ours vs Torch-Pruning, one run.

Both start from the same trained baseline (benchmarks/_baselines.py), reach at
most half its MACs (torch FLOP counter), use widths rounded to multiples of 8,
and get the same fine-tune. Latency: eager PyTorch and ONNX Runtime, batch 64,
2 threads, median of repeated runs, all models timed side by side in this process.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _baselines import resnet20_fmnist  # noqa: E402
from _common import Timer, write_result  # noqa: E402

from torchslim.measure import count_macs, evaluate_accuracy, measure_latency  # noqa: E402
from torchslim.measure.latency import measure_ort_latency  # noqa: E402
from torchslim.prune.structured import prune_structured_  # noqa: E402
from torchslim.train import finetune  # noqa: E402

FINETUNE = {"epochs": 3, "batch_size": 128, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True,
            "weight_decay": 5e-4, "schedule": "cosine", "seed": 0}
MACS_TARGET = 0.5
THREADS, BATCH, RUNS = 2, 64, 50


def torch_pruning_at(model: torch.nn.Module, x: torch.Tensor, macs0: int) -> tuple[torch.nn.Module, float]:
    """Torch-Pruning's MetaPruner with GroupMagnitudeImportance (GroupNorm, p=2), ratio bisected to <= the MAC target."""
    import torch_pruning as tp

    def pruned(ratio: float) -> torch.nn.Module:
        m = copy.deepcopy(model).eval()
        imp = tp.importance.GroupMagnitudeImportance(p=2)
        pruner = tp.pruner.MetaPruner(m, x, importance=imp, pruning_ratio=ratio, ignored_layers=[m.fc], round_to=8)
        pruner.step()
        return m

    lo, hi = 0.0, 0.9
    for _ in range(12):
        mid = (lo + hi) / 2
        if count_macs(pruned(mid), x) <= MACS_TARGET * macs0:
            hi = mid
        else:
            lo = mid
    return pruned(hi), hi


def main() -> None:
    timer = Timer()
    base, data = resnet20_fmnist()
    base.eval()
    x = data.example_input()
    test = data.loader("test", 1000)
    macs0 = count_macs(base, x)
    acc0 = evaluate_accuracy(base, test)

    ours = copy.deepcopy(base)
    report = prune_structured_(ours, {"macs_target": MACS_TARGET, "keep_first_last": False, "criterion": "l2"}, example_input=x)
    ours_oneshot = evaluate_accuracy(ours, test)
    finetune(ours, data, FINETUNE, description="ours fine-tune")

    tpm, tp_ratio = torch_pruning_at(base, x, macs0)
    tp_oneshot = evaluate_accuracy(tpm, test)
    finetune(tpm, data, FINETUNE, description="torch-pruning fine-tune")

    rows = {}
    for name, m in (("baseline", base), ("torchslim", ours), ("torch_pruning", tpm)):
        m.eval()
        rows[name] = {
            "accuracy": evaluate_accuracy(m, test),
            "macs": count_macs(m, x),
            "params": sum(p.numel() for p in m.parameters()),
        }
    eager = {k: [] for k in rows}
    ort = {k: [] for k in rows}
    models = {"baseline": base, "torchslim": ours, "torch_pruning": tpm}
    for _ in range(3):  # interleaved rounds: the same machine state for every model
        for k, m in models.items():
            eager[k].append(measure_latency(m, x, batch_size=BATCH, threads=THREADS, runs=RUNS).median_ms)
            ort[k].append(measure_ort_latency(m, x, batch_size=BATCH, threads=THREADS, runs=RUNS).median_ms)
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    for k in rows:
        rows[k]["eager_ms"] = med(eager[k])
        rows[k]["ort_ms"] = med(ort[k])

    drop = 100 * (rows["baseline"]["accuracy"] - rows["torchslim"]["accuracy"])
    tp_drop = 100 * (rows["baseline"]["accuracy"] - rows["torch_pruning"]["accuracy"])
    eager_speedup = rows["baseline"]["eager_ms"] / rows["torchslim"]["eager_ms"]
    ort_speedup = rows["baseline"]["ort_ms"] / rows["torchslim"]["ort_ms"]
    metrics = {
        "accuracy": rows["torchslim"]["accuracy"],
        "accuracy_one_shot": ours_oneshot,
        "drop_pt": round(drop, 3),
        "macs": rows["torchslim"]["macs"],
        "macs_ratio": macs0 / rows["torchslim"]["macs"],
        "params": rows["torchslim"]["params"],
        "eager_ms": rows["torchslim"]["eager_ms"],
        "ort_ms": rows["torchslim"]["ort_ms"],
        "eager_speedup": round(eager_speedup, 3),
        "ort_speedup": round(ort_speedup, 3),
        "widths": {l.name: l.details["width_after"] for l in report.layers if l.name.endswith("conv1") or l.name.endswith("conv2")},
    }
    peers = {
        "torch_pruning": {
            "version": "1.6.1",
            "importance": "GroupMagnitudeImportance(p=2), round_to=8, fc ignored",
            "pruning_ratio": round(tp_ratio, 4),
            "accuracy": rows["torch_pruning"]["accuracy"],
            "accuracy_one_shot": tp_oneshot,
            "drop_pt": round(tp_drop, 3),
            "macs_ratio": macs0 / rows["torch_pruning"]["macs"],
            "params": rows["torch_pruning"]["params"],
            "eager_speedup": round(rows["baseline"]["eager_ms"] / rows["torch_pruning"]["eager_ms"], 3),
            "ort_speedup": round(rows["baseline"]["ort_ms"] / rows["torch_pruning"]["ort_ms"], 3),
        }
    }
    targets = {
        "drop_le_0.5pt": {"value": round(drop, 3), "bar": 0.5, "met": drop <= 0.5},
        "drop_le_torch_pruning_plus_0.1": {"value": round(drop, 3), "bar": round(tp_drop + 0.1, 3), "met": drop <= tp_drop + 0.1},
        "eager_speedup_ge_1.6": {"value": round(eager_speedup, 3), "bar": 1.6, "met": eager_speedup >= 1.6},
        "ort_speedup_ge_1.6": {"value": round(ort_speedup, 3), "bar": 1.6, "met": ort_speedup >= 1.6},
    }
    path = write_result(
        "prune_structured_resnet",
        metrics=metrics,
        baseline=rows["baseline"],
        peers=peers,
        targets=targets,
        wall_s=timer.seconds,
        notes=f"fine-tune {FINETUNE['epochs']} epochs for both; latency batch {BATCH}, {THREADS} threads, median of 3x{RUNS} runs",
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
