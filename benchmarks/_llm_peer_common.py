"""What every LLM peer worker shares: arguments, loading SmolLM2 from its GGUF file, and writing the result.

This module runs under a PEER's virtualenv (``.venv-llmc``, ``.venv-nncf-torch``,
``.venv-quanto``), never the project's: it imports torch, transformers and safetensors
only (no torchslim, whose pins differ). A worker script ``_llm_peer_<name>.py`` defines
``quantize(model, calib, cfg, gguf) -> (weights, info)`` and calls :func:`main`, which:

1. reads the arguments ``--gguf FILE --calib IDS.npy --config CFG.json --out DIR``;
2. loads SmolLM2 with ``transformers`` from the GGUF file (float32, offline) and forgets
   the GGUF quantizer that ``transformers`` attaches although every weight is float;
3. snapshots every parameter, runs ``quantize`` (timed), and keeps the final float weight
   of each target layer (every ``nn.Linear`` but ``lm_head``) that the peer changed;
4. writes ``DIR/weights.safetensors`` (those weights, by their ``state_dict`` names) and
   ``DIR/result.json``: seconds (the quantization alone), load seconds, peak RSS (the
   whole process, ``peak_rss_mb``, and up to the end of loading, ``peak_rss_load_mb``:
   loading the GGUF file alone peaks near 1.5-2 GB), package versions, the config,
   the layers changed/unchanged, the largest count of distinct values in one quantization
   group (a 4-bit grid has at most 16), other parameters the peer changed, and ``info``.

On any exception the JSON holds ``error`` (the exception's type and text) and
``traceback``, and the exit status is 1, so the caller can report a peer's refusal verbatim.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

#: a worker's quantization step: (model, calibration ids [n, seq], config, GGUF path) -> (final weights by name, extra JSON)
Quantize = Callable[[nn.Module, torch.Tensor, dict[str, Any], Path], tuple[dict[str, torch.Tensor], dict[str, Any]]]

#: the layer never quantized (SmolLM2 ties it to the embedding)
SKIP_LAYERS = ("lm_head",)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The worker's command line: ``--gguf --calib --config --out``."""
    parser = argparse.ArgumentParser(description="quantize SmolLM2 with a peer library and write its float weights")
    parser.add_argument("--gguf", type=Path, required=True, help="SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--calib", type=Path, required=True, help="int64 [n_sequences, seq_len] token ids (.npy)")
    parser.add_argument("--config", type=Path, required=True, help="the peer's configuration (JSON object)")
    parser.add_argument("--out", type=Path, required=True, help="directory for weights.safetensors and result.json")
    return parser.parse_args(argv)


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of ``packages`` (``"missing"`` for one not installed)."""
    found: dict[str, str] = {}
    for name in packages:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def _forget_gguf_quantizer(model: Any) -> None:
    """Drop the ``GgufHfQuantizer`` transformers attaches to a GGUF model whose weights are all float.

    Peers that look at ``model.hf_quantizer`` / ``config.quantization_config`` would
    otherwise take SmolLM2 for an already-quantized model.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None or type(quantizer).__name__ != "GgufHfQuantizer":
        return
    if not all(p.is_floating_point() for p in model.parameters()):
        return
    model.hf_quantizer = None
    for attr, value in (("is_quantized", False), ("quantization_method", None)):
        if attr in vars(model):
            setattr(model, attr, value)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "quantization_config"):
        del config.quantization_config


def load_model(gguf: Path) -> nn.Module:
    """SmolLM2 as a float32 ``LlamaForCausalLM`` (eval mode, CPU) read offline from ``gguf``."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import transformers

    if not gguf.is_file():
        raise FileNotFoundError(f"the GGUF file {gguf} does not exist")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, local_files_only=True, dtype=torch.float32
    )
    _forget_gguf_quantizer(model)
    model.eval()
    return model


def load_tokenizer(gguf: Path) -> Any:
    """SmolLM2's tokenizer read offline from ``gguf`` (for peers that insist on one; no text is tokenised)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)


def load_calibration(path: Path) -> torch.Tensor:
    """The calibration token ids: an int64 ``[n_sequences, seq_len]`` tensor from a ``.npy`` file."""
    ids = np.load(path, allow_pickle=False)
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise ValueError(f"{path}: calibration ids must be a 2-D integer array [n_sequences, seq_len], got {ids.dtype} {ids.shape}")
    return torch.from_numpy(ids.astype(np.int64))


def target_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` of ``model`` but :data:`SKIP_LAYERS`, by module name."""
    return {
        name: m for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] not in SKIP_LAYERS
    }


def grid_levels(weight: torch.Tensor, group_size: int) -> int:
    """The largest number of distinct values in one ``(row, group)`` of ``weight`` (columns grouped by ``group_size``).

    A weight on a ``b``-bit grid per group has at most ``2**b`` distinct values in each
    group; a tail group (columns not a multiple of ``group_size``) is counted on its own.
    ``group_size <= 0`` counts whole rows.
    """
    w = weight.detach().float().reshape(weight.shape[0], -1)
    size = w.shape[1] if group_size <= 0 else group_size
    most = 0
    for start in range(0, w.shape[1], size):
        block = torch.sort(w[:, start : start + size], dim=1).values
        distinct = 1 + (block[:, 1:] != block[:, :-1]).sum(dim=1)
        most = max(most, int(distinct.max()))
    return most


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    return sorted(n for n, t in before.items() if n not in after or not torch.equal(t, after[n]))


def _write(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(out / "result.json")


def _run(args: argparse.Namespace, peer: str, quantize: Quantize, packages: tuple[str, ...]) -> dict[str, Any]:
    from safetensors.torch import save_file

    cfg: dict[str, Any] = json.loads(args.config.read_text())
    torch.set_num_threads(int(cfg.get("threads", 2)))
    began = time.perf_counter()
    model = load_model(args.gguf)
    calib = load_calibration(args.calib)
    load_seconds = time.perf_counter() - began
    targets = target_linears(model)
    original = {f"{n}.weight": m.weight.detach().clone() for n, m in targets.items()}
    others = {n: p.detach().clone() for n, p in model.named_parameters() if n not in original}
    rss_before = peak_rss_mb()
    began = time.perf_counter()
    weights, info = quantize(model, calib, cfg, args.gguf)
    seconds = time.perf_counter() - began
    unknown = sorted(set(weights) - set(original))
    if unknown:
        raise KeyError(f"the worker returned weights for names that are not target layers: {unknown[:5]}")
    final = {n: w.detach().to(torch.float32).contiguous() for n, w in weights.items()}
    changed = {n: w for n, w in final.items() if w.shape != original[n].shape or not torch.equal(w, original[n])}
    after_others = {n: p.detach() for n, p in model.named_parameters() if n in others}
    save_file(changed, str(args.out / "weights.safetensors"))
    group = cfg.get("group_size", 0)
    group = group if isinstance(group, int) else 0  # a worker with its own groups reports its own count in ``info``
    return {
        "peer": peer, "version": versions(*packages), "config": cfg,
        "seconds": round(seconds, 3), "load_seconds": round(load_seconds, 3),
        "peak_rss_mb": peak_rss_mb(), "peak_rss_load_mb": rss_before,
        "calibration_shape": list(calib.shape), "threads": torch.get_num_threads(),
        "weights": str(args.out / "weights.safetensors"),
        "layers_changed": len(changed), "layers_unchanged": sorted(set(original) - set(changed)),
        "layers_not_returned": sorted(set(original) - set(final)),
        "max_levels_per_group": max((grid_levels(w, group) for w in changed.values()), default=0),
        "grid_group_size": group, "other_params_changed": _changed(others, after_others),
        **info,
    }


def main(peer: str, quantize: Quantize, packages: tuple[str, ...], argv: list[str] | None = None) -> int:
    """Run a worker: load, quantize, write ``weights.safetensors`` and ``result.json``; 0 on success, 1 on error."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        result = _run(args, peer, quantize, packages)
    except BaseException as exc:  # noqa: BLE001 - every failure is reported in the JSON, verbatim
        _write(args.out, {
            "peer": peer, "version": versions(*packages), "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(), "peak_rss_mb": peak_rss_mb(),
        })
        print(traceback.format_exc(), file=sys.stderr)
        return 1
    _write(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "layers_unchanged"}, default=str))
    return 0
