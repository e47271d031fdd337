"""Bias correction: the quantized layers' mean outputs brought back to the float model's, sequentially."""

from __future__ import annotations

import copy

import torch
from torch import nn

from torchslim.quant import quantize_
from torchslim.quant.correct import uncorrected
from torchslim.quant.ptq import quant_info, rebuild_quantized

OFF = {"mode": "static", "guard": {"enabled": False}, "weight": {"bits": 4}}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64, bias=False), nn.ReLU(), nn.Linear(64, 16)).eval()


def _batches(n: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(128, 32, generator=g) + 2.0 for _ in range(n)]  # inputs with a large mean


def _mean_error(ref: nn.Module, model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x) - ref(x)).mean(0).abs().max())


def test_bias_correction_removes_the_mean_output_error() -> None:
    ref, batches = _model(), _batches()
    plain, corrected = copy.deepcopy(ref), copy.deepcopy(ref)
    quantize_(plain, {**OFF, "bias_correction": False}, calibration=batches)
    report = quantize_(corrected, OFF, calibration=batches)
    meta = report.meta["bias_correction"]
    assert meta["layers"] == 2 and meta["batches"] == 4 and meta["added_bias"] == ["0"]  # the bias-free layer got one
    x = torch.randn(256, 32, generator=torch.Generator().manual_seed(7)) + 2.0  # unseen data of the same kind
    assert _mean_error(ref, corrected, x) < 0.25 * _mean_error(ref, plain, x)
    with uncorrected([corrected[0], corrected[2]]):  # the shifts taken back out: the uncorrected model again
        assert torch.allclose(corrected(x), plain(x), atol=1e-6)
    assert "bias_correction" not in quantize_(copy.deepcopy(ref), {"mode": "weight_only"}).meta


def test_a_corrected_model_rebuilds_with_the_bias_it_gained() -> None:
    model = _model()
    quantize_(model, OFF, calibration=_batches())
    fresh = _model()
    assert fresh[0].bias is None
    rebuild_quantized(fresh, quant_info(model), model.state_dict())
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(8, 32)
    assert torch.equal(fresh(x), model(x))
