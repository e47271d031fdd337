"""prune_structured_resnet: ResNet-20 on Fashion-MNIST at 2x fewer MACs, ours vs Torch-Pruning, one run.

Both start from the same trained baseline (benchmarks/_baselines.py), reach at
most half its MACs (torch FLOP counter), use widths rounded to multiples of 8,
and get the same fine-tune. Ours removes depth and width together: 3 of the 7
shape-preserving residual blocks (lowest block influence on 8 training batches),
then channels (group L2 norm) down to the MAC target; at equal MACs fewer layers
run faster on this CPU than thinner ones (benchmarks/prune_latency_shapes.py).
Torch-Pruning's MetaPruner prunes width only. Latency: eager PyTorch and ONNX Runtime, batch 64,
2 threads, median of repeated runs, all models timed side by side in this process.

Two phases, run together by default:
  --phase train DIR    baseline, both prunings and both fine-tunes (on CUDA when
                       available), checkpoints written to DIR;
  --phase measure DIR  loads them on the CPU, measures accuracy and latency, writes the results.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _baselines import RESNET20_FMNIST, resnet20_fmnist
from _common import Timer, interleaved, write_result

from torchslim.data import DataBundle, load_data
from torchslim.deploy import measure_ort_latency
from torchslim.measure import count_macs, evaluate_accuracy, measure_latency
from torchslim.prune.structured import prune_structured_
from torchslim.train import finetune, load_checkpoint, save_checkpoint
from torchslim.zoo import create_model

FINETUNE = {"epochs": 5, "batch_size": 128, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True,
            "weight_decay": 5e-4, "schedule": "cosine", "seed": 0}
MACS_TARGET = 0.5
REMOVE_BLOCKS = 3 / 7
OURS = {"macs_target": MACS_TARGET, "remove_blocks": REMOVE_BLOCKS, "keep_first_last": False, "criterion": "l2"}
THREADS, BATCH, RUNS = 2, 64, 50


def torch_pruning_at(model: torch.nn.Module, x: torch.Tensor, macs0: int, ratio: float | None = None) -> tuple[torch.nn.Module, float]:
    """Torch-Pruning's MetaPruner with GroupMagnitudeImportance (GroupNorm, p=2), ratio bisected to <= the MAC target."""
    import torch_pruning as tp

    def pruned(ratio: float) -> torch.nn.Module:
        m = copy.deepcopy(model).eval()
        imp = tp.importance.GroupMagnitudeImportance(p=2)
        pruner = tp.pruner.MetaPruner(m, x, importance=imp, pruning_ratio=ratio, ignored_layers=[m.fc], round_to=8)
        pruner.step()
        return m

    if ratio is not None:
        return pruned(ratio), ratio
    lo, hi = 0.0, 0.9
    for _ in range(12):
        mid = (lo + hi) / 2
        if count_macs(pruned(mid), x) <= MACS_TARGET * macs0:
            hi = mid
        else:
            lo = mid
    return pruned(hi), hi


def calibration_batches(data: DataBundle, device: torch.device | str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first 8 training batches of 128, in order: block influence is scored on them."""
    x, y = data.train.x, data.train.y
    return [(x[i * 128:(i + 1) * 128].to(device), y[i * 128:(i + 1) * 128].to(device)) for i in range(8)]


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_phase(out: Path) -> None:
    """Baseline, both prunings, both fine-tunes; checkpoints into ``out``."""
    timer = Timer()
    dev = _device()
    base, data = resnet20_fmnist(device=dev)
    base.eval()
    x = data.example_input().to(dev)
    macs0 = count_macs(base, x)
    ours = copy.deepcopy(base)
    report = prune_structured_(ours, OURS, example_input=x, calibration=calibration_batches(data, dev))
    removed = [l.name for l in report.layers if "influence" in l.details]
    one_shot = {"torchslim": evaluate_accuracy(ours, data.loader("test", 1000))}
    finetune(ours, data, FINETUNE, description="ours fine-tune")
    tpm, tp_ratio = torch_pruning_at(base, x, macs0)
    one_shot["torch_pruning"] = evaluate_accuracy(tpm, data.loader("test", 1000))
    finetune(tpm, data, FINETUNE, description="torch-pruning fine-tune")
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(base.cpu(), out / "baseline")
    save_checkpoint(ours.cpu(), out / "torchslim", {"widths": {l.name: l.details["width_after"] for l in report.layers if "width_after" in l.details},
                                                    "removed_blocks": removed})
    save_file({k: v.detach().cpu().contiguous() for k, v in tpm.state_dict().items()}, str(out / "torch_pruning.safetensors"))
    (out / "train.json").write_text(json.dumps({"tp_ratio": tp_ratio, "one_shot": one_shot, "device": str(dev),
                                                "train_seconds": round(timer.seconds, 1),
                                                "device_name": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"}))


def measure_phase(out: Path) -> None:
    """Load the three models on the CPU; accuracy, MACs, eager and ONNX Runtime latency side by side."""
    timer = Timer()
    torch.set_num_threads(THREADS)
    info = json.loads((out / "train.json").read_text())
    data = load_data("fashion-mnist")
    x = data.example_input()
    test = data.loader("test", 1000)
    build = lambda: create_model("resnet_cifar", depth=20, in_channels=1, num_classes=10)  # noqa: E731
    base = build()
    load_checkpoint(base, out / "baseline")
    ours = build()
    extra = load_checkpoint(ours, out / "torchslim")
    widths, removed = extra["widths"], extra.get("removed_blocks", [])
    macs0 = count_macs(base.eval(), x)
    tpm, _ = torch_pruning_at(base, x, macs0, ratio=info["tp_ratio"])  # replay the same pruning, then its fine-tuned weights
    tpm.load_state_dict(load_file(str(out / "torch_pruning.safetensors")))

    models = {"baseline": base.eval(), "torchslim": ours.eval(), "torch_pruning": tpm.eval()}
    rows = {k: {"accuracy": evaluate_accuracy(m, test), "macs": count_macs(m, x), "params": sum(p.numel() for p in m.parameters())}
            for k, m in models.items()}
    timed = {}
    for k, m in models.items():  # interleaved rounds: the same machine state for every model
        timed[("eager", k)] = lambda m=m: measure_latency(m, x, batch_size=BATCH, threads=THREADS, runs=RUNS)
        timed[("ort", k)] = lambda m=m: measure_ort_latency(m, x, batch_size=BATCH, threads=THREADS, runs=RUNS)
    med, _ = interleaved(timed, 3)
    for k in rows:
        rows[k]["eager_ms"] = med[("eager", k)]
        rows[k]["ort_ms"] = med[("ort", k)]

    b, o, t = rows["baseline"], rows["torchslim"], rows["torch_pruning"]
    drop = 100 * (b["accuracy"] - o["accuracy"])
    tp_drop = 100 * (b["accuracy"] - t["accuracy"])
    eager_speedup, ort_speedup = b["eager_ms"] / o["eager_ms"], b["ort_ms"] / o["ort_ms"]
    metrics = {
        "accuracy": o["accuracy"], "accuracy_one_shot": info["one_shot"]["torchslim"], "drop_pt": round(drop, 3),
        "macs": o["macs"], "macs_ratio": round(macs0 / o["macs"], 3), "params": o["params"],
        "eager_ms": o["eager_ms"], "ort_ms": o["ort_ms"],
        "eager_speedup": round(eager_speedup, 3), "ort_speedup": round(ort_speedup, 3), "config": OURS,
        "removed_blocks": removed, "widths": widths,
    }
    peers = {"torch_pruning": {
        "version": "1.6.1", "importance": "GroupMagnitudeImportance(p=2), round_to=8, fc ignored",
        "pruning_ratio": round(info["tp_ratio"], 4), "accuracy": t["accuracy"], "accuracy_one_shot": info["one_shot"]["torch_pruning"],
        "drop_pt": round(tp_drop, 3), "macs_ratio": round(macs0 / t["macs"], 3), "params": t["params"],
        "eager_speedup": round(b["eager_ms"] / t["eager_ms"], 3), "ort_speedup": round(b["ort_ms"] / t["ort_ms"], 3),
    }}
    targets = {
        "drop_le_0.5pt": {"value": round(drop, 3), "bar": 0.5, "met": drop <= 0.5},
        "drop_le_torch_pruning_plus_0.1": {"value": round(drop, 3), "bar": round(tp_drop + 0.1, 3), "met": drop <= tp_drop + 0.1},
        "eager_speedup_ge_1.6": {"value": round(eager_speedup, 3), "bar": 1.6, "met": eager_speedup >= 1.6},
        "ort_speedup_ge_1.6": {"value": round(ort_speedup, 3), "bar": 1.6, "met": ort_speedup >= 1.6},
    }
    path = write_result(
        "prune_structured_resnet", metrics=metrics, baseline=b, peers=peers, targets=targets,
        wall_s=timer.seconds + info.get("train_seconds", 0.0),  # train phase (recorded) + this phase
        notes=(f"training (baseline {RESNET20_FMNIST['epochs']} epochs, cached by benchmarks/_baselines.py; fine-tune "
               f"{FINETUNE['epochs']} epochs each) ran on {info['device_name']}"
               + (f" in {info['train_seconds']:.0f} s" if "train_seconds" in info else " (train time not recorded: wall_s is the measure phase alone)")
               + f"; accuracy and latency measured on this machine's CPU: batch {BATCH}, {THREADS} threads, "
               f"median of 3 interleaved rounds of {RUNS} runs"),
    )
    print(path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=("all", "train", "measure"), default="all")
    parser.add_argument("dir", nargs="?", default=None, help="checkpoint folder shared by the phases")
    args = parser.parse_args()
    out = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="prune_structured_resnet-"))
    if args.phase in ("all", "train"):
        train_phase(out)
    if args.phase in ("all", "measure"):
        measure_phase(out)


if __name__ == "__main__":
    main()
