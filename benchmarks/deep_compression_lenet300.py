"""deep_compression_lenet300: the Deep Compression pipeline on LeNet-300-100 / MNIST, baseline trained here.

Targets (issue 7): >= 40x smaller than dense fp32 at test error <= 1.64 % (the
paper: 40x, 1.64 -> 1.58 %), pipeline under 20 minutes on 2 cores, and the
.tslim file loading back to bit-identical outputs.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/deep_compression_lenet300.py``
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _deep_compression import run  # noqa: E402


def main() -> None:
    run(
        "deep_compression_lenet300",
        "deep_compression_lenet300.yaml",
        ratio_bar=40.0,
        error_bar=1.64,
        paper={"compression_ratio": 40, "test_error_pct": 1.58, "baseline_error_pct": 1.64, "weights_kept_pct": 8},
    )


if __name__ == "__main__":
    main()
