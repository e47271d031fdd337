"""The pass lists: the order export_qdq and ort_optimize run them in, and skipping by name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchslim.deploy import ORT_PASSES, QDQ_PASSES, Pass, export_fp32, export_qdq, passes, run_passes
from torchslim.errors import TorchslimError
from torchslim.quant import quantize_


def test_pass_order() -> None:
    assert [p.name for p in QDQ_PASSES] == [
        "fold_weight_quantizers", "dedupe_smoothing_mul", "dedupe_quantize_linear", "hoist_quantize_linear",
        "space_to_depth", "pad_channels",
    ]
    assert [p.name for p in ORT_PASSES] == ["fuse_matmul_bias", "fuse_attention"]


def test_run_passes_skips_by_name_and_refuses_unknown_names() -> None:
    calls: list[str] = []
    chain = (Pass("a", lambda proto: calls.append("a") or 1), Pass("b", lambda proto: calls.append("b") or 2))
    proto = export_fp32(nn.Linear(2, 2), torch.randn(1, 2))
    assert run_passes(proto, chain) == {"a": 1, "b": 2} and calls == ["a", "b"]
    assert run_passes(proto, chain, skip={"a"}) == {"b": 2}
    with pytest.raises(TorchslimError, match=r"unknown pass\(es\) \['c'\] in skip: the passes are \['a', 'b'\]"):
        run_passes(proto, chain, skip={"c"})


def test_export_qdq_runs_each_pass_once_in_order(monkeypatch) -> None:
    ran: list[str] = []
    traced = tuple(Pass(p.name, lambda proto, p=p: ran.append(p.name) or p.run(proto)) for p in QDQ_PASSES)
    monkeypatch.setattr(passes, "QDQ_PASSES", traced)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 2))
    x = torch.randn(8, 1, 8, 8)
    quantize_(model, {"mode": "static"}, calibration=[x])
    export_qdq(model, x[:1], space_to_depth=False)
    assert ran == [p.name for p in QDQ_PASSES if p.name != "space_to_depth"]
