"""The old import paths of ONNX export and ONNX Runtime still work, give the new objects and warn."""

from __future__ import annotations

import importlib
import warnings

import pytest

from torchslim import deploy

_OLD_ONNX = importlib.import_module("torchslim.quant.onnx")


@pytest.mark.parametrize("name", sorted(_OLD_ONNX._MOVED))
def test_every_name_of_quant_onnx_is_forwarded_with_a_warning(name: str) -> None:
    home, _, new_name = _OLD_ONNX._MOVED[name].partition(":")
    message = rf"torchslim\.quant\.onnx\.{name} moved: use `from {home} import {new_name}`"
    with pytest.warns(DeprecationWarning, match=message):
        value = getattr(_OLD_ONNX, name)
    assert value is getattr(importlib.import_module(home), new_name)


def test_quant_onnx_forwards_the_names_tests_and_users_rely_on() -> None:
    must = {
        "OrtModel", "export_fp32", "export_qdq", "ort_optimize", "qdq_summary", "_fuse_attention",
        "_space_to_depth_conv_pool", "_pad_conv_input_channels", "_hoist_quantize_linear", "_fuse_matmul_bias",
        "_dedupe_quantize_linear", "_fold_weight_quantizers", "_const_values", "_graph_index", "_tensor_ranks",
    }
    assert must <= set(_OLD_ONNX._MOVED)
    with pytest.warns(DeprecationWarning):
        from torchslim.quant.onnx import _fuse_attention, export_qdq
    assert export_qdq is deploy.export_qdq and _fuse_attention is deploy.passes.fuse_attention
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _OLD_ONNX.nope  # noqa: B018


@pytest.mark.parametrize("name", ["OrtModel", "export_fp32", "export_qdq", "ort_optimize"])
def test_quant_package_forwards_export_names(name: str) -> None:
    from torchslim import quant

    message = rf"torchslim\.quant\.{name} moved: use `from torchslim\.deploy import {name}`"
    with pytest.warns(DeprecationWarning, match=message):
        assert getattr(quant, name) is getattr(deploy, name)
    assert name not in quant.__all__


def test_quant_package_import_statement_still_works() -> None:
    with pytest.warns(DeprecationWarning, match="torchslim.deploy"):
        from torchslim.quant import OrtModel, export_qdq
    assert (OrtModel, export_qdq) == (deploy.OrtModel, deploy.export_qdq)
    with pytest.raises(ImportError):
        from torchslim.quant import not_a_name  # noqa: F401


@pytest.mark.parametrize(
    "name,new_path",
    [
        ("onnx_export_bytes", "torchslim.deploy"),
        ("ort_session", "torchslim.deploy"),
        ("ort_feed", "torchslim.deploy"),
        ("measure_ort_latency", "torchslim.deploy"),
        ("eager_attention", "torchslim.deploy"),
        ("OnnxSource", "torchslim.deploy"),
        ("_FlatIO", "torchslim.deploy.export"),
        ("_flat_inputs", "torchslim.deploy.export"),
    ],
)
def test_measure_latency_forwards_onnx_names(name: str, new_path: str) -> None:
    latency = importlib.import_module("torchslim.measure.latency")
    message = rf"torchslim\.measure\.latency\.{name} moved: use `from {new_path} import {name}`"
    with pytest.warns(DeprecationWarning, match=message):
        value = getattr(latency, name)
    assert value is getattr(importlib.import_module(new_path), name)


@pytest.mark.parametrize("name", ["measure_ort_latency", "onnx_export_bytes", "ort_session"])
def test_measure_package_forwards_onnx_names(name: str) -> None:
    measure = importlib.import_module("torchslim.measure")
    message = rf"torchslim\.measure\.{name} moved: use `from torchslim\.deploy import {name}`"
    with pytest.warns(DeprecationWarning, match=message):
        assert getattr(measure, name) is getattr(deploy, name)
    assert name not in measure.__all__


def test_eager_timing_stays_in_measure_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from torchslim.measure import LatencyResult, measure_latency, num_threads
        from torchslim.measure.latency import latency_result
    assert latency_result([1.0], 1, 1) == LatencyResult(1.0, 1.0, 1.0, 1, 1, 1)
    assert callable(measure_latency) and callable(num_threads)


def test_quant_and_measure_do_not_import_deploy_at_module_level() -> None:
    import subprocess
    import sys

    code = "import sys, torchslim, torchslim.quant, torchslim.measure; print('torchslim.deploy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
