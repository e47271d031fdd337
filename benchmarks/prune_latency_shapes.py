"""prune_latency_shapes: where do the milliseconds go when ResNet-20 loses half its MACs?

ResNet-20 (Fashion-MNIST shape, 1x28x28, random weights: latency does not depend on
the values) pruned to about half its MACs in different ways, all with widths
rounded to multiples of 8 unless stated: channels only (layer scope, as
``prune_structured_resnet``), channels rounded to 16, whole residual blocks
removed (2, 3 or 4 of the 7 shape-preserving ones), and blocks then channels down
to <= 0.5 of the MACs. Latency: eager PyTorch and ONNX Runtime fp32, batch 64,
2 threads, median of 30 runs, three interleaved rounds, all in one process.

No target: this is the measurement behind the structured-pruning plan (issue 3):
at equal MACs, fewer layers run faster than thinner layers on this CPU.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/prune_latency_shapes.py`` (alone: timings)
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer, interleaved, write_result

from torchslim.deploy import measure_ort_latency
from torchslim.measure import count_macs, measure_latency
from torchslim.prune.structured import prune_structured_
from torchslim.zoo import create_model

THREADS, BATCH, RUNS, ROUNDS = 2, 64, 30, 3


def main() -> None:
    timer = Timer()
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    x = torch.randn(1, 1, 28, 28)
    calib = [(torch.randn(64, 1, 28, 28), torch.zeros(64, dtype=torch.long)) for _ in range(2)]
    base = create_model("resnet_cifar", depth=20, in_channels=1, num_classes=10).eval()
    macs0 = count_macs(base, x)

    def channels(model: torch.nn.Module, target: float, **kw: object) -> torch.nn.Module:
        m = copy.deepcopy(model)
        prune_structured_(m, {"granularity": "channel", "macs_target": target, **kw}, example_input=x, calibration=calib)
        return m.eval()

    def blocks(model: torch.nn.Module, n: int) -> torch.nn.Module:
        m = copy.deepcopy(model)
        prune_structured_(m, {"granularity": "block", "sparsity": n / 7}, example_input=x, calibration=calib)
        return m.eval()

    variants = {"dense": base, "channels": channels(base, 0.5), "channels_round16": channels(base, 0.5, round_to=16)}
    for n in (2, 3, 4):
        b = blocks(base, n)
        variants[f"blocks{n}"] = b
        if count_macs(b, x) > 0.5 * macs0:
            variants[f"blocks{n}+channels"] = channels(b, 0.5 * macs0 / count_macs(b, x) * 0.999)
    timed = {}
    for name, m in variants.items():
        timed[("eager", name)] = lambda m=m: measure_latency(m, x, batch_size=BATCH, threads=THREADS, runs=RUNS)
        timed[("ort", name)] = lambda m=m: measure_ort_latency(m, x, batch_size=BATCH, threads=THREADS, runs=RUNS)
    med, _ = interleaved(timed, ROUNDS)
    e0, o0 = med[("eager", "dense")], med[("ort", "dense")]
    metrics = {}
    for name, m in variants.items():
        e, o = med[("eager", name)], med[("ort", name)]
        metrics[name] = {
            "macs_ratio": count_macs(m, x) / macs0,
            "layers": sum(1 for mod in m.modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear))),
            "eager_ms": e,
            "ort_ms": o,
            "eager_speedup": e0 / e,
            "ort_speedup": o0 / o,
        }
        print(f"{name:20s} MACs {metrics[name]['macs_ratio']:.3f}  eager {e:6.2f} ms ({e0 / e:.2f}x)  "
              f"ORT {o:6.2f} ms ({o0 / o:.2f}x)", flush=True)
    write_result(
        "prune_latency_shapes",
        metrics=metrics,
        wall_s=timer.seconds,
        notes=f"random-weight ResNet-20 1x28x28; batch {BATCH}, {THREADS} threads, median of {RUNS} runs x {ROUNDS} "
        "interleaved rounds; block choice by block influence on random inputs.",
    )


if __name__ == "__main__":
    main()
