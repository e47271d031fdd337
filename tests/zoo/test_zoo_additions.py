"""MobileNetV2 (pretrained, torchvision-compatible), densenet_small and transformer_encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from torchslim.data import load_data
from torchslim.errors import TorchslimError
from torchslim.measure import evaluate_accuracy
from torchslim.train import finetune
from torchslim.zoo import MODELS, create_model
from torchslim.zoo.mobilenet import IMAGENET_MEAN, IMAGENET_STD, load_pretrained_state_dict, mobilenet_v2


@pytest.fixture(autouse=True)
def one_thread():
    """Small models on a shared, loaded 2-core machine run far faster (and steadier) on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

# ImageNet class ids (torchvision order).
BUILDINGS = {698, 663, 442, 832, 497, 668, 483, 538, 900, 624, 975}  # palace, monastery, bell cote, stupa, church...
NATURE = {108, 985, 947, 992, 994, 995, 996, 599, 309, 738, 883, 321, 326}  # anemone, daisy, fungi, honeycomb...


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def photo(name: str) -> torch.Tensor:
    """A scikit-learn sample photo, resized (short side 256), centre-cropped to 224, ImageNet-normalised."""
    from sklearn.datasets import load_sample_image

    img = torch.from_numpy(np.array(load_sample_image(name))).permute(2, 0, 1).float()[None] / 255
    h, w = img.shape[-2:]
    s = 256 / min(h, w)
    img = F.interpolate(img, size=(round(h * s), round(w * s)), mode="bilinear", antialias=True, align_corners=False)
    top, left = (img.shape[-2] - 224) // 2, (img.shape[-1] - 224) // 2
    img = img[..., top : top + 224, left : left + 224]
    return (img - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_registered():
    for name in ("mobilenet_v2", "densenet_small", "transformer_encoder"):
        assert name in MODELS


def test_mobilenet_v2_matches_torchvision_shapes_and_loads_strictly():
    model = create_model("mobilenet_v2")
    sd = load_pretrained_state_dict()
    assert set(model.state_dict()) == set(sd)
    assert all(model.state_dict()[k].shape == v.shape for k, v in sd.items())
    assert n_params(model) == 3_504_872  # torchvision's count
    model.load_state_dict(sd, strict=True)
    half = create_model("mobilenet_v2", width_mult=0.5, num_classes=10, in_channels=1)
    assert half(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert n_params(half) < n_params(model) / 2
    with pytest.raises(TorchslimError, match="num_classes=1000"):
        mobilenet_v2(num_classes=10, pretrained=True)


@pytest.fixture(scope="module")
def pretrained_probs() -> dict[str, torch.Tensor]:
    model = mobilenet_v2(pretrained=True).eval()
    with torch.no_grad():
        return {n: model(photo(n)).softmax(1)[0] for n in ("china.jpg", "flower.jpg")}


def test_pretrained_mobilenet_v2_recognises_real_photos(pretrained_probs):
    china, flower = pretrained_probs["china.jpg"], pretrained_probs["flower.jpg"]
    # the Chinese temple photo: a building class first (palace, 698), confidently
    assert int(china.argmax()) in BUILDINGS and float(china.max()) > 0.4
    assert int(china.argmax()) == 698
    # the flower close-up: natural-object classes in the top 5, no building
    top5 = set(flower.topk(5).indices.tolist())
    assert top5 & NATURE and not top5 & BUILDINGS
    # a randomly initialised network is nowhere near this
    rand = create_model("mobilenet_v2").eval()
    with torch.no_grad():
        assert float(rand(photo("china.jpg")).softmax(1)[0, 698]) < 0.05


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3)])
def test_densenet_small_shapes(size, channels):
    m = create_model("densenet_small", in_channels=channels, num_classes=7)
    assert m(torch.randn(2, channels, size, size)).shape == (2, 7)
    assert 30_000 < n_params(m) < 200_000
    # a dense layer concatenates: output channels = input + growth
    layer = m.features[0][0]
    x = torch.randn(1, 24, 8, 8)
    y = layer(x)
    assert y.shape[1] == 24 + 12 and torch.equal(y[:, :24], x)


def test_transformer_encoder_shapes_and_explicit_heads():
    m = create_model("transformer_encoder")
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert m.pos_embed.shape == (1, 16 + 1, 64)  # 7×7 patches → 16 tokens + CLS
    attn = m.blocks[0].attn
    assert attn.num_heads == 4 and attn.head_dim == 16
    assert not any(isinstance(x, torch.nn.MultiheadAttention) for x in m.modules())
    # dim 64, depth 4, mlp 2×: 4 × (4·(64·64+64) + 2·64·128+128+64 + 4·64) + embeddings + head
    block = 4 * (64 * 64 + 64) + (64 * 128 + 128) + (128 * 64 + 64) + 4 * 64
    assert n_params(m) == 4 * block + (49 * 64 + 64) + 64 + 17 * 64 + 2 * 64 + (64 * 10 + 10)
    mean = create_model("transformer_encoder", pool="mean", image_size=8, patch_size=4)
    assert mean(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    with pytest.raises(TorchslimError, match="multiple of patch_size"):
        create_model("transformer_encoder", image_size=28, patch_size=5)


def test_transformer_heads_removed_by_slicing_linears_still_runs():
    torch.manual_seed(0)
    m = create_model("transformer_encoder", image_size=8, patch_size=4, dim=32, depth=1, num_heads=4).eval()
    attn = m.blocks[0].attn
    x = torch.randn(2, 1, 8, 8)
    keep = torch.arange(0, 2 * attn.head_dim)  # heads 0 and 1
    # reference: zero heads 2 and 3's contribution through out_proj
    ref_attn = torch.nn.Linear(attn.out_proj.in_features, attn.out_proj.out_features)
    with torch.no_grad():
        w = attn.out_proj.weight.clone()
        w[:, 2 * attn.head_dim :] = 0
        ref_attn.weight.copy_(w)
        ref_attn.bias.copy_(attn.out_proj.bias)
    original = attn.out_proj
    attn.out_proj = ref_attn
    with torch.no_grad():
        expected = m(x)
    attn.out_proj = original
    for name in ("q_proj", "k_proj", "v_proj"):
        old = getattr(attn, name)
        new = torch.nn.Linear(old.in_features, len(keep))
        with torch.no_grad():
            new.weight.copy_(old.weight[keep])
            new.bias.copy_(old.bias[keep])
        setattr(attn, name, new)
    new_out = torch.nn.Linear(len(keep), original.out_features)
    with torch.no_grad():
        new_out.weight.copy_(original.weight[:, keep])
        new_out.bias.copy_(original.bias)
    attn.out_proj = new_out
    assert attn.num_heads == 2
    with torch.no_grad():
        torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


@pytest.mark.parametrize(
    "name,kwargs,cfg,bar",
    [
        ("densenet_small", {"block_config": (2, 2)}, {"epochs": 8, "lr": 3e-3, "optimizer": "adam", "batch_size": 64}, 0.93),
        (
            "transformer_encoder",
            {"image_size": 8, "patch_size": 4, "dim": 32, "depth": 2, "num_heads": 4},
            {"epochs": 15, "lr": 3e-3, "optimizer": "adamw", "batch_size": 64},
            0.88,
        ),
    ],
)
def test_learns_digits(digits, name, kwargs, cfg, bar):
    torch.manual_seed(0)
    m = create_model(name, in_channels=1, num_classes=10, **kwargs)
    finetune(m, digits, {**cfg, "seed": 0}, progress=False)
    acc = evaluate_accuracy(m, digits.loader("test", 512))
    assert acc > bar, f"{name} test accuracy {acc:.3f} on digits (chance 0.10)"
