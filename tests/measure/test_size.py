"""Parameter counts, non-zeros and dense/sparse bytes on hand-checked models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.measure import (
    count_nonzeros,
    count_params,
    dense_bytes,
    file_bytes,
    layer_stats,
    sparse_bytes,
    tensor_sparse_bytes,
)


def lenet300() -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
    )


def lenet5() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10),
    )


def test_param_counts_match_hand_computation() -> None:
    # 784*300+300 + 300*100+100 + 100*10+10
    assert count_params(lenet300()) == 266_610
    # conv1 20*25+20=520, conv2 50*500+50=25,050, fc1 800*500+500=400,500, fc2 500*10+10=5,010
    assert count_params(lenet5()) == 431_080
    assert dense_bytes(lenet300()) == 266_610 * 4
    assert dense_bytes(lenet300().half()) == 266_610 * 2


def test_buffers_and_shared_parameters_are_not_counted_twice() -> None:
    bn = nn.BatchNorm1d(10)  # 20 params, 21 buffer elements
    assert count_params(bn) == 20
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, shared)
    assert count_params(model) == 20


def test_nonzeros_after_zeroing_known_weights() -> None:
    model = lenet300()
    with torch.no_grad():
        model[1].weight.view(-1)[:1000] = 0.0
        model[3].bias.zero_()
    assert count_nonzeros(model) == 266_610 - 1000 - 100
    stats = {s.name: s for s in layer_stats(model)}
    assert stats["1"].nonzeros == 235_200 - 1000
    assert stats["1"].sparsity == pytest.approx(1000 / 235_200)


def test_masked_weights_count_as_the_forward_sees_them() -> None:
    model = lenet300()
    torch_prune.l1_unstructured(model[1], "weight", amount=0.5)
    assert count_params(model) == 266_610  # the mask is a buffer
    assert count_nonzeros(model) == 266_610 - 117_600
    stats = {s.name: s for s in layer_stats(model)}
    assert stats["1"].shape == (300, 784) and stats["1"].nonzeros == 117_600


def test_layer_stats_lists_weight_layers_only() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3), nn.LayerNorm(3), nn.Conv1d(1, 2, 3))
    stats = layer_stats(model)
    assert [(s.name, s.kind, s.shape, s.params) for s in stats] == [
        ("0", "Embedding", (10, 4), 40),
        ("1", "Linear", (3, 4), 12),
        ("3", "Conv1d", (2, 1, 3), 6),
    ]
    assert stats[0].to_dict() == {
        "name": "0", "kind": "Embedding", "shape": [10, 4], "params": 40, "nonzeros": 40, "sparsity": 0.0
    }


@pytest.mark.parametrize(
    ("numel", "nnz", "expected"),
    [
        (100, 3, 3 * 4 + min(13, 3 * 2)),  # offsets beat the 13-byte bitmap: 18
        (100, 20, 20 * 4 + min(13, 20 * 2)),  # bitmap beats offsets: 93
        (100, 98, 100 * 4),  # 98*4 + 13 = 405 would exceed dense: stored dense
        (100, 0, 0),
        (70_000, 10, 10 * 4 + min(8_750, 10 * 4)),  # > 65,536 elements: 4-byte offsets
        (70_000, 5_000, 5_000 * 4 + min(8_750, 5_000 * 4)),
    ],
)
def test_tensor_sparse_bytes_formula(numel: int, nnz: int, expected: int) -> None:
    t = torch.zeros(numel)
    t[:nnz] = 1.0
    assert tensor_sparse_bytes(t) == expected
    index_width = 2 if numel <= 65_536 else 4
    assert expected == min(numel * 4, nnz * 4 + min(math.ceil(numel / 8), nnz * index_width))


def test_sparse_bytes_of_a_model() -> None:
    model = nn.Linear(100, 10)  # weight 1,000 elements, bias 10
    with torch.no_grad():
        model.weight.zero_()
        model.weight.view(-1)[:50] = 1.0
    # weight: 50*4 + min(125 bitmap, 100 offsets) = 300; bias: all nonzero -> dense 40
    bias_nnz = int(torch.count_nonzero(model.bias))
    bias_bytes = min(40, bias_nnz * 4 + min(2, bias_nnz * 2))
    assert sparse_bytes(model) == 300 + bias_bytes
    assert sparse_bytes(lenet300()) == dense_bytes(lenet300())


def test_file_bytes(tmp_path: Path) -> None:
    f = tmp_path / "w.bin"
    f.write_bytes(b"x" * 1234)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a").write_bytes(b"y" * 10)
    assert file_bytes(f) == 1234
    assert file_bytes(tmp_path) == 1244
    with pytest.raises(TorchslimError, match="no such file"):
        file_bytes(tmp_path / "missing")
