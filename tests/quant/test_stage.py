"""The ``quantize`` recipe stage: validates, runs end to end with QAT + distillation, reports bits."""

from __future__ import annotations

import pytest

from torchslim.errors import ConfigError
from torchslim.measure import num_threads
from torchslim.pipeline import run_recipe
from torchslim.recipe import parse_recipe

RECIPE = {
    "name": "quant",
    "seed": 0,
    "model": {"name": "zoo:lenet300", "args": {"in_features": 64}},
    "data": "digits",
    "measure": {"latency_batch": 8, "latency_runs": 3},
    "stages": [
        {"type": "train", "epochs": 5, "lr": 0.05, "batch_size": 32},
        {
            "type": "quantize",
            "mode": "static",
            "weight": {"bits": 4},
            "finetune": {"epochs": 2, "lr": 0.01, "batch_size": 32},
            "distill": {"temperature": 4.0, "alpha": 0.5},
        },
    ],
}


def test_quantize_stage_runs_and_reports_bits(tmp_path) -> None:
    with num_threads(1):
        result = run_recipe(parse_recipe(RECIPE), output=tmp_path / "run", progress=False)
    report = result.report
    assert report.before.accuracy > 0.9
    assert report.after.accuracy >= report.before.accuracy - 0.03
    stage = report.stages[-1]
    assert stage.kind == "quantize"
    assert stage.summary["qat"]["steps"] > 0  # the stage's finetune block ran as QAT
    assert (tmp_path / "run" / "report.md").exists()


def test_the_earlier_qat_key_is_the_stage_finetune_with_a_warning() -> None:
    old = {**RECIPE["stages"][1]}
    old["qat"] = old.pop("finetune")
    with pytest.warns(DeprecationWarning, match="stages.1.qat is deprecated"):
        recipe = parse_recipe({**RECIPE, "stages": [RECIPE["stages"][0], old]})
    assert recipe.stages[1].finetune is not None and recipe.stages[1].finetune.epochs == 2
    with pytest.raises(ConfigError, match="give only 'finetune'"):
        parse_recipe({**RECIPE, "stages": [RECIPE["stages"][0], {**old, "finetune": {"epochs": 1}}]})


def test_bad_quantize_stage_is_reported_with_its_path() -> None:
    bad = dict(RECIPE, stages=[{"type": "quantize", "weight": {"bits": 12}, "activation": {"observer": "kl"}}])
    with pytest.raises(ConfigError) as info:
        parse_recipe(bad)
    text = str(info.value)
    assert "stages.0.weight.bits" in text and "stages.0.activation.observer" in text
