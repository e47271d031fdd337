"""MAC counts from torch's FLOP counter, checked against hand computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.measure import count_macs


def lenet300() -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
    )


def lenet5() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10),
    )


def test_mlp_macs() -> None:
    # 784*300 + 300*100 + 100*10
    assert count_macs(lenet300(), torch.randn(16, 1, 28, 28)) == 266_200


def test_lenet5_macs() -> None:
    # conv1 24*24*20*(1*25)=288,000; conv2 8*8*50*(20*25)=1,600,000; fc 400,000 + 5,000
    assert count_macs(lenet5(), torch.randn(4, 1, 28, 28)) == 2_293_000


def test_macs_are_per_sample_and_ignore_zeros() -> None:
    model = lenet300()
    with torch.no_grad():
        model[1].weight.zero_()
    assert count_macs(model, torch.randn(1, 784)) == count_macs(model, torch.randn(64, 784)) == 266_200


def test_training_mode_is_restored() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Dropout(), nn.Linear(8, 2))
    model.train()
    model[2].eval()  # a mixed state must come back exactly
    assert count_macs(model, torch.randn(3, 8)) == 8 * 8 + 8 * 2
    assert [m.training for m in model.modules()] == [True, True, True, False, True]
    assert model[1].running_mean.abs().sum() == 0  # eval forward did not update BN statistics


def test_dict_and_tuple_inputs() -> None:
    class TwoIn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(5, 3)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(y)

    model = TwoIn()
    assert count_macs(model, (torch.randn(2, 4), torch.randn(2, 5))) == 27
    assert count_macs(model, {"x": torch.randn(2, 4), "y": torch.randn(2, 5)}) == 27


def test_bad_example_input() -> None:
    with pytest.raises(TorchslimError, match="example_input"):
        count_macs(nn.Linear(2, 2), [1, 2])  # type: ignore[arg-type]


class _SelfAttention(nn.Module):
    def __init__(self, need_weights: bool) -> None:
        super().__init__()
        self.attn, self.need_weights = nn.MultiheadAttention(32, 4, batch_first=True), need_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=self.need_weights)[0]


# 10 tokens of width 32: q/k/v projections 3*10*32*32, output projection 10*32*32, scores and mixing 2*10*10*32
_MHA_MACS = 3 * 10 * 32 * 32 + 10 * 32 * 32 + 2 * 10 * 10 * 32


@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_attention_is_counted_in_full_and_the_fast_path_setting_is_restored(need_weights: bool) -> None:
    # under no_grad in eval the fused fast path (torch._native_multi_head_attention) would hide everything: 0 MACs
    assert torch.backends.mha.get_fastpath_enabled()
    assert count_macs(_SelfAttention(need_weights), torch.randn(2, 10, 32)) == _MHA_MACS
    assert torch.backends.mha.get_fastpath_enabled()


def test_transformer_encoder_layer_is_counted_past_its_fast_path() -> None:
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    assert count_macs(layer, torch.randn(1, 10, 32)) == _MHA_MACS + 2 * 10 * 32 * 64


def test_scaled_dot_product_attention_scores_count_on_the_cpu_with_grouped_query_heads() -> None:
    class Sdpa(nn.Module):
        def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
            return nn.functional.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)

    q, kv = torch.randn(1, 4, 10, 8), torch.randn(1, 2, 12, 8)
    assert count_macs(Sdpa(), (q, kv)) == 4 * 10 * 12 * (8 + 8)


@pytest.mark.parametrize("rnn, gates", [(nn.LSTM, 4), (nn.GRU, 3), (nn.RNN, 1)])
def test_recurrent_layers_count_every_step(rnn: type[nn.Module], gates: int) -> None:
    # nn.LSTM runs oneDNN's fused layer on the CPU, which torch's counter has no formula for (0 MACs)
    layer = rnn(16, 32, num_layers=2, batch_first=True)
    per_step = gates * (16 * 32 + 32 * 32) + gates * (32 * 32 + 32 * 32)
    assert count_macs(layer, torch.randn(3, 10, 16)) == 10 * per_step
