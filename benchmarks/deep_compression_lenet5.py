"""deep_compression_lenet5: the Deep Compression pipeline on LeNet-5 (Caffe) / MNIST, baseline trained here.

Targets (issue 7): >= 39x smaller than dense fp32 at test error <= 0.80 % (the
paper: 39x, 0.80 -> 0.74 %), pipeline under 20 minutes on 2 cores, and the
.tslim file loading back to bit-identical outputs. Recipe and bars: ``_deep_compression.BENCHMARKS``.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/deep_compression_lenet5.py``
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    from _deep_compression import main

    main("deep_compression_lenet5")
