"""docs/architecture.md's worked example runs as written: a technique in one file plus one catalog line."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest
import torch

import torchslim as ts
from torchslim.errors import TransformRefusedError
from torchslim.recipe import parse_recipe
from torchslim.stages import STAGES, StageContext, run_stage, technique_stage

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def _example_blocks() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Adding a technique", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


@pytest.fixture(scope="module")
def clip() -> types.ModuleType:
    module_code, _catalog_line = _example_blocks()
    module = types.ModuleType("torchslim_doc_clip")
    exec(compile(module_code, str(DOC), "exec"), module.__dict__)
    return module


def test_the_doc_has_the_file_and_the_catalog_line():
    module_code, catalog_line = _example_blocks()
    assert "class Clip(Technique)" in module_code and "def clip_(" in module_code
    assert catalog_line.strip().startswith('"clip": technique_stage(CLIP')


def test_the_verb_clips_and_reports_every_layer(clip):
    torch.manual_seed(0)
    model = ts.create_model("lenet300", in_features=64)
    report = clip.clip_(model, {"k": 2.0, "targets": {"fc3": None, "re:fc.*": {}}})
    assert [l.name for l in report.layers] == ["fc1", "fc2"] and [s.name for s in report.skipped] == ["fc3"]
    for layer in report.layers:
        w = model.get_submodule(layer.name).weight.detach()
        assert float(w.abs().max()) <= layer.details["bound"] + 1e-6


def test_a_refusal_leaves_the_model_untouched(clip):
    model = ts.create_model("lenet300", in_features=64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TransformRefusedError, match="k must be positive"):
        clip.clip_(model, {"k": -1.0})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_one_catalog_line_makes_it_a_recipe_stage(clip, monkeypatch):
    _module_code, catalog_line = _example_blocks()
    entry = eval("{" + catalog_line + "}", {"technique_stage": technique_stage, "CLIP": clip.CLIP})
    for name, spec in entry.items():
        monkeypatch.setitem(STAGES._items, name, spec)
    recipe = parse_recipe({
        "name": "clip", "model": {"name": "zoo:lenet300", "args": {"in_features": 64}}, "data": "digits",
        "stages": [{"type": "clip", "k": 2.5, "name": "clip outliers", "finetune": {"epochs": 1, "lr": 0.01}}],
    })
    stage = recipe.stages[0]
    assert stage.label == "clip outliers" and stage.config.k == 2.5
    model = ts.create_model("lenet300", in_features=64)
    ctx = StageContext(ts.load_data("digits"), stage.label, False, finetune=stage.finetune)
    result = run_stage(STAGES.get("clip"), model, stage.config, ctx)
    assert result.report.technique == "clip" and len(result.report.layers) == 3
    assert len(result.report.meta["finetune"]) == 1
