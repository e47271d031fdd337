"""deep_compression_lenet5: the Deep Compression pipeline on LeNet-5 (Caffe) / MNIST, baseline trained here.

Targets (issue 7): >= 39x smaller than dense fp32 at test error <= 0.80 % (the
paper: 39x, 0.80 -> 0.74 %), pipeline under 20 minutes on 2 cores, and the
.tslim file loading back to bit-identical outputs.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/deep_compression_lenet5.py``
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _deep_compression import run  # noqa: E402


def main() -> None:
    run(
        "deep_compression_lenet5",
        "deep_compression_lenet5.yaml",
        ratio_bar=39.0,
        error_bar=0.80,
        paper={"compression_ratio": 39, "test_error_pct": 0.74, "baseline_error_pct": 0.80, "weights_kept_pct": 8},
    )


if __name__ == "__main__":
    main()
