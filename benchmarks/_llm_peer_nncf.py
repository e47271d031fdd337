"""NNCF 3.4 weight compression (INT4/INT8, AWQ on or off) of SmolLM2, torch backend: a worker for ``.venv-nncf-torch``.

Run with ``.venv-nncf-torch/bin/python`` (NNCF with the CPU torch wheel and transformers;
the search benchmark's ``.venv-nncf`` has NNCF's ONNX backend only and stays torch-free);
``_llm_peers.run_peer("nncf", ...)`` starts it. It calls ``nncf.compress_weights`` on the
``LlamaForCausalLM`` with:

* ``mode``: ``int4_asym`` (default), ``int4_sym``, ``int8_asym`` or ``int8_sym``;
* ``group_size`` (64; ``0`` or ``-1``: per output channel), ``ratio=1.0`` (every target
  layer at the primary precision), ``backup_mode=NONE`` and ``all_layers=False`` (NNCF
  leaves the embedding and the last layer, ``lm_head``, in float: the target set of every
  peer, all ``Linear`` layers but ``lm_head``);
* ``awq`` (false) and ``scale_estimation`` (false), each on only when the config says so;
* the calibration ids as an ``nncf.Dataset`` of ``{"input_ids": [1, seq_len]}`` items,
  ``subset_size`` = their count (NNCF's torch backend traces the model on the first item
  even when no data-aware step runs);
* ``group_size_fallback`` (``error``, NNCF's default; ``ignore`` or ``adjust``): what NNCF
  does with a layer whose input width the group does not divide (576 columns at group
  128): by default it refuses, and the refusal is reported verbatim. NNCF refuses only
  after collecting its statistics: with ``awq`` on, minutes into the run (about 6 on 64 x
  512 tokens on 2 busy cores); with ``awq`` off, in seconds, with the same message.

The compressed model (packed int weights and decompressor hooks) is then stripped with
``nncf.strip(..., strip_format=IN_PLACE)``, which writes each decompressed (float) weight
back into its ``Linear``: those are the weights written.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from _llm_peer_common import main, target_linears
from torch import nn

PACKAGES = ("nncf", "transformers", "torch")


def _parameters(cfg: dict[str, Any], n_items: int) -> dict[str, Any]:
    """``nncf.compress_weights`` keyword arguments from the worker config."""
    import nncf

    group = int(cfg.get("group_size", 64) or -1)
    fallback = str(cfg.get("group_size_fallback", "error")).upper()
    mode = str(cfg.get("mode", "int4_asym")).upper()
    params: dict[str, Any] = {
        "mode": nncf.CompressWeightsMode[mode],
        "ratio": 1.0,
        "group_size": group if group > 0 else -1,
        "all_layers": False,
        "backup_mode": nncf.BackupMode.NONE,
        "subset_size": n_items,
        "advanced_parameters": nncf.AdvancedCompressionParameters(
            group_size_fallback_mode=nncf.GroupSizeFallbackMode[fallback]
        ),
    }
    if mode.startswith("INT4"):
        params["awq"] = bool(cfg.get("awq", False))
        params["scale_estimation"] = bool(cfg.get("scale_estimation", False))
    else:
        params.pop("group_size")  # NNCF's INT8 modes are per output channel only
    return params


def quantize(
    model: nn.Module, calib: torch.Tensor, cfg: dict[str, Any], gguf: Path
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``nncf.compress_weights`` then an in-place strip; the decompressed weights of the target layers."""
    import nncf

    config: Any = model.config
    config.use_cache = False
    dataset = nncf.Dataset([{"input_ids": row[None, :]} for row in calib])
    params = _parameters(cfg, len(calib))
    with torch.no_grad():
        compressed = nncf.compress_weights(model, dataset=dataset, **params)
        nncf.strip(compressed, do_copy=False, strip_format=nncf.StripFormat.IN_PLACE)
    layers = target_linears(model)
    weights = {f"{n}.weight": m.weight.detach().clone() for n, m in layers.items()}
    not_float = sorted(n for n, w in weights.items() if not w.is_floating_point())
    if not_float:
        raise TypeError(f"after nncf.strip(IN_PLACE) these weights are not float: {not_float[:5]}")
    described = {k: getattr(v, "value", v) for k, v in params.items() if k != "advanced_parameters"}
    described["group_size_fallback_mode"] = params["advanced_parameters"].group_size_fallback_mode.value
    return weights, {"compress_weights": described}


if __name__ == "__main__":
    sys.exit(main("nncf", quantize, PACKAGES))
