"""NNCF 3.4's ``quantize_with_accuracy_control`` (ONNX backend) as a peer of ``torchslim search`` (issue 22, acceptance 3).

:func:`run_nncf_peer` exports the model to fp32 ONNX with torchslim's exporter, writes the
validation and calibration samples as ``.npz`` files, and runs ``_nncf_worker.py`` with the
interpreter of the NNCF virtualenv (``.venv-nncf``, made by ``make bench``; NNCF's
dependencies never enter the project's venv). The worker quantizes with NNCF's defaults and
an absolute drop budget on the same validation samples the search scores on (the first
``val_samples`` of the validation split), calibrating on ``calib_samples`` training samples
drawn as torchslim draws calibration batches. Back in the project's venv the NNCF int8 file
and the fp32 file are measured as the search measures its plans: test-split top-1 accuracy
in ONNX Runtime, bytes on disk, and ONNX Runtime latency (median, batch 32, 2 threads).

Example (a benchmark)::

    sys.path.insert(0, "benchmarks")
    from _baselines import resnet20_fmnist
    from _nncf_peer import run_nncf_peer
    model, data = resnet20_fmnist()
    peer = run_nncf_peer(model, data, Path("runs/nncf"), 1.0, 2000, 300, 0)
    result["peers"] = {"nncf": peer}
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim.config import CalibrationConfig
from torchslim.data import DataBundle
from torchslim.data.batches import split_batch
from torchslim.deploy.check import measure_deployed
from torchslim.deploy.export import export_fp32

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "_nncf_worker.py"
#: the NNCF virtualenv's interpreter (``make bench`` creates it); ``TORCHSLIM_NNCF_PYTHON`` overrides
NNCF_PYTHON = Path(os.environ.get("TORCHSLIM_NNCF_PYTHON") or REPO / ".venv-nncf" / "bin" / "python")
#: how the deployed files are timed (the search's latency objective: batch 32, 2 threads)
LATENCY = {"batch": 32, "threads": 2, "runs": 20}


def _samples(batches: Any, limit: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` ``(images, labels)`` of ``batches`` as float32 / int64 arrays."""
    images: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    count = 0
    for i, batch in enumerate(batches):
        inputs, target = split_batch(batch, i)
        if not isinstance(inputs, torch.Tensor) or target is None:
            raise ValueError(f"the NNCF peer takes (image tensor, labels) batches; {what} batch {i} is not one")
        images.append(inputs.detach().cpu().float())
        labels.append(target.detach().cpu().long())
        count += inputs.shape[0]
        if count >= limit:
            break
    if count < limit:
        raise ValueError(f"{what}: {limit} samples asked for, the split has {count}")
    return torch.cat(images)[:limit].numpy(), torch.cat(labels)[:limit].numpy()


def write_inputs(model: nn.Module, data: DataBundle, out_dir: Path, val_samples: int, calib_samples: int, seed: int) -> dict[str, Path]:
    """The worker's inputs in ``out_dir``: ``fp32.onnx`` (dynamic batch), ``val.npz`` and ``calib.npz``.

    Validation: the first ``val_samples`` of the validation split, in order (what the search
    scores candidates on). Calibration: ``calib_samples`` training samples in the seeded
    shuffled order of :meth:`~torchslim.data.DataBundle.calibration_loader`.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"fp32": out_dir / "fp32.onnx", "val": out_dir / "val.npz", "calib": out_dir / "calib.npz"}
    export_fp32(copy.deepcopy(model).cpu(), data.example_input().cpu(), paths["fp32"])
    images, labels = _samples(data.loader("val", min(val_samples, 1000)), val_samples, "validation split")
    np.savez(paths["val"], images=images, labels=labels)
    calibration = data.calibration_loader(CalibrationConfig(batch_size=min(calib_samples, 256), seed=seed))
    images, labels = _samples(calibration, calib_samples, "calibration draw")
    np.savez(paths["calib"], images=images, labels=labels)
    return paths


def run_worker(paths: dict[str, Path], out_dir: Path, max_drop_pt: float, timeout_s: float) -> dict[str, Any]:
    """Run ``_nncf_worker.py`` under :data:`NNCF_PYTHON`; its JSON, or ``{"error": ...}``."""
    if not NNCF_PYTHON.exists():
        return {"error": f"the NNCF virtualenv is missing ({NNCF_PYTHON} not found): run `make bench`, which creates .venv-nncf"}
    result_path, log_path = out_dir / "nncf_result.json", out_dir / "nncf_worker.log"
    result_path.unlink(missing_ok=True)
    command = [
        str(NNCF_PYTHON), str(WORKER), "--model", str(paths["fp32"]), "--val", str(paths["val"]),
        "--calib", str(paths["calib"]), "--max-drop", repr(max_drop_pt / 100.0),
        "--out", str(out_dir / "nncf_int8.onnx"), "--json", str(result_path),
    ]
    # NNCF's telemetry is off in CI mode; nothing else in NNCF reads these variables
    env = {**os.environ, "NNCF_CI": "1", "CI": "true", "PYTHONPATH": ""}
    try:
        with open(log_path, "w") as log:
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"the NNCF worker ran past {timeout_s:.0f} s (log: {log_path})"}
    if not result_path.exists():
        tail = log_path.read_text(errors="replace")[-2000:]
        return {"error": f"the NNCF worker exited with status {done.returncode} and wrote no result; log tail:\n{tail}"}
    result: dict[str, Any] = json.loads(result_path.read_text())
    if done.returncode != 0 and "error" not in result:
        result["error"] = f"the NNCF worker exited with status {done.returncode} (log: {log_path})"
    return result


def measure_file(path: Path, data: DataBundle) -> dict[str, Any]:
    """Test-split top-1 accuracy, bytes and ONNX Runtime latency (:data:`LATENCY`) of one ONNX file."""
    accuracy, latency = measure_deployed(
        path, data.loader("test", 256), data.example_input().cpu(),
        batch_size=LATENCY["batch"], threads=LATENCY["threads"], runs=LATENCY["runs"],
    )
    return {"test_accuracy": accuracy, "bytes": path.stat().st_size, "latency_ms": latency.median_ms, "latency": latency.to_dict()}


def run_nncf_peer(
    model: nn.Module,
    data: DataBundle,
    out_dir: Path,
    max_drop_pt: float,
    val_samples: int,
    calib_samples: int,
    seed: int,
    *,
    timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """NNCF's accuracy-controlled int8 of ``model`` at ``max_drop_pt`` points, measured as the search measures its plans.

    Args:
        model: The trained float model (not modified; a copy is exported).
        data: Its data; the validation split drives NNCF, the test split is only measured.
        out_dir: Where the ONNX files, ``.npz`` inputs, the worker's log and JSON go.
        max_drop_pt: Allowed absolute top-1 drop on validation, in points (1.0 = 1 pt).
        val_samples: Validation samples (the first of the split, as the search uses).
        calib_samples: Calibration samples (NNCF's ``subset_size``).
        seed: Seed of the calibration draw.
        timeout_s: Longest the worker may run.

    Returns:
        The dict a benchmark stores under ``peers.nncf``: ``val`` (fp32/int8 accuracy and drop
        in points, NNCF's validation), ``test`` (the same on the test split, measured here),
        ``bytes``, ``latency_ms`` (int8 file; ``fp32`` holds the fp32 file's figures),
        ``reverted_ops`` / ``quantized_ops`` (NNCF's log; ``quantized_ops`` is ``None`` when the
        fully quantized model already met the budget and the restorer never ran) and ``layers``
        (weighted layers with int8 / float weights in the saved graph), ``nncf_seconds`` and ``wall_s``. When the worker cannot run or fails: ``error`` (and what is known).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    paths = write_inputs(model, data, out_dir, val_samples, calib_samples, seed)
    worker = run_worker(paths, out_dir, max_drop_pt, timeout_s)
    base: dict[str, Any] = {
        "tool": "nncf", "max_drop_pt": max_drop_pt, "val_samples": val_samples, "calib_samples": calib_samples,
        "seed": seed, "python": str(NNCF_PYTHON),
    }
    if "error" in worker:
        return {**base, "error": worker["error"], "wall_s": time.perf_counter() - start}
    fp32, int8 = measure_file(paths["fp32"], data), measure_file(Path(worker["int8_onnx"]), data)
    return {
        **base,
        "version": worker["nncf_version"],
        "api": worker["api"],
        "val": {"fp32": worker["val_accuracy_fp32"], "int8": worker["val_accuracy_int8"], "drop_pt": 100.0 * worker["val_drop"]},
        "test": {
            "fp32": fp32["test_accuracy"], "int8": int8["test_accuracy"],
            "drop_pt": 100.0 * (fp32["test_accuracy"] - int8["test_accuracy"]) if int8["test_accuracy"] is not None else None,
        },
        "bytes": int8["bytes"],
        "latency_ms": int8["latency_ms"],
        "latency": int8["latency"],
        "fp32": {"bytes": fp32["bytes"], "latency_ms": fp32["latency_ms"]},
        "reverted_ops": worker["reverted_ops"],
        "quantized_ops": worker["quantized_ops"],
        "reached_drop": worker["reached_drop"],
        "layers": worker["layers"],
        "onnx": worker["int8_onnx"],
        "nncf_seconds": worker["seconds"],
        "wall_s": time.perf_counter() - start,
    }
