"""ONNX Runtime latency: fp32 export is faithful, timing is sane, every source kind works."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from torchslim.deploy import measure_ort_latency, onnx_export_bytes, ort_feed, ort_session
from torchslim.errors import TorchslimError
from torchslim.zoo import create_model


def test_fp32_export_matches_eager_resnet() -> None:
    torch.manual_seed(0)
    model = create_model("resnet_cifar", depth=8, in_channels=1).eval()
    x = torch.randn(5, 1, 28, 28)
    sess = ort_session(onnx_export_bytes(model, x), threads=1)
    got = sess.run(None, ort_feed(sess, x))[0]
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_latency_from_module_path_bytes_and_proto(tmp_path) -> None:
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 26 * 26, 10)).train()
    x = torch.randn(2, 1, 28, 28)
    before = torch.get_num_threads()
    r = measure_ort_latency(model, x, batch_size=16, threads=1, runs=4, warmup=1)
    assert r.median_ms > 0 and r.p10_ms <= r.median_ms <= r.p90_ms
    assert (r.batch, r.threads, r.runs) == (16, 1, 4)
    assert model.training and torch.get_num_threads() == before
    data = onnx_export_bytes(model, x)
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    for src in (data, path, str(path), onnx.load_from_string(data)):
        assert measure_ort_latency(src, x, batch_size=3, threads=1, runs=2, warmup=0).batch == 3


def test_dict_inputs_fed_by_name() -> None:
    class Two(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"sum": a + 2 * b}

    ex = {"b": torch.ones(1, 3), "a": torch.zeros(1, 3)}
    data = onnx_export_bytes(Two(), ex)
    sess = ort_session(data, threads=1)
    out = sess.run(None, ort_feed(sess, {"a": torch.ones(2, 3), "b": torch.ones(2, 3)}))[0]
    np.testing.assert_allclose(out, np.full((2, 3), 3.0))
    assert measure_ort_latency(data, ex, batch_size=4, threads=1, runs=2).median_ms > 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="runs"):
        measure_ort_latency(nn.Linear(2, 2), torch.randn(1, 2), runs=0)
    with pytest.raises(ValueError, match="threads"):
        measure_ort_latency(nn.Linear(2, 2), torch.randn(1, 2), threads=0, runs=1)
    with pytest.raises(TorchslimError, match="model_or_onnx"):
        measure_ort_latency(42, torch.randn(1, 2))  # type: ignore[arg-type]
