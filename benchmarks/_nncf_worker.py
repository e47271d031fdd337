"""NNCF peer worker: ``nncf.quantize_with_accuracy_control`` on an fp32 ONNX model (ONNX backend).

Run with the NNCF virtualenv's interpreter (``.venv-nncf/bin/python``), never the project's:
it imports only NNCF, ONNX, ONNX Runtime and NumPy (no torch, no torchslim), so NNCF's
dependencies stay out of the project's pinned environment. ``_nncf_peer.run_nncf_peer``
writes the inputs, starts this script and reads its JSON.

Inputs: the fp32 ONNX file (one float input with a dynamic batch axis, logits out), a
validation ``.npz`` and a calibration ``.npz`` (``images`` float32 ``[N, ...]``, ``labels``
int64 ``[N]``; the calibration labels are not used). NNCF is called with its defaults
(preset, target device, fast bias correction, accuracy-restorer parameters),
``drop_type=DropType.ABSOLUTE`` and ``subset_size`` = the calibration samples; each data item
is one sample, as in NNCF's documentation, and the validation function returns top-1 accuracy in
ONNX Runtime with each item's 0/1 (NNCF's ``(metric, values_for_each_item)`` form). The quantized model is saved as NNCF returns it (int8 weights, QDQ
activations) and the JSON holds: validation accuracy fp32 / int8 and the drop (fractions),
the operations reverted to float (from NNCF's log) and the weighted layers left in float in
the saved graph, NNCF's seconds, its version and the file sizes. On failure the JSON holds
``error`` (the exception) and the exit status is 1.

Run: ``.venv-nncf/bin/python benchmarks/_nncf_worker.py --model fp32.onnx --val val.npz
--calib calib.npz --max-drop 0.01 --out int8.onnx --json result.json``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

#: ONNX operators whose second input is a weight (the layers NNCF quantizes or reverts)
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
#: samples per ONNX Runtime call when the validation function scores a whole set
EVAL_BATCH = 250


class LogCapture(logging.Handler):
    """Keeps the messages of NNCF's logger (the accuracy restorer reports through it)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class SessionCache:
    """ONNX Runtime sessions for the ``onnx.ModelProto`` objects NNCF validates.

    NNCF calls the validation function once per data item while it ranks operations, each time
    with the same model object; building a session per call would dominate the run. The cache
    holds the model objects themselves, so an ``id`` cannot be reused while its entry lives.
    """

    def __init__(self, threads: int, size: int = 8) -> None:
        self.threads = threads
        self.size = size
        self._entries: dict[int, tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    def session(self, model: Any) -> Any:
        """The session for ``model`` (an ``onnx.ModelProto``), built on first use."""
        import onnxruntime as ort

        with self._lock:
            found = self._entries.get(id(model))
            if found is not None and found[0] is model:
                return found[1]
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        with self._lock:
            if len(self._entries) >= self.size:
                self._entries.pop(next(iter(self._entries)))
            self._entries[id(model)] = (model, session)
        return session


def top1(session: Any, items: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[float, list[float]]:
    """Top-1 accuracy of ``session`` over ``(image [1, ...], label [1])`` items (run in batches), and each item's 0/1."""
    name = session.get_inputs()[0].name
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    correct: list[float] = []

    def flush() -> None:
        logits = session.run(None, {name: np.concatenate(images)})[0]
        correct.extend((logits.argmax(-1) == np.concatenate(labels)).astype(np.float64).tolist())
        images.clear()
        labels.clear()

    for image, label in items:
        images.append(image)
        labels.append(label)
        if len(images) == EVAL_BATCH:
            flush()
    if images:
        flush()
    return (sum(correct) / len(correct) if correct else 0.0), correct


def one_sample_items(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The ``.npz`` at ``path`` as ``(image [1, ...] float32, label [1] int64)`` items, one per sample."""
    with np.load(path) as npz:
        images = np.ascontiguousarray(npz["images"], dtype=np.float32)
        labels = np.asarray(npz["labels"], dtype=np.int64)
    if images.shape[0] != labels.shape[0] or images.shape[0] == 0:
        raise ValueError(f"{path}: images {images.shape} and labels {labels.shape} must hold the same non-zero number of samples")
    return [(images[i : i + 1], labels[i : i + 1]) for i in range(images.shape[0])]


def layer_precision(model: Any) -> dict[str, int]:
    """Weighted layers (:data:`WEIGHTED_OPS`) in ``model``, those whose weight is stored in int8, and the Q/DQ nodes."""
    from_dq = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    weighted = [n for n in model.graph.node if n.op_type in WEIGHTED_OPS]
    int8_weights = sum(1 for n in weighted if len(n.input) > 1 and n.input[1] in from_dq)
    return {
        "weighted_layers": len(weighted),
        "int8_weight_layers": int8_weights,
        "float_layers": len(weighted) - int8_weights,
        "quantize_nodes": sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear"),
        "dequantize_nodes": sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear"),
    }


def reverted_from_log(messages: list[str]) -> dict[str, Any]:
    """What NNCF's accuracy restorer logged: operations reverted to float, out of how many, and why it stopped."""
    out: dict[str, Any] = {"reverted_ops": 0, "quantized_ops": None, "completed": None, "reached_drop": True}
    for message in messages:
        found = re.match(r"(\d+) out of (\d+) were reverted", message)
        if found:
            out["reverted_ops"], out["quantized_ops"] = int(found.group(1)), int(found.group(2))
        found = re.match(r"Total number of quantized operations in the model: (\d+)", message)
        if found:
            out["quantized_ops"] = int(found.group(1))
        if message.startswith("Algorithm completed:"):
            out["completed"] = message.split(":", 1)[1].strip()
        if message.startswith("The algorithm could not achieve the required accuracy drop"):
            out["reached_drop"] = False
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Quantize ``args.model`` with accuracy control and return the figures the JSON holds."""
    import nncf
    import onnx

    capture = LogCapture()
    logging.getLogger("nncf").addHandler(capture)
    model = onnx.load(str(args.model))
    input_name = model.graph.input[0].name
    calibration = one_sample_items(args.calib)
    validation = one_sample_items(args.val)
    cache = SessionCache(args.threads)

    def validate(onnx_model: Any, items: Iterable[Any]) -> tuple[float, list[float]]:
        return top1(cache.session(onnx_model), items)

    start = time.perf_counter()
    quantized = nncf.quantize_with_accuracy_control(
        model,
        nncf.Dataset(calibration, lambda item: {input_name: item[0]}),
        nncf.Dataset(validation, lambda item: {input_name: item[0]}),
        validation_fn=validate,
        max_drop=args.max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        subset_size=len(calibration),
    )
    seconds = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(quantized, str(args.out))
    fp32 = validate(model, validation)[0]
    int8 = validate(quantized, validation)[0]
    return {
        "nncf_version": nncf.__version__,
        "onnxruntime_version": __import__("onnxruntime").__version__,
        "api": "nncf.quantize_with_accuracy_control (ONNX backend, defaults, DropType.ABSOLUTE)",
        "max_drop": args.max_drop,
        "val_samples": len(validation),
        "calib_samples": len(calibration),
        "val_accuracy_fp32": fp32,
        "val_accuracy_int8": int8,
        "val_drop": fp32 - int8,
        **reverted_from_log(capture.messages),
        "layers": layer_precision(quantized),
        "seconds": seconds,
        "fp32_bytes": os.path.getsize(args.model),
        "int8_bytes": os.path.getsize(args.out),
        "int8_onnx": str(args.out),
        "log": [m for m in capture.messages if len(m) < 2000],
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run, write the JSON (``error`` and exit status 1 on failure)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="fp32 ONNX file")
    parser.add_argument("--val", type=Path, required=True, help="validation .npz (images, labels)")
    parser.add_argument("--calib", type=Path, required=True, help="calibration .npz (images)")
    parser.add_argument("--max-drop", type=float, required=True, help="absolute accuracy drop allowed, a fraction (0.01 = 1 pt)")
    parser.add_argument("--out", type=Path, required=True, help="where the quantized ONNX file goes")
    parser.add_argument("--json", type=Path, required=True, help="where the result JSON goes")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads of the validation sessions")
    args = parser.parse_args(argv)
    if not 0.0 <= args.max_drop < 1.0:
        parser.error(f"--max-drop must be a fraction in [0, 1), got {args.max_drop}")
    try:
        result, status = run(args), 0
    except Exception as exc:  # noqa: BLE001 - NNCF raises many types; the caller reads the error from the JSON
        result, status = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}, 1
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
