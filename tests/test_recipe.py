import re
from importlib import resources
from pathlib import Path

import pytest
import yaml

from torchslim.errors import ConfigError
from torchslim.recipe import load_recipe, parse_recipe

GOOD = {
    "name": "t",
    "model": {"name": "zoo:lenet300", "args": {"in_features": 64}},
    "data": "digits",
    "stages": [{"type": "train", "epochs": 1}, {"type": "prune", "sparsity": 0.5}, {"type": "finetune", "epochs": 1}],
}


def test_good_recipe_and_shorthands():
    r = parse_recipe(GOOD)
    assert [s.type for s in r.stages] == ["train", "prune", "finetune"]
    assert r.data.name == "digits" and r.model.args == {"in_features": 64}
    assert r.output_dir() == Path("runs/t")
    assert r.stages[1].config.sparsity == 0.5 and r.stages[1].config.criterion == "magnitude"


def test_three_mistakes_are_reported_at_once():
    bad = {
        "name": "t",
        "model": "zoo:lenet301",
        "data": "digits",
        "stages": [{"type": "train", "epochss": 1}, {"type": "prune", "sparsity": 1.5}],
    }
    with pytest.raises(ConfigError) as exc:
        parse_recipe(bad)
    issues = {i.path: i for i in exc.value.issues}
    assert set(issues) == {"model.name", "stages.0.epochss", "stages.1.sparsity"}
    assert "registered: " in issues["model.name"].message and "lenet300, lenet5" in issues["model.name"].message
    assert "allowed: epochs, max_steps" in issues["stages.0.epochss"].message
    assert issues["stages.1.sparsity"].value == 1.5 and "less than 1" in issues["stages.1.sparsity"].message


def test_unknown_stage_type_data_and_top_level_key():
    bad = {"name": "t", "model": "zoo:lenet5", "data": "imagenet", "stage": [], "stages": [{"type": "squash"}, {"sparsity": 0.1}]}
    with pytest.raises(ConfigError) as exc:
        parse_recipe(bad)
    text = str(exc.value)
    assert "data.name: unknown data set 'imagenet'; registered: digits, fashion-mnist, mnist" in text
    assert "stage: unknown key; allowed: name, seed, model, data, measure, output, stages" in text
    assert re.search(r"stages\.0\.type: unknown stage type; allowed: .*finetune.*prune.*train", text)
    assert "stages.1.type: missing" in text


def test_yaml_errors(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_recipe(p)
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "none.yaml")


def test_fingerprint_ignores_output_only():
    a, b = parse_recipe(GOOD), parse_recipe({**GOOD, "output": "elsewhere"})
    assert a.fingerprint() == b.fingerprint()
    c = parse_recipe({**GOOD, "seed": 1})
    assert a.fingerprint() != c.fingerprint()


def shipped_recipes():
    root = Path(str(resources.files("torchslim.recipes")))
    found = sorted(root.glob("*.yaml"))
    assert len(found) >= 3, found
    return found


@pytest.mark.parametrize("path", shipped_recipes(), ids=lambda p: Path(str(p)).name)
def test_every_shipped_recipe_validates(path):
    recipe = parse_recipe(yaml.safe_load(Path(str(path)).read_text()), source=str(path))
    assert recipe.stages


@pytest.mark.parametrize("path", shipped_recipes(), ids=lambda p: Path(str(p)).name)
def test_every_shipped_recipe_loads_with_the_bounded_loader(path):
    assert load_recipe(Path(str(path))).stages
