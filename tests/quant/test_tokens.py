"""Padding-aware calibration: activation statistics and smoothing maxima over real tokens only."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from torchslim.quant import quantize_
from torchslim.quant.tokens import mask_of, real_tokens, token_mask


class _Tokens(nn.Module):
    """Embedding (the pad token 0 is a spike in one channel) -> optional LayerNorm -> Linear -> ReLU -> Linear."""

    def __init__(self, norm: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(20, 8)
        with torch.no_grad():
            self.emb.weight[0] = 0.0
            self.emb.weight[0, 7] = 100.0  # padding: one channel far out of the real tokens' range (also after a LayerNorm)
        self.norm = nn.LayerNorm(8) if norm else nn.Identity()
        if norm:
            with torch.no_grad():
                self.norm.weight.copy_(torch.linspace(0.5, 3.0, 8))
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.norm(self.emb(input_ids)))))


def _sentences(n: int = 12, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 20, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g) for _ in range(n)]


def _padded(sentences: list[torch.Tensor], size: int = 4) -> list[dict[str, torch.Tensor]]:
    """Batches of ``size`` sentences padded with token 0 to the longest."""
    out = []
    for start in range(0, len(sentences), size):
        group = sentences[start : start + size]
        width = max(len(s) for s in group)
        ids = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        for row, s in enumerate(group):
            ids[row, : len(s)], mask[row, : len(s)] = s, 1
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _unpadded(sentences: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    return [{"input_ids": s[None], "attention_mask": torch.ones(1, len(s), dtype=torch.long)} for s in sentences]


def _quantize(model: nn.Module, batches: list, **activation: object) -> tuple[nn.Module, dict]:
    work = copy.deepcopy(model)
    config = {"mode": "static", "calibration": {"batches": len(batches)}, "activation": {"observer": "minmax", **activation},
              "guard": {"enabled": False},  # every batch calibrates (none held back), whatever the batching
              "targets": {"emb": None, "re:fc.*": {}}}  # the float table: statistics compared scale for scale
    report = quantize_(work, config, calibration=batches)
    return work, report.meta


def test_statistics_skip_padded_positions() -> None:
    model, sentences = _Tokens(norm=False).eval(), _sentences()
    padded, alone = _padded(sentences), _unpadded(sentences)
    _, masked = _quantize(model, padded)
    _, reference = _quantize(model, alone)  # the same tokens, no padding anywhere
    _, counted = _quantize(model, padded, mask_key=None)
    # min/max over the real tokens of padded batches = over the sentences one by one, scale for scale
    assert masked["activations"] == reference["activations"]
    # counting the pad token's far larger vector widens the first layer's input range
    first = "emb"  # the activation point of fc1's input (the graph placement names it by its producer)
    assert counted["activations"][first]["scale"] > 5 * masked["activations"][first]["scale"]
    real = sum(len(s) for s in sentences)
    total = sum(b["attention_mask"].numel() for b in padded)
    assert real < total
    assert masked["calibration_tokens"] == {"mask_key": "attention_mask", "real": real, "total": total}
    assert "calibration_tokens" not in counted


def test_smoothing_maxima_skip_padded_positions() -> None:
    model, sentences = _Tokens(norm=True).eval(), _sentences(seed=1)
    runs = [_quantize(model, b, smooth=0.5, **k) for b, k in ((_padded(sentences), {}), (_unpadded(sentences), {}),
                                                              (_padded(sentences), {"mask_key": None}))]
    (masked, meta), (reference, ref_meta), (counted, _) = runs
    assert meta["smoothing"]["groups"][0]["layers"] == ["fc1"]
    assert meta["smoothing"] == ref_meta["smoothing"]

    def factors(m: nn.Module) -> torch.Tensor:
        return next(v for k, v in m.state_dict().items() if k.startswith("fc1.input_smooth."))

    assert torch.equal(factors(masked), factors(reference))  # same channel maxima, same smoothing factors
    assert not torch.allclose(factors(counted), factors(masked))  # the pad token's LayerNorm output counted


def test_a_key_the_batches_lack_counts_every_position() -> None:
    model, batches = _Tokens(norm=False).eval(), _padded(_sentences())
    _, other = _quantize(model, batches, mask_key="token_type_ids")
    _, counted = _quantize(model, batches, mask_key=None)
    assert other["activations"] == counted["activations"] and "calibration_tokens" not in other


def test_mask_helpers() -> None:
    x = torch.arange(24.0).reshape(2, 3, 4)
    mask = torch.tensor([[1, 0, 1], [0, 0, 1]])
    with token_mask(mask):
        assert torch.equal(real_tokens(x), x[mask.bool()])
        assert real_tokens(torch.ones(2, 4)).shape == (2, 4)  # pooled [batch, features]: not per token
        assert real_tokens(torch.ones(3, 2, 4)).shape == (3, 2, 4)  # leading dims are not the mask's
    with token_mask(torch.zeros(2, 3)):  # no real token: every position counts
        assert real_tokens(x).shape == x.shape
    assert real_tokens(x).shape == x.shape  # the mask ends with the block
    assert mask_of({"attention_mask": torch.ones(2, 3, 4)}, "attention_mask") is None  # not [batch, tokens]
    assert mask_of({"input_ids": mask}, None) is None


def test_bad_mask_key_names_the_field() -> None:
    from torchslim.errors import ConfigError

    model = _Tokens(norm=False).eval()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="mask_key"):
        quantize_(model, {"mode": "static", "activation": {"mask_key": 3}}, calibration=_padded(_sentences()))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
