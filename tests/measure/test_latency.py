"""Latency and peak memory: positive, sized by the batch, global state restored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchslim.measure import measure_latency, model_state_bytes, num_threads, peak_inference_memory


def small_cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 26 * 26, 10))


def test_latency_median_positive_and_threads_restored() -> None:
    before = torch.get_num_threads()
    model = small_cnn().train()
    result = measure_latency(model, torch.randn(3, 1, 28, 28), batch_size=8, threads=1, runs=5, warmup=1)
    assert result.median_ms > 0
    assert result.p10_ms <= result.median_ms <= result.p90_ms
    assert (result.runs, result.batch, result.threads) == (5, 8, 1)
    assert torch.get_num_threads() == before
    assert model.training


def test_default_threads_is_current_count() -> None:
    result = measure_latency(nn.Linear(4, 4), torch.randn(1, 4), batch_size=2, runs=2, warmup=0)
    assert result.threads == torch.get_num_threads()


def test_threads_restored_on_error() -> None:
    before = torch.get_num_threads()

    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        measure_latency(Boom(), torch.randn(1, 4), threads=1, runs=1)
    assert torch.get_num_threads() == before
    with num_threads(1) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    "kwargs", [{"runs": 0}, {"warmup": -1}, {"batch_size": 0}, {"threads": 0}, {"threads": 10**6}, {"runs": 10**30}]
)
def test_bad_arguments(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        measure_latency(nn.Linear(4, 4), torch.randn(1, 4), **kwargs)


def test_peak_memory_grows_with_batch_and_covers_the_output() -> None:
    model = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 10))
    x = torch.randn(1, 784)
    static = model_state_bytes(model)
    small = peak_inference_memory(model, x, 1)
    big = peak_inference_memory(model, x, 64)
    assert big > small > static
    # at least weights + input batch + the (64, 300) hidden activation + the (64, 10) output
    assert big >= static + 64 * 784 * 4 + 64 * 300 * 4 + 64 * 10 * 4
    # and not absurdly more than every activation live at once
    assert big <= static + 64 * 784 * 4 + 2 * (64 * 300 * 4) + 64 * 10 * 4 + 1_000_000
