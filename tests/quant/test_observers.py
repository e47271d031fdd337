"""Observers: statistics and the scales they give."""

from __future__ import annotations

import pytest
import torch

from torchslim.errors import TorchslimError, UnknownNameError
from torchslim.quant.affine import QuantSpec, quant_error
from torchslim.quant.observers import OBSERVERS, make_observer


def test_registry_lists_names_on_miss() -> None:
    assert OBSERVERS.names() == ["minmax", "moving_average", "mse", "percentile"]
    with pytest.raises(UnknownNameError, match="registered: minmax, moving_average, mse, percentile"):
        make_observer("kl", QuantSpec())


def test_minmax_accumulates_over_batches() -> None:
    obs = make_observer("minmax", QuantSpec(signed=False, symmetric=False))
    obs.update(torch.tensor([0.0, 1.0]))
    obs.update(torch.tensor([-0.5, 0.2]))
    qp = obs.qparams()
    assert float(qp.scale) == pytest.approx(1.5 / 255)
    assert int(qp.zero_point) == 85  # round(0.5 / (1.5/255)) = 85


def test_minmax_per_channel_axis1() -> None:
    obs = make_observer("minmax", QuantSpec(granularity="channel", axis=1))
    obs.update(torch.tensor([[1.0, -4.0], [2.0, 0.5]]))
    assert torch.allclose(obs.qparams().scale * 127.5, torch.tensor([2.0, 4.0]))


def test_moving_average() -> None:
    obs = make_observer("moving_average", QuantSpec(), momentum=0.5)
    obs.update(torch.tensor([-4.0, 4.0]))
    obs.update(torch.tensor([-2.0, 2.0]))
    assert float(obs.max_val) == 3.0 and float(obs.min_val) == -3.0


def test_percentile_ignores_outliers() -> None:
    x = torch.cat([torch.linspace(0, 1, 10000), torch.tensor([100.0])])
    mm = make_observer("minmax", QuantSpec(signed=False, symmetric=False))
    pc = make_observer("percentile", QuantSpec(signed=False, symmetric=False), percentile=99.9)
    mm.update(x)
    pc.update(x)
    assert float(pc.qparams().scale) < float(mm.qparams().scale) / 50


def test_mse_beats_minmax_error_at_4_bits() -> None:
    torch.manual_seed(0)
    x = torch.randn(20000)
    spec = QuantSpec(bits=4)
    mm, mse = make_observer("minmax", spec), make_observer("mse", spec)
    mm.update(x)
    mse.update(x)
    assert float(mse.qparams().scale) < float(mm.qparams().scale)
    assert quant_error(x, mse.qparams()) < 0.7 * quant_error(x, mm.qparams())


def test_mse_per_channel_never_worse_than_minmax() -> None:
    torch.manual_seed(1)
    w = torch.randn(8, 64) * torch.linspace(0.1, 2, 8)[:, None]
    spec = QuantSpec(bits=3, granularity="channel", axis=0)
    mm, mse = make_observer("minmax", spec), make_observer("mse", spec)
    mm.update(w)
    mse.update(w)
    assert mse.qparams().scale.shape == (8,)
    assert quant_error(w, mse.qparams()) <= quant_error(w, mm.qparams())


def test_no_data_is_a_clear_error() -> None:
    with pytest.raises(TorchslimError, match="seen no data"):
        make_observer("mse", QuantSpec()).qparams()


@pytest.mark.parametrize("name", ["mse", "percentile"])
def test_sampling_observers_see_every_channel_of_a_large_activation(name) -> None:
    # (tokens, channels) with one outlier channel; 460,800 values > max_samples, so the observer samples.
    # A stride of 2 would keep only even channels and clip channel 1 (all 40.0) to the bulk's range.
    torch.manual_seed(0)
    x = torch.randn(1200, 384)
    x[:, 1] = 40.0
    kwargs = {"percentile": 99.9} if name == "percentile" else {}
    obs = make_observer(name, QuantSpec(signed=False, symmetric=False), **kwargs)
    obs.update(x)
    qp = obs.qparams()
    top = float(qp.scale) * (255 - int(qp.zero_point))
    assert top >= 39.0
    # deterministic: the same batches give the same parameters
    again = make_observer(name, QuantSpec(signed=False, symmetric=False), **kwargs)
    again.update(x)
    assert float(again.qparams().scale) == float(qp.scale)
