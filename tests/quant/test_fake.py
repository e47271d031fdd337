"""Fake quantization: forward equals the affine math; STE and LSQ gradients."""

from __future__ import annotations

import torch

from torchslim.quant.affine import QParams, QuantSpec, fake_quantize, qparams_from_tensor
from torchslim.quant.fake import FakeQuantize, ste_fake_quantize


def test_forward_matches_affine_math() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 16)
    fq = FakeQuantize(QuantSpec(bits=4, granularity="channel", axis=0))
    y = fq(x)
    assert torch.equal(y, fake_quantize(x, qparams_from_tensor(x, QuantSpec(bits=4, granularity="channel", axis=0))))


def test_ste_gradient_passes_inside_and_stops_outside() -> None:
    qp = QParams(torch.tensor(0.1), torch.tensor(0, dtype=torch.int32), -8, 7)
    x = torch.tensor([0.05, -0.33, 0.7, 0.9, -0.9], requires_grad=True)
    ste_fake_quantize(x, qp).mul(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])).sum().backward()
    # 0.9 / 0.1 = 9 > 7 and -0.9 / 0.1 = -9 < -8 saturate: zero gradient there
    assert x.grad.tolist() == [1.0, 2.0, 3.0, 0.0, 0.0]


def test_disabled_is_identity_and_frozen_observer_keeps_scale() -> None:
    fq = FakeQuantize(QuantSpec())
    fq(torch.tensor([-1.0, 1.0]))
    fq.observing = False
    before = fq.scale.clone()
    fq(torch.tensor([-10.0, 10.0]))
    assert torch.equal(fq.scale, before)
    fq.enabled = False
    x = torch.tensor([0.123456])
    assert torch.equal(fq(x), x)


def test_lsq_learns_the_step_size() -> None:
    torch.manual_seed(0)
    x = torch.randn(4096)
    fq = FakeQuantize(QuantSpec(bits=3), learn_scale=True)
    fq(x)  # initialise from min-max
    fq.observing = False
    assert fq.log_scale is not None and fq.log_scale.requires_grad
    start = float(((fq(x) - x) ** 2).mean().detach())
    opt = torch.optim.Adam([fq.log_scale], lr=0.05)
    for _ in range(60):
        loss = ((fq(x) - x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = float(((fq(x) - x) ** 2).mean().detach())
    assert end < 0.6 * start  # min-max is far from MSE-optimal at 3 bits; LSQ finds a better step
    fq.freeze_learned_scale()
    assert torch.allclose(fq.scale, torch.exp(fq.log_scale.detach()))


def test_lsq_input_gradient_is_straight_through() -> None:
    fq = FakeQuantize(QuantSpec(bits=8), learn_scale=True)
    x = torch.linspace(-1, 1, 11)
    fq(x)
    fq.observing = False
    xr = x.clone().requires_grad_(True)
    fq(xr).sum().backward()
    # +1.0 / (1 / 127.5) = 127.5 rounds to 128 > 127: saturated, so no gradient; all others pass through
    assert xr.grad.tolist() == [1.0] * 10 + [0.0]
