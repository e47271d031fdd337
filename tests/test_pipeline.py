import json

import pytest
import torch

import torchslim.stages.catalog as stages_mod
from torchslim.errors import TorchslimError
from torchslim.pipeline import read_state, run_recipe
from torchslim.recipe import parse_recipe
from torchslim.train import Callback

RECIPE = {
    "name": "pipe",
    "seed": 3,
    "model": {"name": "zoo:lenet300", "args": {"in_features": 64}},
    "data": "digits",
    "measure": {"latency_batch": 8, "latency_runs": 3},
    "stages": [
        {"type": "train", "epochs": 6, "lr": 0.05, "batch_size": 32},
        {"type": "finetune", "epochs": 3, "lr": 0.02, "batch_size": 32},
        {"type": "prune", "sparsity": 0.8, "keep_first_last": False},
        {"type": "finetune", "epochs": 2, "lr": 0.01, "batch_size": 32},
    ],
}


def stable(m):
    d = m.to_dict()
    return {k: v for k, v in d.items() if "latency" not in k and "memory" not in k}


def test_run_writes_checkpoints_state_and_report(tmp_path):
    out = tmp_path / "run"
    result = run_recipe(parse_recipe(RECIPE), output=out, progress=False)
    names = sorted(p.name for p in out.iterdir())
    for i, t in enumerate(["train", "finetune", "prune", "finetune"], 1):
        assert f"stage-{i:02d}-{t}.safetensors" in names and f"stage-{i:02d}-{t}.json" in names
    assert {"report.md", "report.html", "report.json", "state.json", "recipe.json"} <= set(names)
    assert read_state(out)["status"] == "complete"
    rep = result.report
    assert rep.before.accuracy > 0.9 and rep.after.accuracy > rep.before.accuracy - 0.03
    assert abs(rep.after.sparsity - 0.8 * 50_200 / 50_610) < 0.001  # biases are never pruned
    assert rep.before.nonzeros == 50_610 and len(rep.stages) == 4
    assert [l.action for l in rep.layers] == ["pruned"] * 3
    md = (out / "report.md").read_text()
    assert "Non-zeros" in md and "fc1" in md
    # a second run into the same directory is refused without --force
    with pytest.raises(TorchslimError, match="not empty"):
        run_recipe(parse_recipe(RECIPE), output=out, progress=False)


class _Interrupt(Callback):
    def on_step(self, state):
        if state.step == 20:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_after_last_completed_stage(tmp_path, monkeypatch):
    reference = run_recipe(parse_recipe(RECIPE), output=tmp_path / "ref", progress=False)

    calls = []
    real = stages_mod.finetune

    def spy(model, data, cfg, **kw):
        calls.append(kw["description"])
        if kw["description"].startswith("2/4") and len(calls) == 2:
            kw["callbacks"] = [_Interrupt()]
        return real(model, data, cfg, **kw)

    monkeypatch.setattr(stages_mod, "finetune", spy)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_recipe(parse_recipe(RECIPE), output=out, progress=False)
    state = read_state(out)
    assert state["status"] == "interrupted" and [d["type"] for d in state["completed"]] == ["train"]
    assert not (out / "report.json").exists() and not (out / "report.md").exists()

    result = run_recipe(parse_recipe(RECIPE), output=out, resume=True, progress=False)
    assert [c.split(" ")[0] for c in calls] == ["1/4", "2/4", "2/4", "4/4"]  # stage 1 not repeated
    assert stable(result.report.after) == stable(reference.report.after)
    assert stable(result.report.before) == stable(reference.report.before)
    ref_sd, sd = reference.model.state_dict(), result.model.state_dict()
    assert all(torch.equal(ref_sd[k], sd[k]) for k in ref_sd)


def test_resume_refuses_a_changed_recipe_and_missing_run(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TorchslimError, match="nothing to resume"):
        run_recipe(parse_recipe(RECIPE), output=out, resume=True, progress=False)
    small = {**RECIPE, "stages": RECIPE["stages"][:1]}
    run_recipe(parse_recipe(small), output=out, progress=False)
    with pytest.raises(TorchslimError, match="different recipe"):
        run_recipe(parse_recipe({**small, "seed": 9}), output=out, resume=True, progress=False)


def test_failed_stage_leaves_no_finished_looking_output(tmp_path):
    bad = {**RECIPE, "stages": [RECIPE["stages"][0], {"type": "prune", "sparsity": 0.5, "targets": {"fc9": {}}}]}
    out = tmp_path / "run"
    with pytest.raises(TorchslimError, match="fc9"):
        run_recipe(parse_recipe(bad), output=out, progress=False)
    state = json.loads((out / "state.json").read_text())
    assert state["status"] == "failed" and "fc9" in state["error"]
    assert not any(p.name.startswith("report.") for p in out.iterdir())


STRUCTURED = {
    "name": "structured",
    "seed": 1,
    "model": {"name": "zoo:lenet300", "args": {"in_features": 64}},
    "data": "digits",
    "measure": {"latency_batch": 8, "latency_runs": 3},
    "stages": [
        {"type": "train", "epochs": 4, "lr": 0.05, "batch_size": 32},
        {"type": "prune", "granularity": "channel", "sparsity": 0.5, "keep_first_last": False},
        {"type": "finetune", "epochs": 2, "lr": 0.01, "batch_size": 32},
    ],
}


def test_structured_stage_shrinks_and_resumes_from_a_replayed_structure(tmp_path, monkeypatch):
    reference = run_recipe(parse_recipe(STRUCTURED), output=tmp_path / "ref", progress=False)
    assert reference.report.after.params < 0.6 * reference.report.before.params
    assert reference.model.fc1.out_features == 152 and reference.model.fc2.out_features == 48  # rounded to 8

    real = stages_mod.finetune

    def spy(model, data, cfg, **kw):
        if kw["description"].startswith("3/3"):
            kw["callbacks"] = [_Interrupt()]
        return real(model, data, cfg, **kw)

    monkeypatch.setattr(stages_mod, "finetune", spy)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_recipe(parse_recipe(STRUCTURED), output=out, progress=False)
    monkeypatch.setattr(stages_mod, "finetune", real)
    result = run_recipe(parse_recipe(STRUCTURED), output=out, resume=True, progress=False)
    assert stable(result.report.after) == stable(reference.report.after)
    ref_sd, sd = reference.model.state_dict(), result.model.state_dict()
    assert all(torch.equal(ref_sd[k], sd[k]) for k in ref_sd)


def test_distill_stage_heals_from_the_model_before_compression(tmp_path):
    recipe = {
        "name": "heal",
        "seed": 0,
        "model": {"name": "zoo:lenet300", "args": {"in_features": 64}},
        "data": "digits",
        "measure": {"latency_batch": 8, "latency_runs": 3},
        "stages": [
            {"type": "train", "epochs": 6, "lr": 0.05, "batch_size": 32},
            {"type": "prune", "sparsity": 0.95, "keep_first_last": False},
            {"type": "distill", "teacher": "initial", "epochs": 3, "lr": 0.02, "batch_size": 32, "temperature": 4, "alpha": 0.9},
        ],
    }
    result = run_recipe(parse_recipe(recipe), output=tmp_path / "run", progress=False)
    stages = result.report.stages
    assert stages[2].measurement.accuracy > stages[1].measurement.accuracy  # healed
    assert stages[2].measurement.nonzeros == stages[1].measurement.nonzeros  # masks kept through distillation
    assert result.report.after.accuracy > result.report.before.accuracy - 0.05


def test_resume_after_a_quantize_stage_rebuilds_the_quantized_model(tmp_path):
    """A checkpoint taken after quantization loads into the fresh float model a resumed run starts from."""
    recipe = {
        **RECIPE,
        "stages": [
            RECIPE["stages"][0],
            {"type": "quantize", "mode": "static", "weight": {"bits": 4}, "calibration": {"batches": 2}},
            {"type": "finetune", "epochs": 1, "lr": 0.001},
        ],
    }
    reference = run_recipe(parse_recipe(recipe), output=tmp_path / "ref", progress=False)
    out = tmp_path / "run"
    run_recipe(parse_recipe({**recipe, "stages": recipe["stages"][:2]}), output=out, progress=False)
    state = read_state(out)
    state["fingerprint"] = parse_recipe(recipe).fingerprint()  # as if the full run had stopped after stage 2
    state["status"] = "interrupted"
    (out / "state.json").write_text(json.dumps(state))
    result = run_recipe(parse_recipe(recipe), output=out, resume=True, progress=False)
    assert stable(result.report.after) == stable(reference.report.after)
    ref_sd, sd = reference.model.state_dict(), result.model.state_dict()
    assert ref_sd.keys() == sd.keys() and all(torch.equal(ref_sd[k], sd[k]) for k in ref_sd)


def test_lenet300_on_digits_takes_its_input_size_from_the_data(tmp_path):
    recipe = parse_recipe({
        "name": "digits-lenet300", "model": "zoo:lenet300", "data": "digits", "measure": {"latency_runs": 2},
        "stages": [{"type": "train", "epochs": 1, "lr": 0.05}],
    })
    result = run_recipe(recipe, output=tmp_path / "run", progress=False)
    assert result.model.fc1.in_features == 64 and result.report.after.accuracy > 0.5
