"""Report data: exact JSON round trip, refusal of foreign files, LayerReport.of and Report.of."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.report import REPORT_FORMAT, REPORT_VERSION, LayerReport, Report, SkippedLayer, load_report


def test_json_round_trip_is_exact(tmp_path: Path, full_report: Report) -> None:
    report = full_report
    assert Report.from_dict(report.to_dict()) == report
    assert Report.from_dict(json.loads(report.to_json())) == report
    report.save(tmp_path)
    assert load_report(tmp_path) == report
    assert load_report(tmp_path / "report.json") == report
    empty = Report("empty")
    assert Report.from_dict(json.loads(empty.to_json())) == empty
    assert (empty.to_dict()["format"], empty.to_dict()["version"]) == (REPORT_FORMAT, REPORT_VERSION)


def test_load_rejects_foreign_or_newer_files(tmp_path: Path) -> None:
    with pytest.raises(TorchslimError, match="no report"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text('{"title": "x"}')
    with pytest.raises(TorchslimError, match="not a torchslim report"):
        load_report(tmp_path)
    d = Report("x").to_dict()
    d["version"] = 99
    with pytest.raises(TorchslimError, match="version 99"):
        Report.from_dict(d)
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(TorchslimError, match="cannot read"):
        load_report(tmp_path)


def test_non_json_details_raise_a_typed_error() -> None:
    report = Report("bad", layers=[LayerReport("a", "Linear", (1, 1), 1, 1, details={"x": object()})])
    with pytest.raises(TorchslimError, match="not JSON-ready"):
        report.to_json()


def test_layer_report_of_counts_the_module_weight() -> None:
    conv = nn.Conv2d(3, 4, 3)
    with torch.no_grad():
        conv.weight[1:3] = 0.0
        conv.weight[0, 0, 0, 0] = float("nan")  # NaN is not zero: counted, as `(w != 0).sum()` does
    details = {"criterion": "magnitude", "sparsity_before": 0.0}
    layer = LayerReport.of("features.0", conv, "pruned", details)
    w = conv.weight
    hand = LayerReport("features.0", type(conv).__name__, tuple(w.shape), w.numel(), int((w != 0).sum()), "pruned",
                       details)
    assert layer == hand
    assert (layer.kind, layer.shape, layer.params, layer.nonzeros) == ("Conv2d", (4, 3, 3, 3), 108, 54)
    assert layer.sparsity == 0.5
    details["criterion"] = "changed later"
    assert layer.details["criterion"] == "magnitude"  # details are copied
    assert LayerReport.of("fc", nn.Linear(2, 2)) == LayerReport("fc", "Linear", (2, 2), 4, 4, "kept", {})


def test_layer_report_of_with_an_explicit_weight_and_kind() -> None:
    fc = nn.Linear(4, 3)
    w_q = torch.tensor([[0.0, 1.0, 0.0, 2.0]] * 3)
    layer = LayerReport.of("fc", fc, "quantized", {"bits": 4}, weight=w_q, kind="Linear8")
    assert layer == LayerReport("fc", "Linear8", (3, 4), 12, 6, "quantized", {"bits": 4})
    with pytest.raises(TorchslimError, match=r"layer 'act' \(ReLU\) has no weight tensor.*weight="):
        LayerReport.of("act", nn.ReLU())
    assert LayerReport.of("act", nn.ReLU(), weight=torch.ones(0)).params == 0


def test_report_of_builds_a_technique_report() -> None:
    fc = nn.Linear(4, 3)
    layers = (layer for layer in [LayerReport.of("fc", fc, "pruned")])  # any iterable
    skipped = [SkippedLayer("head", "last layer kept by default")]
    meta = {"sparsity": 0.5}
    r = Report.of("prune", layers, skipped, meta)
    assert r == Report(title="prune", technique="prune", layers=[LayerReport.of("fc", fc, "pruned")],
                       skipped=skipped, meta={"sparsity": 0.5})
    assert r.skipped is not skipped and r.meta is not meta
    assert (r.before, r.after, r.stages) == (None, None, [])
    assert Report.of("prune", title="prune (structured)").title == "prune (structured)"

    class Technique:
        name = "factorize"

    assert Report.of(Technique()).technique == "factorize"
    assert Report.from_dict(r.to_dict()) == r
    with pytest.raises(TorchslimError, match="technique must be a name.*got int"):
        Report.of(3)  # type: ignore[arg-type]
