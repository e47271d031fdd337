"""Sample measurements and a report with every section, shared by the report tests."""

from __future__ import annotations

import pytest

from torchslim.measure import Measurement
from torchslim.report import LayerReport, Report, SkippedLayer, StageRecord, machine_meta

BEFORE = Measurement(
    accuracy=0.9821, params=266_610, nonzeros=266_610, macs=266_200, bytes_dense=1_066_440,
    bytes_sparse=1_066_440, latency_ms=0.512, latency_batch=64, latency_threads=2, latency_runs=20,
    peak_memory_bytes=1_420_744,
)
AFTER = Measurement(
    accuracy=0.9809, params=266_610, nonzeros=21_329, macs=266_200, bytes_dense=1_066_440,
    bytes_sparse=128_337, latency_ms=0.498, latency_batch=64, latency_threads=2, latency_runs=20,
    peak_memory_bytes=1_420_744,
)


@pytest.fixture
def before() -> Measurement:
    return BEFORE


@pytest.fixture
def after() -> Measurement:
    return AFTER


@pytest.fixture
def full_report() -> Report:
    return Report(
        title="Prune LeNet-300-100",
        technique="prune",
        layers=[
            LayerReport("fc1", "Linear", (300, 784), 235_200, 18_816, "pruned",
                        {"criterion": "magnitude", "sparsity_before": 0.0}),
            LayerReport("<evil>", "Linear", (100, 300), 30_000, 2_400, "pruned", {"sparsity_before": 0.0}),
            LayerReport("fc3", "Linear", (10, 100), 1_000, 1_000),
        ],
        skipped=[SkippedLayer("fc3", "last layer kept by default")],
        before=BEFORE,
        after=AFTER,
        stages=[
            StageRecord("baseline", "measure", 0.5, BEFORE, {}),
            StageRecord("prune", "prune", 1.25, AFTER, {"sparsity": 0.92, "criterion": "magnitude"}),
            StageRecord("export", "export", 0.1, None, {"path": "model.onnx"}),
        ],
        meta={"model": "zoo:lenet300", "seed": 0, "machine": machine_meta()},
    )
