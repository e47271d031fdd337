"""Sensitivity analysis: on small trained models, the numbers behave, the file is safe, the model is untouched."""

import json
import math

import pytest
import torch
from torch import nn

from torchslim.errors import ConfigError, TorchslimError
from torchslim.measure import evaluate_loss_and_accuracy
from torchslim.search import (
    ANALYSES,
    SensitivityConfig,
    SensitivityFileError,
    SensitivityResult,
    sensitivity,
    spearman,
)
from torchslim.search import reuse as reuse_module
from torchslim.search.plots import save_plots

FAST = {"batch_size": 72, "batches": 2}
SMALL = {**FAST, "unstructured": [0.5, 0.9], "structured": [0.5], "bits": [8, 3], "lowrank": [0.5]}


def _figures(result: SensitivityResult) -> dict:
    """The result without its timings (what must repeat exactly)."""
    data = result.to_dict()
    data.pop("wall_s")
    for a in data["analyses"]:
        a.pop("seconds")
        for u in a["units"]:
            for o in u["options"]:
                o.pop("seconds")
    return data


@pytest.fixture(scope="module")
def analysed(_trained, digits):
    """The default analysis (all four, every layer) of the trained SmallResNet, and its state before."""
    before = {k: v.clone() for k, v in _trained.state_dict().items()}
    kinds = [type(m) for m in _trained.modules()]
    result = sensitivity(_trained, digits, FAST, progress=False)
    return result, before, kinds


def test_every_layer_and_setting_is_there(analysed):
    result, _, _ = analysed
    assert [a.name for a in result.analyses] == ["unstructured", "structured", "bits", "lowrank"]
    assert [u.name for u in result.analysis("bits").units] == ["conv1", "conv2", "conv3", "fc"]
    for a in result.analyses:
        assert a.settings == SensitivityConfig().settings(a.name)
        for u in a.units:
            assert [o.setting for o in u.options] == a.settings
            for o in u.options:
                assert (o.status == "ok") == (o.reason is None)
                if o.status == "ok":
                    assert 0.0 <= o.accuracy <= 1.0 and math.isfinite(o.loss) and o.sqnr_db is not None
    residual = result.analysis("structured").units[0]  # conv1 and conv2 are coupled by the residual add
    assert residual.kind == "channel group" and {"conv1", "conv2", "bn1", "bn2", "conv3"} <= set(residual.layers)


def test_refused_entries_have_reasons(analysed):
    result, _, _ = analysed
    fc = next(u for u in result.analysis("structured").units if u.name == "fc")
    assert [(o.status, o.reason) for o in fc.options] == [("refused", "frozen: reaches the model output")] * 3


def test_a_layer_a_technique_does_not_handle_is_refused_with_why(digits):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.LayerNorm(16), nn.Linear(16, 10))
    units = ANALYSES.get("lowrank").units(model, torch.zeros(1, 64), ["1", "2"])
    assert units[1].refused is not None and "LayerNorm" in units[1].refused
    result = sensitivity(model, digits, {**SMALL, "analyses": ["structured"]}, progress=False)
    assert [(u.name, u.options[0].status) for u in result.analysis("structured").units] == [("1", "ok"), ("3", "refused")]


def test_the_model_is_unchanged(analysed, _trained):
    _, before, kinds = analysed
    after = _trained.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert kinds == [type(m) for m in _trained.modules()]


def test_stronger_settings_hurt_more_on_average(analysed):
    result, _, _ = analysed
    for a in result.analyses:
        by_setting = {}
        for u in a.units:
            for o in u.options:
                if o.status == "ok":
                    by_setting.setdefault(o.setting, []).append(o.accuracy)
        order = sorted(by_setting, reverse=ANALYSES.get(a.name).stronger == "down")  # weakest first
        means = [sum(by_setting[s]) / len(by_setting[s]) for s in order]
        assert all(later <= earlier + 0.02 for earlier, later in zip(means, means[1:])), (a.name, means)
        assert means[-1] < means[0], a.name


def test_costs_are_the_settings(analysed, _trained):
    result, _, _ = analysed
    conv3 = next(u for u in result.analysis("unstructured").units if u.name == "conv3")
    weights = _trained.conv3.weight.numel()
    assert [o.d_nonzeros for o in conv3.options] == [-round(s * weights) for s in (0.25, 0.5, 0.75, 0.9)]
    assert all(o.d_params == 0 and o.d_macs == 0 and o.d_bytes < 0 for o in conv3.options)
    bits = next(u for u in result.analysis("bits").units if u.name == "conv3").options
    assert bits[2].d_bytes == weights * 4 // 8 + 32 * 4 - weights * 4  # 4-bit codes + 32 fp32 scales
    lowrank = result.analysis("lowrank").units
    assert all(o.d_params < 0 and o.d_macs < 0 for u in lowrank for o in u.options if o.status == "ok")
    assert all(o.d_macs < 0 for u in result.analysis("structured").units for o in u.options if o.status == "ok")


def test_baseline_is_the_evaluate_figure(analysed, _trained, digits):
    result, _, _ = analysed
    loss, acc = evaluate_loss_and_accuracy(_trained, list(digits.loader("val", 72))[:2])
    assert result.baseline.accuracy == acc and result.baseline.loss == pytest.approx(loss, rel=1e-6)
    assert result.samples == 144 and result.proxy_samples == 72


def test_a_fragile_layer_ranks_most_sensitive(mlp, digits):
    """fc2 gets a huge weight on the input of a dead unit: the model is the same, fc2's per-row scales are not."""
    with torch.no_grad():
        mlp.fc1.weight[7].zero_()
        mlp.fc1.bias[7] = -1e4          # unit 7 is never active ...
        mlp.fc2.weight[:, 7] = 1e4      # ... so this column does nothing, but it sets every row's scale
    result = sensitivity(mlp, digits, {**FAST, "analyses": ["bits"]}, progress=False)
    mean = {u.name: sum(o.accuracy for o in u.options) / len(u.options) for u in result.analysis("bits").units}
    assert min(mean, key=mean.get) == "fc2"
    proxy = {u.name: sum(o.sqnr_db for o in u.options) for u in result.analysis("bits").units}
    assert min(proxy, key=proxy.get) == "fc2"


def test_deterministic_and_the_partial_forward_changes_nothing(trained, digits, monkeypatch):
    a = sensitivity(trained, digits, SMALL, progress=False)
    b = sensitivity(trained, digits, SMALL, progress=False)
    assert _figures(a) == _figures(b)
    monkeypatch.setattr(reuse_module.ActivationCache, "build", classmethod(lambda cls, *args: None))
    full = sensitivity(trained, digits, SMALL, progress=False)
    assert _figures(full) == _figures(a)


def test_sqnr_metric_and_targets(trained, digits):
    cfg = {**SMALL, "metric": "sqnr", "targets": {"conv1": None, "re:conv.*": {"analyses": ["bits"]}, "fc": {}}}
    result = sensitivity(trained, digits, cfg, progress=False)
    assert [u.name for u in result.analysis("bits").units] == ["conv2", "conv3", "fc"]
    assert [u.name for u in result.analysis("lowrank").units] == ["fc"]
    opt = result.analysis("bits").units[0].options[0]
    assert opt.accuracy is None and opt.sqnr_db > 30 and result.baseline.accuracy is None and result.samples == 0
    assert result.analysis("bits").spearman_accuracy is None


def test_json_round_trip_is_exact(analysed, tmp_path):
    result, _, _ = analysed
    path = result.to_json(tmp_path / "s.json")
    again = SensitivityResult.from_json(path)
    assert again == result
    assert again.to_json(tmp_path / "t.json").read_bytes() == path.read_bytes()
    assert "Spearman" in result.table() and "refused" in result.table()


def test_plots_are_written(analysed, tmp_path):
    result, _, _ = analysed
    paths = save_plots(result.model_copy(update={"analyses": result.analyses[1:2]}), tmp_path)
    assert [p.name for p in paths] == ["sensitivity_structured_curves.png", "sensitivity_structured_heatmap.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: "{\"format\": ", "sensitivity file"),
        (lambda d: [1, 2], "expected a JSON object"),
        (lambda d: {**d, "format": "something else"}, "not a torchslim sensitivity file"),
        (lambda d: {**d, "version": 7}, "unsupported version"),
        (lambda d: {**d, "extra": 1}, "extra: unknown key"),
        (lambda d: {**d, "metric": "speed"}, "metric"),
        (lambda d: {**d, "params": "12"}, "params"),
        (lambda d: {**d, "params": 2**80}, "at most 64 are allowed"),
        (lambda d: {**d, "config": {"a": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}, "nested deeper"),
        (lambda d: {**d, "config": {"bits": [9]}}, "config: bits: every bit width must be in"),
        (lambda d: _option(d, accuracy=1.5), "accuracy"),
        (lambda d: _option(d, loss="NaN"), "loss"),
        (lambda d: _option(d, status="refused", reason=None), "needs its reason"),
        (lambda d: _option(d, setting=0.33), "not the analysis'"),
    ],
)
def test_a_damaged_file_is_refused_clearly(analysed, tmp_path, damage, message):
    result, _, _ = analysed
    bad = damage(result.to_dict())
    path = tmp_path / "bad.json"
    text = bad if isinstance(bad, str) else json.dumps(bad).replace('"NaN"', "NaN")
    path.write_text(text)
    with pytest.raises(SensitivityFileError, match=message) as info:
        SensitivityResult.from_json(path)
    assert str(path) in str(info.value)


def _option(data: dict, **changes) -> dict:
    data["analyses"][0]["units"][0]["options"][0].update(changes)
    return data


def test_an_oversized_or_missing_file_is_refused(tmp_path, monkeypatch):
    with pytest.raises(SensitivityFileError, match="cannot read"):
        SensitivityResult.from_json(tmp_path / "none.json")
    from torchslim.search import result as result_module

    monkeypatch.setattr(result_module, "MAX_FILE_BYTES", 10)
    (tmp_path / "big.json").write_text(" " * 100)
    with pytest.raises(SensitivityFileError, match="more than the 10 allowed"):
        SensitivityResult.from_json(tmp_path / "big.json")


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="version"):
        SensitivityConfig.parse({"version": 2})
    with pytest.raises(ConfigError) as info:
        SensitivityConfig.parse({"bits": [9], "unstructured": [1.0], "analyses": ["bits", "bits"], "metric": "f1"})
    assert {i.path for i in info.value.issues} == {"bits", "unstructured", "analyses", "metric"}


def test_unlabelled_batches_need_the_sqnr_metric(mlp):
    batches = [torch.randn(8, 64)]
    with pytest.raises(TorchslimError, match="no labels"):
        sensitivity(mlp, batches, {"analyses": ["bits"]}, progress=False)
    result = sensitivity(mlp, batches, {"analyses": ["bits"], "bits": [4], "metric": "sqnr"}, progress=False)
    assert all(u.options[0].status == "ok" for u in result.analysis("bits").units)


def test_spearman_ties():
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == 1.0
    assert spearman([1, 2], [2, 1]) is None


def test_the_command_writes_the_json_the_table_and_the_plots(tmp_path, mlp):
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from torchslim.cli import app

    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in mlp.state_dict().items()}, str(weights))
    args = ["sensitivity", "--model", "zoo:lenet300", "--data", "digits", "--weights", str(weights), "--out",
            str(tmp_path / "out"), "--analyses", "bits", "--batches", "1", "--batch-size", "64"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    loaded = SensitivityResult.from_json(tmp_path / "out" / "sensitivity.json")
    assert [a.name for a in loaded.analyses] == ["bits"]
    assert loaded.baseline.accuracy > 0.9  # the trained weights were loaded, not a fresh model
    assert (tmp_path / "out" / "sensitivity.txt").read_text().strip()
    bad = CliRunner().invoke(app, [*args[:-6], "--analyses", "bitz"])
    assert bad.exit_code == 2 and "--analyses" in bad.output
