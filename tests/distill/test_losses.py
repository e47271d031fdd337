import math

import pytest
import torch
import torch.nn.functional as F

from torchslim.distill.losses import (
    attention_map,
    attention_transfer_loss,
    embedding_loss,
    feature_loss,
    hinton_loss,
    make_adapter,
    pooled,
    soft_target_loss,
)
from torchslim.errors import TorchslimError


def _softmax(v, t):
    e = [math.exp(x / t) for x in v]
    return [x / sum(e) for x in e]


def test_soft_target_loss_equals_hand_computed_value():
    s, t, T = [1.0, 2.0, 3.0], [3.0, 1.0, 0.5], 2.0
    ps, pt = _softmax(s, T), _softmax(t, T)
    expected = T * T * sum(q * math.log(q / p) for p, q in zip(ps, pt))
    got = soft_target_loss(torch.tensor([s]), torch.tensor([t]), T)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # batch mean: a second, identical-logits row contributes zero
    got2 = soft_target_loss(torch.tensor([s, [0.0, 0.0, 0.0]]), torch.tensor([t, [5.0, 5.0, 5.0]]), T)
    assert got2.item() == pytest.approx(expected / 2, rel=1e-6)


def test_hinton_loss_mixes_soft_and_hard_terms_by_alpha():
    torch.manual_seed(0)
    s, t, y = torch.randn(5, 4), torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    soft, hard = soft_target_loss(s, t, 3.0), F.cross_entropy(s, y)
    assert hinton_loss(s, t, y, 3.0, 0.7).item() == pytest.approx((0.7 * soft + 0.3 * hard).item(), rel=1e-6)
    assert hinton_loss(s, t, y, 3.0, 1.0).item() == pytest.approx(soft.item(), rel=1e-6)
    assert hinton_loss(s, t, y, 3.0, 0.0).item() == pytest.approx(hard.item(), rel=1e-6)
    with pytest.raises(TorchslimError, match="alpha"):
        hinton_loss(s, t, y, 3.0, 1.5)


def test_soft_target_loss_zero_iff_equal_and_shape_checked():
    x = torch.randn(3, 10)
    assert soft_target_loss(x, x.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_target_loss(x, torch.randn(3, 10), 4.0).item() > 0
    with pytest.raises(TorchslimError, match="differ in shape"):
        soft_target_loss(torch.randn(3, 10), torch.randn(3, 5), 4.0)


def test_feature_losses():
    a = torch.randn(4, 8, 3, 3)
    assert feature_loss(a, a, "mse").item() == 0.0
    assert feature_loss(a, 3 * a, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert feature_loss(a, -a, "cosine").item() == pytest.approx(2.0, abs=1e-6)
    assert feature_loss(a, torch.zeros_like(a), "mse").item() == pytest.approx(a.pow(2).mean().item(), rel=1e-6)


def test_attention_transfer_ignores_channel_count_and_pools_spatial_size():
    a = torch.randn(2, 4, 8, 8)
    assert attention_map(a).shape == (2, 64)
    assert attention_map(a).norm(dim=1).allclose(torch.ones(2))
    assert attention_transfer_loss(a, torch.cat([a, a, a], 1)).item() == pytest.approx(0.0, abs=1e-7)
    assert attention_transfer_loss(a, torch.randn(2, 16, 4, 4)).item() > 0  # 8x8 pooled to 4x4
    with pytest.raises(TorchslimError, match="conv feature maps"):
        attention_transfer_loss(torch.randn(2, 4), torch.randn(2, 4))


def test_embedding_losses_and_pooling():
    e = torch.randn(6, 16)
    assert embedding_loss(e, 2 * e, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert embedding_loss(e, e, "mse").item() == 0.0
    assert pooled(torch.ones(2, 5, 3) * torch.arange(5.0).view(1, 5, 1)).allclose(torch.full((2, 3), 2.0))
    with pytest.raises(TorchslimError, match="differ in shape"):
        embedding_loss(e, torch.randn(6, 8))


def test_adapters_pick_conv_or_linear_and_refuse_impossible_shapes():
    assert make_adapter((2, 8, 4, 4), (2, 8, 4, 4)) is None
    conv = make_adapter((2, 8, 4, 4), (2, 16, 4, 4))
    assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (1, 1) and conv(torch.randn(2, 8, 4, 4)).shape == (2, 16, 4, 4)
    lin = make_adapter((2, 5, 32), (2, 5, 64))
    assert isinstance(lin, torch.nn.Linear) and lin(torch.randn(2, 5, 32)).shape == (2, 5, 64)
    with pytest.raises(TorchslimError, match="1x1 conv"):
        make_adapter((2, 8, 4, 4), (2, 16, 2, 2), "conv1x1")
    with pytest.raises(TorchslimError, match="no linear adapter"):
        make_adapter((2, 8, 4, 4), (2, 16, 2, 2))
    with pytest.raises(TorchslimError, match="'none'"):
        make_adapter((2, 8), (2, 16), "none")
