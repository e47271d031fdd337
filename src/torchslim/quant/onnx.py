"""Deprecated location of ONNX export and ONNX Runtime: use :mod:`torchslim.deploy`.

Every name this module had is forwarded to its new home with a
``DeprecationWarning`` that names the new import path (``deploy`` imports
``quant``, so this module imports nothing from it until a name is asked for).

Example:
    >>> import warnings
    >>> import torchslim.quant.onnx as old
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     summary = old.qdq_summary
    >>> from torchslim.deploy import qdq_summary
    >>> summary is qdq_summary, str(caught[0].message)
    (True, 'torchslim.quant.onnx.qdq_summary moved: use `from torchslim.deploy import qdq_summary`')
"""

from __future__ import annotations

from torchslim._compat import moved_names

__all__ = ["OrtModel", "export_fp32", "export_qdq", "ort_optimize", "qdq_summary"]  # noqa: F822 (forwarded)

_GRAPH = "torchslim.deploy.onnx_graph"
_PASSES = "torchslim.deploy.passes"

# old name -> "module that holds it now:its name there"
_MOVED: dict[str, str] = {
    **{name: f"torchslim.deploy:{name}" for name in (
        "OrtModel", "export_fp32", "export_qdq", "ort_optimize", "qdq_summary",
        "ort_feed", "ort_session", "onnx_export_bytes",
    )},
    "_check_exportable": "torchslim.deploy:check_exportable",
    "_const_values": f"{_GRAPH}:const_values",
    "_node_reads": f"{_GRAPH}:node_reads",
    "_set_nodes": f"{_GRAPH}:set_nodes",
    "_drop_unused_initializers": f"{_GRAPH}:drop_unused_initializers",
    "_prune_dead_nodes": f"{_GRAPH}:prune_dead_nodes",
    "_graph_index": f"{_GRAPH}:graph_index",
    "_attr": f"{_GRAPH}:attr",
    "_IntConvWeights": f"{_GRAPH}:IntConvWeights",
    "_int_conv_weights": f"{_GRAPH}:int_conv_weights",
    "_BROADCASTING": f"{_GRAPH}:BROADCASTING",
    "_SAME_RANK": f"{_GRAPH}:SAME_RANK",
    "_shape_vector": f"{_GRAPH}:shape_vector",
    "_tensor_ranks": f"{_GRAPH}:tensor_ranks",
    "_fold_casts": f"{_PASSES}:fold_casts",
    "_fold_weight_quantizers": f"{_PASSES}:fold_weight_quantizers",
    "_dedupe_quantize_linear": f"{_PASSES}:dedupe_quantize_linear",
    "_hoist_quantize_linear": f"{_PASSES}:hoist_quantize_linear",
    "_SHAPE_ONLY": "torchslim.deploy.passes.hoist:SHAPE_ONLY",
    "_same_qparams": "torchslim.deploy.passes.space_to_depth:same_qparams",
    "_space_to_depth_conv_pool": f"{_PASSES}:space_to_depth_conv_pool",
    "_pad_conv_input_channels": f"{_PASSES}:pad_conv_input_channels",
    "_fuse_matmul_bias": f"{_PASSES}:fuse_matmul_bias",
    "_fuse_attention": f"{_PASSES}:fuse_attention",
}

__getattr__ = moved_names(__name__, _MOVED)
