"""Shared body of the ``deep_compression_*`` benchmarks: run a shipped recipe end to end and tabulate the file.

The recipe trains the baseline from scratch, prunes, shares weights (k-means,
centroids fine-tuned) and Huffman-codes the model into ``model.tslim``. The
compression ratio is the dense fp32 bytes of the trained baseline over the
bytes of the file on disk. The same model is also written with fixed-width
indices (no Huffman) to show what Huffman coding adds, and the file is loaded
back and checked to give the same logits, bit for bit, on the whole test set.
"""

from __future__ import annotations

import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from _common import Timer, write_result

import torchslim as ts
from torchslim.encode import layer_table, read
from torchslim.measure import logits_of
from torchslim.pipeline import run_recipe
from torchslim.recipe import parse_recipe

WALL_BAR_S = 20 * 60


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
        sparse = ts.save_sparse(result.model, Path(tmp) / "sparse")
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
