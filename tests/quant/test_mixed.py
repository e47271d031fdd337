"""Mixed precision: exact bit allocation under a budget; sensitivity-driven choice beats uniform."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from torchslim.errors import ConfigError, TransformRefusedError
from torchslim.measure import evaluate_accuracy
from torchslim.quant import allocate_bits, layer_sensitivity, mixed_precision_, quantize_
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
