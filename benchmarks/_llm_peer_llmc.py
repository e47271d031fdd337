"""llmcompressor 0.14 GPTQ on SmolLM2, as a peer of torchslim's GPTQ (issue 23): a worker for ``.venv-llmc``.

Run with ``.venv-llmc/bin/python`` (llmcompressor needs transformers <= 5.17, the project
pins 5.23), never the project's interpreter; ``_llm_peers.run_peer("llmcompressor", ...)``
starts it. It calls ``llmcompressor.oneshot`` with one ``GPTQModifier``: integer weights of
``bits`` bits, ``group_size`` columns per group (``0``: per output channel), symmetric or
not, on every ``Linear`` but ``lm_head``, the library's defaults for the rest unless the
config sets them (``dampening_frac`` 0.01, ``block_size`` 128, ``actorder`` static), and
the calibration ids as a ``DataLoader`` of one sequence per batch (so every method sees
the same tokens; nothing is tokenised here). Nothing is saved by llmcompressor
(``output_dir=None``): after calibration each layer's ``weight`` holds GPTQ's quantized
values in float (the fake-quantized weight), which :mod:`_llm_peer_common` writes.

One layer is checked against its own ``weight_scale`` / ``weight_zero_point``: ``w / s + z``
must be integers in the signed ``bits``-bit range, where compressed-tensors keeps the codes
of asymmetric schemes too (``info["grid_check"]``).

Config keys: ``bits`` (4), ``group_size`` (64), ``symmetric`` (false), ``dampening_frac``,
``block_size``, ``actorder`` (``static``, ``group``, ``weight`` or ``null``), ``threads`` (2).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from _llm_peer_common import load_tokenizer, main, target_linears
from torch import nn

PACKAGES = ("llmcompressor", "compressed-tensors", "transformers", "torch")
#: GPTQModifier arguments the config may set (others keep llmcompressor's defaults)
MODIFIER_KEYS = ("dampening_frac", "block_size", "actorder")


def _modifier(cfg: dict[str, Any]) -> Any:
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.gptq import GPTQModifier

    group = int(cfg.get("group_size", 64) or 0)
    weights = QuantizationArgs(
        num_bits=int(cfg.get("bits", 4)), type="int", symmetric=bool(cfg.get("symmetric", False)),
        strategy="group" if group > 0 else "channel", group_size=group if group > 0 else None,
    )
    scheme = QuantizationScheme(targets=["Linear"], weights=weights)
    extra = {k: cfg[k] for k in MODIFIER_KEYS if k in cfg}
    return GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"], **extra)


def _loader(calib: torch.Tensor) -> Any:
    from torch.utils.data import DataLoader

    items: Any = [{"input_ids": row[None, :], "attention_mask": torch.ones_like(row)[None, :]} for row in calib]
    return DataLoader(items, batch_size=1, shuffle=False, collate_fn=lambda batch: batch[0])


def grid_check(name: str, layer: Any, bits: int) -> dict[str, Any]:
    """How far ``w / scale + zero_point`` of ``layer`` is from integers in the ``bits``-bit range."""
    w = layer.weight.detach().float()
    scale = layer.weight_scale.detach().float()
    zero = layer.weight_zero_point.detach().float()
    cols = w.shape[1]
    width = -(-cols // scale.shape[1])  # group width (the last group may be narrower)
    s = scale.repeat_interleave(width, dim=1)[:, :cols]
    z = zero.repeat_interleave(width, dim=1)[:, :cols]
    q = w / s + z
    # compressed-tensors stores every int type signed (asymmetric: signed codes and a signed zero point)
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return {
        "layer": name, "scale_shape": list(scale.shape), "group_width": width,
        "max_distance_from_integer": float((q - q.round()).abs().max()),
        "q_min": float(q.round().min()), "q_max": float(q.round().max()), "allowed": [low, high],
        "on_grid": bool((q - q.round()).abs().max() < 1e-3 and low <= q.round().min() and q.round().max() <= high),
    }


def quantize(
    model: nn.Module, calib: torch.Tensor, cfg: dict[str, Any], gguf: Path
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """GPTQ through ``llmcompressor.oneshot``; the fake-quantized weights of the target layers.

    llmcompressor requires a tokenizer when a dataset is given; it is SmolLM2's own, and
    tokenises nothing (the data are ids already). Its config check re-reads ``config.json``
    from ``config.name_or_path``, which the GGUF's directory lacks: a copy of the loaded
    (float, unquantized) config in a temporary directory stands in.
    """
    from llmcompressor import oneshot

    modifier = _modifier(cfg)
    with tempfile.TemporaryDirectory() as config_dir:
        # oneshot re-reads the config from ``config.name_or_path`` (to refuse quantized
        # checkpoints); the GGUF's directory has no config.json, so point it at a copy
        config: Any = model.config
        config.save_pretrained(config_dir)
        config.name_or_path = config_dir
        out = oneshot(
            model=model, tokenizer=load_tokenizer(gguf), dataset=_loader(calib), recipe=modifier,
            output_dir=None, log_dir=None,
        )
    quantized = out if isinstance(out, nn.Module) else model
    layers = target_linears(quantized)
    first = next(iter(layers))
    check = grid_check(first, layers[first], int(cfg.get("bits", 4)))
    weights = {f"{n}.weight": m.weight.detach().clone() for n, m in layers.items()}
    return weights, {"grid_check": check, "modifier": _describe(modifier)}


def _describe(modifier: Any) -> Any:
    """The modifier's settings as JSON-ready data (its repr when pydantic cannot dump it)."""
    try:
        return modifier.model_dump(mode="json", exclude_none=True)
    except (TypeError, ValueError) as exc:
        return f"{modifier!r} (model_dump failed: {exc})"


if __name__ == "__main__":
    sys.exit(main("llmcompressor", quantize, PACKAGES))
