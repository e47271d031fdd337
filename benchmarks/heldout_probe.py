"""heldout_probe: every technique of the architecture matrix on 68 models the matrix does not list (issue 20, acceptance 5).

The models are :data:`_heldout_models.MODELS` (Hugging Face families the matrix leaves out, everyday PyTorch
blocks and the situations users bring: wrappers, bfloat16, frozen parameters, optional arguments). Each is run
exactly as ``python -m torchslim.testing.matrix --model _heldout_models:NAME`` runs a model of one's own:
channel/head pruning, unstructured and 2:4 pruning, folding, static int8 + ONNX export + ONNX Runtime,
factorization and weight sharing with a ``.tslim`` round trip, each checked by numbers
(:mod:`torchslim.testing.matrix`). A cell works, or refuses naming a layer with the model bit-identical, or fails
(a crash, a broken model, wrong numbers, parameters unaccounted for). Target: no failing cell.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/heldout_probe.py``
"""

from __future__ import annotations

import os
import sys
import warnings
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Timer, git_commit, write_result
from _heldout_models import MODELS

from torchslim.testing.matrix import _factory, run_matrix, table

NAME = "heldout_probe"


def main() -> None:
    timer = Timer()
    extra = {f"heldout:{name}": _factory(f"_heldout_models:{name}") for name in MODELS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the accuracy guard's warnings on random weights: the cells say what counts
        outcomes = run_matrix([], None, extra=extra)
    rendered = table(outcomes)
    print(rendered)
    counts = Counter(o.status for o in outcomes)
    not_working = {f"{o.model} / {o.technique}": f"{o.status}: {o.message}" for o in outcomes if o.status != "works"}
    for cell, why in not_working.items():
        print(f"- {cell}: {why[:300]}")
    metrics = {
        "models": len(MODELS), "cells": len(outcomes), "works": counts["works"], "refused": counts["refused"],
        "failed": counts["FAILED"], "not_working": not_working,
        "cells_by_model": {o.model: {} for o in outcomes},
        "table": rendered.splitlines(),
    }
    for o in outcomes:
        metrics["cells_by_model"][o.model][o.technique] = o.cell()
    targets = {"no_failed_cell": {"value": counts["FAILED"], "bar": 0, "met": counts["FAILED"] == 0}}
    notes = f"commit {git_commit()}; tiny random models and inputs, CPU; the checks are those of torchslim.testing.matrix"
    path = write_result(NAME, metrics=metrics, targets=targets, wall_s=timer.seconds, notes=notes)
    print(f"{len(outcomes)} cells: {counts['works']} work, {counts['refused']} refused, {counts['FAILED']} FAILED; "
          f"written {path} in {timer.seconds:.1f} s")


if __name__ == "__main__":
    main()
