"""deep_compression_lenet300: the Deep Compression pipeline on LeNet-300-100 / MNIST, baseline trained here.

Targets (issue 7): >= 40x smaller than dense fp32 at test error <= 1.64 % (the
paper: 40x, 1.64 -> 1.58 %), pipeline under 20 minutes on 2 cores, and the
.tslim file loading back to bit-identical outputs. Recipe and bars: ``_deep_compression.BENCHMARKS``.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/deep_compression_lenet300.py``
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    from _deep_compression import main

    main("deep_compression_lenet300")
