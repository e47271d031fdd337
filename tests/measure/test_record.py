"""Measurement record: round trips, formatting, and the composed ``evaluate``."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.measure import FIELDS, Measurement, evaluate, format_change, format_value


def sample(**overrides: object) -> Measurement:
    values: dict[str, object] = dict(
        accuracy=0.9821, params=266_610, nonzeros=21_329, macs=266_200, bytes_dense=1_066_440,
        bytes_sparse=128_000, latency_ms=0.4123, latency_batch=64, latency_threads=2, latency_runs=20,
        peak_memory_bytes=2_000_000,
    )
    values.update(overrides)
    return Measurement(**values)  # type: ignore[arg-type]


def test_round_trip_through_json() -> None:
    for m in (sample(), sample(accuracy=None, latency_ms=None, peak_memory_bytes=None)):
        d = m.to_dict()
        assert d["sparsity"] == pytest.approx(1 - 21_329 / 266_610)
        back = Measurement.from_dict(json.loads(json.dumps(d)))
        assert back == m
        assert back.to_dict() == d


def test_from_dict_rejects_missing_and_unknown() -> None:
    d = sample().to_dict()
    del d["macs"]
    d["flops"] = 1
    with pytest.raises(TorchslimError, match="missing macs; unknown flops"):
        Measurement.from_dict(d)
    with pytest.raises(TorchslimError, match="params must not be null"):
        Measurement.from_dict({**sample().to_dict(), "params": None})


def test_fields_cover_every_figure() -> None:
    names = [name for name, _, _ in FIELDS]
    assert set(names) == {f.name for f in fields(Measurement)} | {"sparsity"}
    assert len(names) == len(set(names))


def test_format_value() -> None:
    assert format_value(0.9821, "pct") == "98.21 %"
    assert format_value(266_610, "int") == "266,610"
    assert format_value(1_069_547, "bytes") == "1.02 MiB"
    assert format_value(512, "bytes") == "512 B"
    assert format_value(0.4123, "ms") == "0.412 ms"
    assert format_value(None, "ms") == "—"
    with pytest.raises(ValueError, match="unknown format kind"):
        format_value(1, "furlongs")


def test_format_change() -> None:
    assert format_change(0.9821, 0.9809, "pct") == "-0.12 pt"
    assert format_change(266_610, 27_200, "int") == "9.8x fewer"
    assert format_change(100, 200, "bytes") == "2.0x larger"
    assert format_change(2.0, 1.0, "ms") == "2.0x faster"
    assert format_change(0.512, 0.498, "ms") == "1.03x faster"
    assert format_change(5, 5, "int") == "same"
    assert format_change(None, 5, "int") == "—"


def test_measure_composes_everything() -> None:
    model = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))
    with torch.no_grad():
        model[0].weight.view(-1)[:200_000] = 0.0
    x = torch.randn(32, 784)
    loader = [(x, model(x).argmax(dim=1))]
    m = evaluate(model, loader, example_input=x, latency_batch=8, threads=1, latency_runs=3)
    assert m.accuracy == 1.0
    assert (m.params, m.nonzeros, m.macs) == (266_610, 66_610, 266_200)
    assert m.bytes_dense == 266_610 * 4 and m.bytes_sparse < m.bytes_dense
    assert m.latency_ms is not None and m.latency_ms > 0
    assert (m.latency_batch, m.latency_threads, m.latency_runs) == (8, 1, 3)
    assert m.peak_memory_bytes is not None and m.peak_memory_bytes > m.bytes_dense
    quick = evaluate(model, example_input=x, with_latency=False, with_memory=False)
    assert quick.accuracy is None and quick.latency_ms is None and quick.peak_memory_bytes is None
    assert quick.latency_runs == 0
