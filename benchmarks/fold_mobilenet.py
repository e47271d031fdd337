"""fold_mobilenet: BatchNorm folding of the packaged ImageNet MobileNetV2.

Inputs: the two scikit-learn sample photos (china.jpg, flower.jpg), each as
centre/corner crops and horizontal flips at 224×224, ImageNet-normalised
(16 images). Figures: max relative output difference of the folded model
(max |y_fold − y| / max |y| over the logits), top-1 agreement, and eager batch-1
latency (2 threads) of the original and folded models measured side by side in
interleaved rounds.

Targets: max relative difference ≤ 1e-4; eager batch-1 speed-up ≥ 1.1×.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from _common import Timer, interleaved, write_result

from torchslim.fold import fold_
from torchslim.measure import count_macs, count_params, measure_latency
from torchslim.zoo import create_model
from torchslim.zoo.mobilenet import IMAGENET_MEAN, IMAGENET_STD

THREADS, ROUNDS, RUNS = 2, 7, 30


def photo_batch() -> torch.Tensor:
    """16 real 224×224 views: 2 photos × (centre + 3 corner crops) × (plain, flipped)."""
    from sklearn.datasets import load_sample_image

    views = []
    for name in ("china.jpg", "flower.jpg"):
        img = torch.from_numpy(np.array(load_sample_image(name))).permute(2, 0, 1).float()[None] / 255
        h, w = img.shape[-2:]
        s = 256 / min(h, w)
        img = F.interpolate(img, size=(round(h * s), round(w * s)), mode="bilinear", antialias=True, align_corners=False)
        H, W = img.shape[-2:]
        for top, left in (((H - 224) // 2, (W - 224) // 2), (0, 0), (H - 224, W - 224), (0, W - 224)):
            crop = img[..., top : top + 224, left : left + 224]
            views += [crop, crop.flip(-1)]
    x = torch.cat(views)
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def main() -> None:
    timer = Timer()
    torch.manual_seed(0)
    base = create_model("mobilenet_v2", pretrained=True).eval()
    folded = copy.deepcopy(base)
    report = fold_(folded)
    x = photo_batch()
    with torch.no_grad():
        y, yf = base(x), folded(x)
    max_rel = float((yf - y).abs().max() / y.abs().max())
    agree = float((yf.argmax(1) == y.argmax(1)).float().mean())
    one = x[:1]
    medians, _ = interleaved({  # interleaved so machine load affects both alike
        "base": lambda: measure_latency(base, one, batch_size=1, threads=THREADS, runs=RUNS, warmup=3),
        "folded": lambda: measure_latency(folded, one, batch_size=1, threads=THREADS, runs=RUNS, warmup=3),
    }, ROUNDS)
    b, f = medians["base"], medians["folded"]
    speedup = b / f
    metrics = {
        "folded_layers": len(report.layers),
        "skipped_patterns": len(report.skipped),
        "max_relative_output_difference": max_rel,
        "top1_agreement": agree,
        "images": int(x.shape[0]),
        "latency_ms_folded": f,
        "params_folded": count_params(folded),
        "macs_folded": count_macs(folded, one),
        "speedup_eager_batch1": speedup,
        "latency_setting": f"eager PyTorch, batch 1, {THREADS} threads, median of {ROUNDS} interleaved rounds x {RUNS} runs",
    }
    baseline = {"latency_ms": b, "params": count_params(base), "macs": count_macs(base, one)}
    targets = {
        "max_relative_output_difference": {"value": max_rel, "bar": "<= 1e-4", "met": max_rel <= 1e-4},
        "speedup_eager_batch1": {"value": speedup, "bar": ">= 1.1", "met": speedup >= 1.1},
    }
    path = write_result("fold_mobilenet", metrics=metrics, baseline=baseline, targets=targets, wall_s=timer.seconds)
    print(f"folded {len(report.layers)} BatchNorms; max rel diff {max_rel:.2e}; top-1 agreement {agree:.3f}")
    print(f"batch-1 eager: {b:.2f} ms -> {f:.2f} ms ({speedup:.2f}x); written {path}")


if __name__ == "__main__":
    main()
