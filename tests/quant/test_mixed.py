"""Mixed precision: exact bit allocation under a budget; sensitivity-driven choice beats uniform."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from torchslim.errors import ConfigError, TransformRefusedError
from torchslim.measure import evaluate_accuracy
from torchslim.quant import MIXED_PRECISION, allocate_bits, layer_sensitivity, mixed_precision_, quantize_
from torchslim.quant.mixed import MixedPrecisionConfig


def test_allocation_is_exact_against_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    names = ["a", "b", "c", "d"]
    params = {n: 8 * int(p) for n, p in zip(names, torch.randint(10, 50, (4,), generator=gen))}  # whole bytes
    bits = [2, 4, 8]
    sens = {n: {b: float(torch.rand((), generator=gen)) / b**2 for b in bits} for n in names}
    budget = sum(params.values()) * 4 / 8
    got = allocate_bits(sens, params, budget, resolution=1)
    best = min(
        (c for c in itertools.product(bits, repeat=4) if sum(params[n] * b for n, b in zip(names, c)) <= budget * 8),
        key=lambda c: sum(sens[n][b] for n, b in zip(names, c)),
    )
    assert sum(sens[n][got[n]] for n in names) == pytest.approx(sum(sens[n][b] for n, b in zip(names, best)))
    assert sum(params[n] * got[n] for n in names) <= budget * 8
    with pytest.raises(TransformRefusedError, match="below the smallest allocation"):
        allocate_bits(sens, params, 10, resolution=1)


def test_sensitivity_falls_with_bits(trained, digits) -> None:
    s = layer_sensitivity(trained, [digits.train.x[:256]], [2, 4, 8])
    assert set(s) == {"conv1", "conv2", "conv3", "fc"}
    for by_bits in s.values():
        assert by_bits[2] > by_bits[4] > by_bits[8] >= 0


def test_mixed_meets_budget_and_beats_uniform(trained, digits) -> None:
    uniform = copy.deepcopy(trained)
    quantize_(uniform, {"mode": "weight_only", "weight": {"bits": 3}})
    report = mixed_precision_(
        trained,
        {"average_bits": 3, "candidate_bits": [2, 3, 4, 6, 8], "quantize": {"mode": "weight_only"}, "resolution": 8},
        calibration=digits.loader("train", 256),
    )
    assert report.meta["weight_bytes"] <= report.meta["budget_bytes"]
    assert set(report.meta["bits"]) == {"conv1", "conv2", "conv3", "fc"}
    assert {layer.name: layer.details["bits"] for layer in report.layers} == report.meta["bits"]
    loader = digits.loader("test", 512)
    assert evaluate_accuracy(trained, loader) >= evaluate_accuracy(uniform, loader)


def test_bad_candidate_bits() -> None:
    with pytest.raises(ConfigError, match=r"candidate_bits.*\[9\]"):
        MixedPrecisionConfig.parse({"candidate_bits": [4, 9]})


def _batches(digits, n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(digits.train.x[i : i + 128], digits.train.y[i : i + 128]) for i in range(0, 128 * n, 128)]


CFG = {"average_bits": 4, "candidate_bits": [2, 4, 8], "quantize": {"mode": "weight_only"}}


def test_filter_fn_skips_layers_and_the_technique_names_itself(trained, digits) -> None:
    report = mixed_precision_(trained, CFG, calibration=_batches(digits), filter_fn=lambda m, name: name != "fc")
    assert report.technique == MIXED_PRECISION.name == "quantize-mixed" and report.title == "quantize"
    assert set(report.meta["bits"]) == set(report.meta["sensitivity"]) == {"conv1", "conv2", "conv3"}
    assert [(s.name, s.reason) for s in report.skipped] == [("fc", "rejected by filter_fn")]
    assert isinstance(trained.fc, nn.Linear) and type(trained.fc) is nn.Linear


def test_deprecated_loader_keyword_warns(trained, digits) -> None:
    other = copy.deepcopy(trained)
    with pytest.warns(DeprecationWarning, match=r"call mixed_precision_\(\.\.\., calibration=\.\.\.\)"):
        old = mixed_precision_(trained, CFG, loader=_batches(digits))
    assert old == mixed_precision_(other, CFG, calibration=_batches(digits))


def test_an_untraceable_model_is_measured_unfolded_and_the_report_says_why(digits, untraceable) -> None:
    torch.manual_seed(0)
    model = untraceable().eval()
    report = mixed_precision_(model, CFG, calibration=_batches(digits))
    assert "cannot trace Untraceable" in report.meta["batchnorm_note"]
    assert report.meta["batchnorm_folded"] == [] and isinstance(model.bn, nn.BatchNorm2d)
    assert set(report.meta["bits"]) == {"conv", "fc"}


def test_refusals_leave_the_model_unchanged(trained, digits) -> None:
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    with pytest.raises(TransformRefusedError, match="needs calibration data"):
        mixed_precision_(trained, CFG)
    with pytest.raises(TransformRefusedError, match="no layer left to quantize: conv1: rejected by filter_fn"):
        mixed_precision_(trained, CFG, calibration=_batches(digits), filter_fn=lambda m, name: False)
    with pytest.raises(TransformRefusedError, match="below the smallest allocation"):
        mixed_precision_(trained, {**CFG, "average_bits": 2, "candidate_bits": [4, 8]}, calibration=_batches(digits))
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())
    assert type(trained.conv1) is nn.Conv2d and isinstance(trained.bn1, nn.BatchNorm2d)


class _Recurrent(nn.Module):
    """Embedding → GRU → attention → Linear: layers with no ``.weight`` (regression: mixed_precision_ read it)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 8)
        self.gru = nn.GRU(8, 8, batch_first=True)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, _ = self.gru(self.emb(x))
        a, _ = self.attn(r, r, r, need_weights=False)
        return self.fc(a.mean(1))


def test_recurrent_attention_and_embedding_layers_get_bits_for_all_their_weights() -> None:
    torch.manual_seed(0)
    model = _Recurrent().eval()
    tokens = torch.randint(0, 12, (8, 5), generator=torch.Generator().manual_seed(0))
    report = mixed_precision_(model, {"average_bits": 6, "candidate_bits": [4, 8]}, calibration=[tokens])
    assert set(report.meta["bits"]) == {"emb", "gru", "attn", "fc"}
    counted = {"emb": 12 * 8, "gru": 2 * 3 * 8 * 8, "attn": 3 * 8 * 8 + 8 * 8, "fc": 3 * 8}  # every float weight
    assert report.meta["budget_bytes"] == sum(counted.values()) * 6 / 8
    assert report.meta["weight_bytes"] == sum(counted[n] * b / 8 for n, b in report.meta["bits"].items())
    assert {layer.name: layer.details["bits"] for layer in report.layers} == report.meta["bits"]
    assert type(model.gru).__name__ != "GRU" and type(model.attn).__name__ != "MultiheadAttention"


def test_sensitivity_quantizes_every_weight_of_a_recurrent_layer_and_restores_them() -> None:
    torch.manual_seed(0)
    model = _Recurrent().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = layer_sensitivity(model, [torch.randint(0, 12, (4, 5))], [2, 8], layers=["gru", "attn"])
    assert set(s) == {"gru", "attn"} and all(by[2] > by[8] >= 0 for by in s.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(layer_sensitivity(model, [torch.randint(0, 12, (4, 5))], [8])) == {"fc"}  # default: Linear/Conv
