"""Shared helpers of the benchmark scripts: the results file and the machine line.

Each benchmark writes ``benchmarks/results/<name>.json`` in the format of
``../shared/BENCHMARKS.md``; figures come from ``torchslim.measure``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from torchslim._io import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"


def interleaved(timed: dict[Any, Callable[[], Any]], rounds: int) -> tuple[dict[Any, float], dict[Any, list[float]]]:
    """Time every variant once per round, ``rounds`` times, so machine load falls on all alike.

    ``timed`` maps a name to a call returning a ``LatencyResult``. Returns the median
    over rounds of each variant's per-round median (ms), and the per-round figures.
    """
    per_round: dict[Any, list[float]] = {key: [] for key in timed}
    for _ in range(rounds):
        for key, fn in timed.items():
            per_round[key].append(fn().median_ms)
    return {key: statistics.median(v) for key, v in per_round.items()}, per_round


#: the CPU features that change which kernels ONNX Runtime and torch pick (int8 and float32 GEMMs above all)
_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def cpu_features() -> list[str]:
    """Which of :data:`_FEATURES` this CPU has (``/proc/cpuinfo``; empty elsewhere).

    Two hosts that both read "2 cores x86_64" ran the same int4 prefill 1.41x and 1.00x of
    float32 (``llm_artefacts``, 2026-12-05): the line has to say what the cores can do.
    """
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return [f for f in _FEATURES if f in flags]


def machine() -> str:
    """One line naming the machine and the runtimes, e.g. ``2 cores x86_64 (avx2, avx512f, avx512_vnni), torch 2.13.0+cpu,
    onnxruntime 1.32.0``."""
    isa = cpu_features()
    parts = [f"{os.cpu_count()} cores {platform.machine()}" + (f" ({', '.join(isa)})" if isa else ""), f"torch {torch.__version__}"]
    try:
        import onnxruntime

        parts.append(f"onnxruntime {onnxruntime.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)


def git_commit() -> str:
    """The checked-out commit, ``+uncommitted`` when tracked files differ from it (``unknown`` outside git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return out.stdout.strip() + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Timer:
    """Wall time since construction, for the results' ``wall_s``."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 1)


def write_result(
    name: str,
    *,
    metrics: dict[str, Any],
    baseline: dict[str, Any] | None = None,
    peers: dict[str, Any] | None = None,
    targets: dict[str, Any] | None = None,
    seed: int = 0,
    wall_s: float = 0.0,
    notes: str | None = None,
) -> Path:
    """Write ``benchmarks/results/<name>.json`` atomically and return its path.

    ``targets`` maps a target's name to ``{"value": ..., "bar": ..., "met": bool}``
    so a missed target is written down with its figure, never hidden.
    """
    record = {
        "name": name,
        "date": _dt.date.today().isoformat(),
        "machine": machine(),
        "seed": seed,
        "wall_s": wall_s,
        "metrics": metrics,
        "baseline": baseline or {},
        "peers": peers or {},
        "targets": targets or {},
    }
    if notes:
        record["notes"] = notes
    path = RESULTS / f"{name}.json"
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=False) + "\n")
    return path
