"""Acceptance: the embedded default (`torchslim demo`) on real MNIST, end to end (prune, share, Huffman, .tslim)."""

from importlib import resources

import torch
import yaml

import torchslim as ts
from torchslim.pipeline import run_recipe
from torchslim.recipe import parse_recipe


def test_demo_compresses_lenet300_over_35x_within_half_a_point(tmp_path):
    text = resources.files("torchslim.recipes").joinpath("demo.yaml").read_text()
    result = run_recipe(parse_recipe(yaml.safe_load(text)), output=tmp_path / "demo", progress=False)
    before, after = result.report.before, result.report.after
    assert before.accuracy > 0.98  # a real LeNet-300-100 baseline
    assert before.accuracy - after.accuracy <= 0.005, (before.accuracy, after.accuracy)
    weights = 784 * 300 + 300 * 100 + 100 * 10
    assert after.params - after.nonzeros == round(0.92 * weights)  # exactly 92% of the weights are zero
    tslim = tmp_path / "demo" / "model.tslim"
    assert after.bytes_file == tslim.stat().st_size
    assert before.bytes_dense / after.bytes_file >= 35, after.bytes_file
    x = torch.randn(32, 784)
    assert torch.equal(result.model.eval()(x), ts.load(tslim)(x))
    for name in ("report.md", "report.html", "report.json"):
        assert (tmp_path / "demo" / name).stat().st_size > 500
