import pytest
from torch import nn

from torchslim.errors import ConfigError
from torchslim.measure import evaluate_accuracy
from torchslim.prune import (
    GradualPruning,
    ScheduledPruneConfig,
    gradual_sparsity,
    iterative_sparsity,
    prune_with_schedule,
)
from torchslim.train import finetune

FT = {"epochs": 1, "lr": 0.02, "batch_size": 32, "momentum": 0.9, "weight_decay": 1e-4}
TOTAL = 64 * 300 + 300 * 100 + 100 * 10


def zeros_where_masked(model):
    for mod in (model.fc1, model.fc2, model.fc3):
        if hasattr(mod, "weight_mask"):
            assert not bool(mod.weight[~mod.weight_mask].any())


def weight_sparsity(model):
    return sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, nn.Linear)) / TOTAL


def test_gradual_ramp_matches_zhu_and_gupta():
    s_i, s_f, t0, n, dt = 0.1, 0.9, 20, 4, 25
    for t in range(t0, t0 + n * dt + 1):
        expect = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3
        assert gradual_sparsity(t, s_i, s_f, t0, n * dt) == pytest.approx(expect, abs=1e-12)
    assert gradual_sparsity(0, s_i, s_f, t0, n * dt) == pytest.approx(s_i)
    assert gradual_sparsity(10_000, s_i, s_f, t0, n * dt) == pytest.approx(s_f)


def test_iterative_rule_reaches_the_target():
    assert [round(iterative_sparsity(0.9375, r, 4), 6) for r in range(1, 5)] == [0.5, 0.75, 0.875, 0.9375]


def test_gradual_callback_updates_masks_on_the_ramp(digits, trained_lenet):
    model = trained_lenet()
    sched = {"kind": "gradual", "initial_sparsity": 0.2, "start_step": 10, "ramp_steps": 80, "frequency": 20, "finetune": FT}
    cb = GradualPruning({"sparsity": 0.9, "keep_first_last": False}, sched)
    finetune(model, digits, {**FT, "epochs": 3}, callbacks=[cb], progress=False)  # 41 steps/epoch: 123 steps
    assert [s for s, _ in cb.history] == [10, 30, 50, 70, 90]
    for step, value in cb.history:
        assert value == pytest.approx(0.9 + (0.2 - 0.9) * (1 - (step - 10) / 80) ** 3)
    assert weight_sparsity(model) == pytest.approx(0.9, abs=1e-4)
    zeros_where_masked(model)
    assert evaluate_accuracy(model, digits.loader("test", 512)) > 0.9


@pytest.mark.parametrize(
    "schedule",
    [
        {"kind": "oneshot"},
        {"kind": "iterative", "rounds": 3, "finetune": FT},
        {"kind": "gradual", "frequency": 10, "finetune": {**FT, "epochs": 2}},
    ],
)
@pytest.mark.parametrize("criterion", ["magnitude", "taylor"])
def test_every_schedule_reaches_the_target_and_keeps_zeros_through_finetuning(schedule, criterion, digits, trained_lenet):
    model = trained_lenet()
    report = prune_with_schedule(
        model, digits, {"sparsity": 0.9, "criterion": criterion, "keep_first_last": False, "calibration": {"batches": 2}, "schedule": schedule}
    )
    finetune(model, digits, FT, progress=False)  # masks stay applied after any schedule
    assert weight_sparsity(model) == pytest.approx(0.9, abs=1e-4)
    zeros_where_masked(model)
    assert all(l.details["criterion"] == criterion and l.details["sparsity_before"] == 0.0 for l in report.layers)
    assert report.meta["schedule"]["kind"] == schedule["kind"]
    if schedule["kind"] == "iterative":
        assert [r["sparsity"] for r in report.meta["schedule"]["rounds"]] == pytest.approx([iterative_sparsity(0.9, r, 3) for r in (1, 2, 3)])
    assert evaluate_accuracy(model, digits.loader("test", 512)) > 0.9


def test_iterative_per_layer_targets_follow_the_rule(digits, trained_lenet):
    model = trained_lenet()
    report = prune_with_schedule(
        model,
        digits,
        {"sparsity": 0.8, "keep_first_last": False, "targets": {"fc3": {"sparsity": 0.5}, "re:.*": {}},
         "schedule": {"kind": "iterative", "rounds": 2, "finetune": {**FT, "max_steps": 5}}},
    )
    s = {l.name: l.sparsity for l in report.layers}
    assert s["fc3"] == pytest.approx(0.5, abs=1e-3)
    assert (int((model.fc1.weight == 0).sum()) + int((model.fc2.weight == 0).sum())) / (64 * 300 + 300 * 100) == pytest.approx(0.8, abs=1e-4)


@pytest.mark.parametrize(
    "cfg,text",
    [
        ({"sparsity": 0.5, "schedule": {"kind": "iterative"}}, "needs 'finetune'"),
        ({"sparsity": 0.5, "schedule": {"kind": "gradual", "rounds": 0, "finetune": {}}}, "schedule.rounds"),
        ({"granularity": "nm", "schedule": {"kind": "iterative", "finetune": {}}}, "granularity 'nm' takes schedule kind 'oneshot'"),
        ({"sparsity": 0.5, "schedule": {"kind": "gradual", "initial_sparsity": 0.6, "finetune": {}}}, "exceeds the target"),
        ({"sparsity": 0.5, "schedule": {"kind": "cubic"}}, "schedule.kind"),
        ({"sparsity": 0.5, "schedule": {"kind": "iterative", "finetune": {"lr": -1}}}, "schedule.finetune.lr"),
    ],
)
def test_bad_schedules_are_config_errors(cfg, text):
    with pytest.raises(ConfigError, match=text):
        ScheduledPruneConfig.parse(cfg)


def test_prune_stage_in_a_recipe_runs_iterative_pruning(tmp_path):
    from torchslim.pipeline import run_recipe
    from torchslim.recipe import parse_recipe

    recipe = parse_recipe({
        "name": "iter", "seed": 0, "model": {"name": "zoo:lenet300", "args": {"in_features": 64}}, "data": "digits",
        "measure": {"latency_batch": 8, "latency_runs": 2},
        "stages": [
            {"type": "train", "epochs": 4, "lr": 0.05, "batch_size": 32},
            {"type": "prune", "sparsity": 0.8, "keep_first_last": False, "criterion": "hessian_fisher",
             "calibration": {"batches": 2, "batch_size": 64},
             "schedule": {"kind": "iterative", "rounds": 2, "finetune": {"epochs": 1, "lr": 0.02, "batch_size": 32}}},
        ],
    })
    result = run_recipe(recipe, output=tmp_path / "run", progress=False)
    rep = result.report
    assert rep.after.nonzeros < 0.3 * rep.before.nonzeros


def test_gradual_callback_takes_calibration_and_warns_on_loader(digits):
    cfg, sched = {"sparsity": 0.5, "criterion": "taylor"}, {"kind": "gradual", "finetune": FT}
    cb = GradualPruning(cfg, sched, calibration=digits.loader("train", 64))
    assert cb.calibration is not None
    with pytest.warns(DeprecationWarning, match=r"GradualPruning\(..., calibration=...\)"):
        old = GradualPruning(cfg, sched, loader=digits.loader("train", 64))
    assert old.calibration is not None
    with pytest.raises(TypeError, match="unexpected keyword argument 'loaderr'"):
        GradualPruning(cfg, sched, loaderr=[])
