"""Hugging Face directories of language models with quantized layers, loaded by ``transformers`` without torchslim.

Two formats (``format=``):

* ``dequantized`` (the default): what ``transformers`` 5.23 loads on the CPU with no other
  package. Every quantized layer is written as a float ``weight`` equal to its dequantized
  codes (``model.safetensors``, float32: the torch simulation, bit for bit), so
  ``AutoModelForCausalLM.from_pretrained(dir)`` gives the same logits. ``config.json``
  carries the grid under :data:`RECORD_KEY` (a ``compressed-tensors``-like record: bits,
  group size, symmetry and the layers; *not* ``quantization_config``, which ``transformers``
  would act on), and the integer codes themselves are kept in :data:`CODES_FILE`
  (``<layer>.codes`` uint8, ``.scales``, ``.zeros``), which ``transformers`` does not read:
  the int4 model can be rebuilt exactly from the directory.
* ``compressed-tensors``: the ``pack-quantized`` format of llm-compressor and vLLM
  (``weight_packed`` int32, ``weight_scale``, packed ``weight_zero_point``,
  ``weight_shape``; ``config.json`` ``quantization_config`` with ``quant_method:
  compressed-tensors``). ``transformers`` loads it only with the ``compressed-tensors``
  package installed (it is not a torchslim dependency); with ``transformers`` 5.23 and
  ``compressed-tensors`` 0.20.1, symmetric grids load, asymmetric ones do not (its loader
  expects the zero points unpacked), and group sizes must divide every layer's columns
  (refused here). See ``docs/llm.md``.

The directory is written in a temporary sibling and renamed into place; an existing one is
replaced only when torchslim wrote it (it holds ``torchslim_export.json``).

Example:
    >>> import tempfile, transformers
    >>> from torchslim.llm.modules import QuantizedLinear
    >>> from torchslim.llm.qweight import Grid, QuantizedWeight
    >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    ...                                num_attention_heads=2, num_key_value_heads=1)
    >>> model = transformers.LlamaForCausalLM(cfg).eval()
    >>> mlp = model.model.layers[0].mlp
    >>> mlp.down_proj = QuantizedLinear.from_weight(QuantizedWeight.from_float(mlp.down_proj.weight, Grid(4, 32)))
    >>> out = save_quantized_pretrained(model, None, f"{tempfile.mkdtemp()}/tiny")
    >>> out.layers, out.format
    (['model.layers.0.mlp.down_proj'], 'dequantized')
    >>> loaded = transformers.LlamaForCausalLM.from_pretrained(out.path).eval()
    >>> ids = torch.tensor([[1, 5, 7, 2]])
    >>> torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    True
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import safetensors.torch
import torch
from torch import nn

from torchslim.deploy.hf import MARKER, atomic_directory
from torchslim.errors import TorchslimError
from torchslim.io.atomic import atomic_write_bytes, atomic_write_text
from torchslim.llm.export_onnx import dequantized_linears, quantized_layers, quantized_weight_of
from torchslim.llm.qweight import QuantizedWeight

__all__ = ["CODES_FILE", "FORMATS", "RECORD_KEY", "HfExport", "grid_groups", "save_quantized_pretrained"]

#: the formats :func:`save_quantized_pretrained` writes
FORMATS = ("dequantized", "compressed-tensors")
#: the key of ``config.json`` that records the quantization of a ``dequantized`` directory
RECORD_KEY = "torchslim_quantization"
#: the file of a ``dequantized`` directory holding the integer codes
CODES_FILE = "torchslim_qweights.safetensors"

Format = Literal["dequantized", "compressed-tensors"]


@dataclass(frozen=True)
class HfExport:
    """What :func:`save_quantized_pretrained` wrote.

    Attributes:
        path: the directory.
        format: ``dequantized`` or ``compressed-tensors``.
        files: the files written (names in the directory).
        layers: the quantized layers.
        bytes: the files' total size.
    """

    path: Path
    format: str
    files: list[str]
    layers: list[str]
    bytes: int


def grid_groups(weights: dict[str, QuantizedWeight]) -> dict[str, dict[str, Any]]:
    """The layers grouped by grid: ``{"group_0": {"weights": {...}, "targets": [names]}, ...}``.

    Example:
        >>> from torchslim.llm.qweight import Grid, QuantizedWeight
        >>> qw = QuantizedWeight.from_float(torch.randn(2, 8), Grid(4, 4, symmetric=True))
        >>> grid_groups({"a": qw, "b": qw})["group_0"]["targets"]
        ['a', 'b']
    """
    groups: dict[tuple[int, int, bool], list[str]] = {}
    for name, qw in weights.items():
        groups.setdefault((qw.grid.bits, qw.grid.group_size, qw.grid.symmetric), []).append(name)
    out = {}
    for i, ((bits, group, symmetric), names) in enumerate(groups.items()):
        strategy = "channel" if group == -1 else "group"
        spec = {"num_bits": bits, "type": "int", "symmetric": symmetric, "strategy": strategy,
                "group_size": None if group == -1 else group, "dynamic": False, "actorder": None, "observer": "minmax"}
        out[f"group_{i}"] = {"weights": spec, "targets": names}
    return out


def _check_model(model: nn.Module, path: Path, format: str) -> dict[str, nn.Module]:
    if format not in FORMATS:
        raise TorchslimError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if getattr(model, "config", None) is None or not callable(getattr(model, "save_pretrained", None)):
        raise TorchslimError(f"save_quantized_pretrained {path}: {type(model).__name__} is not a Hugging Face model (no config)")
    layers = quantized_layers(model)
    if format == "compressed-tensors":
        for name, module in layers.items():
            qw = quantized_weight_of(name, module)
            if qw.grid.group_size != -1 and qw.shape[1] % qw.grid.group_size:
                raise TorchslimError(
                    f"save_quantized_pretrained {path}: layer {name} has {qw.shape[1]} columns, not a multiple of its "
                    f"group_size {qw.grid.group_size}, which compressed-tensors refuses; use format='dequantized'"
                )
    if not layers:
        raise TorchslimError(
            f"save_quantized_pretrained {path}: {type(model).__name__} has no quantized layer; "
            "save a float model with torchslim.deploy.save_pretrained"
        )
    return layers


@contextmanager
def _gguf_detached(model: nn.Module) -> Iterator[None]:
    """Detach, for the save, the ``GgufHfQuantizer`` of a model read from GGUF whose weights are all float.

    ``transformers`` refuses ``save_pretrained`` of such a model ("quantized with gguf and is
    not serializable") although every weight was dequantized on load.
    """
    target: Any = model
    quantizer = getattr(model, "hf_quantizer", None)
    gguf = quantizer is not None and type(quantizer).__name__ == "GgufHfQuantizer" and not getattr(quantizer, "packed_modules", None)
    if gguf and all(p.is_floating_point() for p in model.parameters()):
        target.hf_quantizer = None
        try:
            yield
        finally:
            target.hf_quantizer = quantizer
    else:
        yield


def _stock_keys(model: nn.Module) -> set[str]:
    """The state-dict keys of a stock model built from ``model``'s config (on the meta device)."""
    with torch.device("meta"):
        return set(type(model)(copy.deepcopy(model.config)).state_dict())  # type: ignore[operator]


def save_quantized_pretrained(
    model: nn.Module, tokenizer: Any, directory: str | os.PathLike[str], *, format: Format = "dequantized"
) -> HfExport:
    """Write ``model`` (a Hugging Face causal LM with quantized layers) as a Hugging Face directory.

    Args:
        model: the model; its quantized layers are the modules with a ``quantized_weight``.
        tokenizer: its tokenizer (saved alongside), or ``None``.
        directory: where to write (replaced only when torchslim wrote it).
        format: ``dequantized`` (loads with ``transformers`` alone) or ``compressed-tensors``.

    Raises:
        TorchslimError: not a Hugging Face model, no quantized layer, an unknown format, a
            weight a stock config does not have, or a target torchslim may not replace.
    """
    path = Path(directory)
    layers = _check_model(model, path, format)
    with dequantized_linears(model) as weights:
        keys = _stock_keys(model)
        state = {k: v for k, v in model.state_dict().items() if k in keys}
        extra = sorted(set(model.state_dict()) - keys)
        if extra:
            raise TorchslimError(f"save_quantized_pretrained {path}: {type(model).__name__} has tensors a stock config has not: {extra[:3]}")
        hf_config: Any = model.config
        config = json.loads(hf_config.to_json_string())
        if str((config.get("quantization_config") or {}).get("quant_method")) == "gguf":
            del config["quantization_config"]  # read from GGUF and dequantized: float weights now
        with atomic_directory(path) as tmp, _gguf_detached(model):
            model.save_pretrained(str(tmp), state_dict=state)  # type: ignore[operator]
            if format == "compressed-tensors":
                _write_compressed(model, tmp, weights, config)
            else:
                _write_record(tmp, weights, config)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
            files = sorted([p.name for p in tmp.iterdir() if p.is_file()] + [MARKER])
            meta = {"format": "hf", "kind": format, "files": files, "layers": list(layers)}
            atomic_write_text(tmp / MARKER, json.dumps(meta, indent=2))
    return HfExport(path, format, files, list(layers), sum((path / f).stat().st_size for f in files))


def _write_record(tmp: Path, weights: dict[str, QuantizedWeight], config: dict[str, Any]) -> None:
    """The ``dequantized`` format's provenance: the grid in ``config.json``, the codes in :data:`CODES_FILE`."""
    config[RECORD_KEY] = {"format": "dequantized", "weights_dtype": "float32", "codes_file": CODES_FILE,
                          "config_groups": grid_groups(weights)}
    atomic_write_text(tmp / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    tensors: dict[str, torch.Tensor] = {}
    for name, qw in weights.items():
        tensors[f"{name}.codes"] = qw.codes.to(torch.uint8).contiguous()
        tensors[f"{name}.scales"] = qw.scales.float().contiguous()
        tensors[f"{name}.zeros"] = qw.zeros.float().contiguous()
    atomic_write_bytes(tmp / CODES_FILE, safetensors.torch.save(tensors, metadata={"format": "torchslim-qweights"}))


def pack_int32(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned ``bits``-bit codes along the last axis into int32 words, the first code in the low bits.

    The layout of compressed-tensors' ``pack-quantized`` (its signed values plus ``2**(bits-1)``
    are the unsigned codes). ``bits`` must divide 32 (2, 4 or 8).

    Example:
        >>> hex(int(pack_int32(np.array([[1, 2, 3, 4, 5, 6, 7, 15]], dtype=np.uint8), 4).view(np.uint32)[0, 0]))
        '0xf7654321'
    """
    if bits not in (2, 4, 8):
        raise TorchslimError(f"compressed-tensors packing here takes 2, 4 or 8 bits, got {bits}")
    per = 32 // bits
    rows, cols = codes.shape
    words = -(-cols // per)
    padded = np.zeros((rows, words * per), dtype=np.uint32)
    padded[:, :cols] = codes
    grouped = padded.reshape(rows, words, per)
    out = np.zeros((rows, words), dtype=np.uint32)
    for j in range(per):
        out |= grouped[..., j] << np.uint32(bits * j)
    return out.view(np.int32)


def _write_compressed(model: nn.Module, tmp: Path, weights: dict[str, QuantizedWeight], config: dict[str, Any]) -> None:
    """Rewrite ``model.safetensors`` and ``config.json`` in compressed-tensors' ``pack-quantized`` format."""
    state = safetensors.torch.load_file(str(tmp / "model.safetensors"))
    for name, qw in weights.items():
        state.pop(f"{name}.weight", None)
        state[f"{name}.weight_packed"] = torch.from_numpy(pack_int32(qw.codes.numpy(), qw.grid.bits))
        state[f"{name}.weight_scale"] = qw.scales.float().contiguous()
        state[f"{name}.weight_shape"] = torch.tensor(list(qw.shape), dtype=torch.int64)
        if not qw.grid.symmetric:
            zeros = qw.zeros.round().to(torch.uint8).numpy()
            state[f"{name}.weight_zero_point"] = torch.from_numpy(np.ascontiguousarray(pack_int32(zeros.T, qw.grid.bits).T))
    groups = grid_groups(weights)
    for group in groups.values():
        group.update(input_activations=None, output_activations=None, format="pack-quantized")
        group["targets"] = [f"re:^{re.escape(n)}$" for n in group["targets"]]
    config["quantization_config"] = {
        "quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
        "config_groups": groups, "ignore": [], "kv_cache_scheme": None, "global_compression_ratio": None,
    }
    atomic_write_bytes(tmp / "model.safetensors", safetensors.torch.save(state, metadata={"format": "pt"}))
    atomic_write_text(tmp / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
