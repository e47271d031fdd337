from dataclasses import dataclass

import pytest
import torch
from torch import nn

import torchslim as ts
from torchslim.data import DataBundle, load_data
from torchslim.errors import ConfigError, TorchslimError
from torchslim.measure import evaluate_accuracy
from torchslim.recipe import parse_recipe
from torchslim.stages import STAGES, StageContext
from torchslim.stages.catalog import DistillStage, TeacherSpec, build_teacher
from torchslim.train import save_checkpoint


@dataclass(frozen=True)
class _Ctx:
    data: DataBundle
    label: str
    progress: bool = False
    initial_model: nn.Module | None = None


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def test_distill_stage_is_registered_and_validates_in_recipes():
    assert "distill" in STAGES
    recipe = parse_recipe(
        {
            "name": "heal",
            "model": "zoo:lenet300",
            "data": "digits",
            "stages": [
                {"type": "train", "epochs": 1},
                {"type": "prune", "sparsity": 0.5},
                {"type": "distill", "teacher": "initial", "epochs": 1, "temperature": 4, "alpha": 0.9},
                {"type": "distill", "teacher": {"name": "zoo:mlp", "args": {"hidden": [32]}}, "loss": "kl"},
            ],
        }
    )
    assert recipe.stages[2].config.teacher == "initial"
    assert isinstance(recipe.stages[3].config.teacher, TeacherSpec)
    with pytest.raises(ConfigError) as info:
        parse_recipe(
            {
                "name": "bad",
                "model": "zoo:lenet300",
                "data": "digits",
                "stages": [{"type": "distill", "teacher": {"name": "zoo:nope"}, "temperature": -1, "alpha": 2, "hints": [{"student": "fc1"}]}],
            }
        )
    msg = str(info.value)
    for field in ("stages.0.temperature", "stages.0.alpha", "stages.0.hints.0.teacher", "unknown zoo model 'nope'"):
        assert field in msg, msg


def test_stage_heals_a_pruned_model_from_the_initial_model(digits):
    torch.manual_seed(0)
    model = ts.create_model("mlp", in_features=64, hidden=[128, 64])
    ts.finetune(model, digits, {"epochs": 10, "lr": 0.05, "batch_size": 32}, progress=False)
    initial = ts.create_model("mlp", in_features=64, hidden=[128, 64])
    initial.load_state_dict(model.state_dict())
    base = evaluate_accuracy(model, digits.loader("test"))
    ts.prune_(model, {"sparsity": 0.95, "keep_first_last": False})
    pruned = evaluate_accuracy(model, digits.loader("test"))
    cfg = DistillStage.parse({"teacher": "initial", "epochs": 4, "lr": 0.05, "batch_size": 32, "temperature": 4})
    report = STAGES.get("distill").run(model, cfg, _Ctx(digits, "heal", initial_model=initial))
    healed = evaluate_accuracy(model, digits.loader("test"))
    assert report.technique == "distill" and report.meta["teacher"] == "initial"
    assert pruned < base - 0.05 and healed > pruned + 0.05 and healed > base - 0.05


def test_teacher_initial_without_pipeline_support_is_a_clear_error(digits):
    with pytest.raises(TorchslimError, match="teacher: initial needs the pipeline"):
        build_teacher("initial", StageContext(digits, "x", False))


def test_teacher_from_a_spec_with_weights(digits, tmp_path):
    torch.manual_seed(0)
    t = ts.create_model("mlp", in_features=64, hidden=[32])
    save_checkpoint(t, tmp_path / "teacher")
    spec = TeacherSpec(name="zoo:mlp", args={"in_features": 64, "hidden": [32]}, weights=str(tmp_path / "teacher.safetensors"))
    built = build_teacher(spec, _Ctx(digits, "x"))
    assert all(torch.equal(a, b) for a, b in zip(t.state_dict().values(), built.state_dict().values()))
