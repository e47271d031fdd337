"""Acceptance: the embedded default (`torchslim demo`) on real MNIST, end to end."""

from importlib import resources

import yaml

from torchslim.pipeline import run_recipe
from torchslim.recipe import parse_recipe


def test_demo_prunes_90_percent_within_half_a_point(tmp_path):
    text = resources.files("torchslim.recipes").joinpath("demo.yaml").read_text()
    result = run_recipe(parse_recipe(yaml.safe_load(text)), output=tmp_path / "demo", progress=False)
    before, after = result.report.before, result.report.after
    assert before.accuracy > 0.98  # a real LeNet-300-100 baseline
    assert before.accuracy - after.accuracy <= 0.005, (before.accuracy, after.accuracy)
    weights = 784 * 300 + 300 * 100 + 100 * 10
    assert after.params - after.nonzeros == round(0.9 * weights)  # exactly 90% of the weights are zero
    assert after.bytes_sparse * 5 < before.bytes_sparse
    for name in ("report.md", "report.html", "report.json"):
        assert (tmp_path / "demo" / name).stat().st_size > 500
