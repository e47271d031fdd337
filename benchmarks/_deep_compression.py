"""Shared body of the ``deep_compression_*`` benchmarks: run a shipped recipe end to end and tabulate the file.

The recipe trains the baseline from scratch, prunes, shares weights (k-means,
centroids fine-tuned) and Huffman-codes the model into ``model.tslim``. The
compression ratio is the dense fp32 bytes of the trained baseline over the
bytes of the file on disk. The same model is also written with fixed-width
indices (no Huffman) to show what Huffman coding adds, and the file is loaded
back and checked to give the same logits, bit for bit, on the whole test set.
"""

from __future__ import annotations

import copy
import json
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml
from _common import Timer, write_result

import torchslim as ts
from torchslim.encode import layer_table, read
from torchslim.encode.kmeans import remove_sharing
from torchslim.measure import logits_of
from torchslim.pipeline import run_recipe
from torchslim.recipe import parse_recipe

WALL_BAR_S = 20 * 60

#: Per benchmark: the shipped recipe, the bars of issue 7 and the paper's figures (Han et al. 2016, table 1).
BENCHMARKS: dict[str, dict[str, Any]] = {
    "deep_compression_lenet300": {
        "recipe_file": "deep_compression_lenet300.yaml",
        "ratio_bar": 40.0,
        "error_bar": 1.64,
        "paper": {"compression_ratio": 40, "test_error_pct": 1.58, "baseline_error_pct": 1.64, "weights_kept_pct": 8},
    },
    "deep_compression_lenet5": {
        "recipe_file": "deep_compression_lenet5.yaml",
        "ratio_bar": 39.0,
        "error_bar": 0.80,
        "paper": {"compression_ratio": 39, "test_error_pct": 0.74, "baseline_error_pct": 0.80, "weights_kept_pct": 8},
    },
}


def main(name: str) -> None:
    """Run the benchmark ``name`` (a key of :data:`BENCHMARKS`)."""
    run(name, **BENCHMARKS[name])


def _init_comparison(recipe: Any, out: Path, data: Any) -> dict[str, dict[str, float]]:
    """Test accuracy of the pruned model right after sharing (no fine-tuning) for each init, 2 to 4 bits.

    The paper's comparison of centroid initialisations; shared layers are the
    ones the recipe's ``share`` stage targets.
    """
    from torchslim.encode.kmeans import INITS, share_weights_
    from torchslim.measure import evaluate_accuracy
    from torchslim.pipeline import build_model
    from torchslim.train import load_checkpoint

    state = json.loads((out / "state.json").read_text())
    share_at = next(i for i, d in enumerate(state["completed"]) if d["type"] == "share")
    pruned_ckpt = out / state["completed"][share_at - 1]["checkpoint"]
    targets = recipe.stages[share_at].config.targets
    table: dict[str, dict[str, float]] = {}
    for init in INITS:
        for bits in (2, 3, 4):
            model = build_model(recipe.model, data)
            load_checkpoint(model, pruned_ckpt)
            layer_targets = None if targets is None else {k: {"bits": bits} if v is not None else None for k, v in targets.items()}
            share_weights_(model, {"bits": bits, "init": init, "targets": layer_targets})
            table.setdefault(init, {})[f"{bits}_bits"] = round(100 * evaluate_accuracy(model, data.loader("test", 1000)), 2)
    return table


def run(name: str, recipe_file: str, *, ratio_bar: float, error_bar: float, paper: dict[str, Any]) -> None:
    timer = Timer()
    text = resources.files("torchslim.recipes").joinpath(recipe_file).read_text(encoding="utf-8")
    recipe = parse_recipe(yaml.safe_load(text), source=recipe_file)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        result = run_recipe(recipe, output=out, progress=False)
        pipeline_s = timer.seconds
        before, after = result.report.before, result.report.after
        tslim = out / "model.tslim"
        file_bytes = tslim.stat().st_size
        fixed = ts.save(result.model, Path(tmp) / "fixed.tslim", coding="fixed").stat().st_size
        unshared = copy.deepcopy(result.model)
        remove_sharing(unshared)  # what pruning alone stores: the kept values at fp32 with their indices
        sparse = ts.save_sparse(unshared, Path(tmp) / "sparse")
        from torchslim.prune.sparse import sparse_file_bytes

        sparse_bytes = sparse_file_bytes(sparse.with_suffix(""))
        loaded = ts.load(tslim)
        data = ts.load_data("mnist")
        model = result.model.eval()
        identical = True
        with torch.no_grad():
            for x, _ in data.loader("test", 1000):
                identical &= torch.equal(logits_of(model(x)), logits_of(loaded(x)))
        rows = layer_table(read(tslim))
        inits = _init_comparison(recipe, out, data)
    dense = before.bytes_dense
    ratio = dense / file_bytes
    error, base_error = 100 * (1 - after.accuracy), 100 * (1 - before.accuracy)
    layers = [
        {
            "layer": r.layer,
            "weights": r.weights,
            "kept_pct": round(100 * r.kept, 2),
            "weight_bits": round(r.weight_bits, 2),
            "index_bits": round(r.index_bits, 2),
            "encoding": r.encoding,
            "bytes": r.bytes,
            "ratio": round(r.ratio, 1),
        }
        for r in rows
    ]
    stages = [
        {"stage": s.name, "seconds": round(s.seconds, 1), "accuracy": s.measurement.accuracy if s.measurement else None}
        for s in result.report.stages
    ]
    write_result(
        name,
        metrics={
            "test_error_pct": round(error, 2),
            "compression_ratio": round(ratio, 1),
            "file_bytes": file_bytes,
            "dense_fp32_bytes": dense,
            "ratio_without_huffman": round(dense / fixed, 1),
            "ratio_sparse_only": round(dense / sparse_bytes, 1),
            "weights_kept_pct": round(100 * after.nonzeros / after.params, 2),
            "load_outputs_bit_identical": bool(identical),
            "pipeline_wall_s": pipeline_s,
            "layers": layers,
            "stages": stages,
            "init_comparison_accuracy_no_finetune": inits,
        },
        baseline={"test_error_pct": round(base_error, 2), "accuracy": before.accuracy, "recipe": recipe_file},
        peers={"Han et al. 2016 (paper)": paper},
        targets={
            "compression_ratio": {"value": round(ratio, 1), "bar": f">= {ratio_bar}", "met": ratio >= ratio_bar},
            "test_error_pct": {"value": round(error, 2), "bar": f"<= {error_bar}", "met": error <= error_bar},
            "pipeline_wall_s": {"value": pipeline_s, "bar": f"<= {WALL_BAR_S}", "met": pipeline_s <= WALL_BAR_S},
            "load_bit_identical": {"value": bool(identical), "bar": "true", "met": bool(identical)},
        },
        seed=recipe.seed,
        wall_s=timer.seconds,
        notes=f"recipe src/torchslim/recipes/{recipe_file}; ratio = dense fp32 bytes of the trained baseline / bytes of "
        "model.tslim on disk; 'without Huffman' = the same model with fixed-width codes and indices.",
    )
    print(f"{name}: error {error:.2f}% (baseline {base_error:.2f}%), {ratio:.1f}x ({file_bytes} bytes), "
          f"without Huffman {dense / fixed:.1f}x, pipeline {pipeline_s:.0f}s, load identical {identical}")
