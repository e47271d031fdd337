"""Quantized weights stored packed at their bit width: safetensors + JSON sidecar, no pickle.

``<stem>.safetensors`` holds, per quantized layer, ``<layer>.weight.packed`` (uint8
bytes carrying ``bits`` bits per value, little-endian bit order, values offset by
``-qmin``), ``<layer>.weight.scale`` (float32) and ``<layer>.weight.zero_point``
(int16), plus every other state-dict tensor as is (biases, activation scales...).
``<stem>.json`` holds the format, the SHA-256 of the tensors file, the quantize
config and each layer's shape, bits and layout (the two files are a
:mod:`torchslim.io.bundle`, written and verified as checkpoints are). :func:`load_packed` rebuilds the
quantized structure on a fresh float model of the same architecture and loads the
integers back: the model's outputs are bit-identical to the saved model's.

Example:
    >>> import tempfile
    >>> from torchslim.quant import quantize_
    >>> tmp = tempfile.TemporaryDirectory()
    >>> qmodel = ts.create_model("lenet5")
    >>> x = torch.randn(8, 1, 28, 28)
    >>> report = quantize_(qmodel, {"weight": {"bits": 4}}, calibration=[x])
    >>> path = save_packed(qmodel, f"{tmp.name}/lenet5-w4")
    >>> restored = load_packed(ts.create_model("lenet5"), f"{tmp.name}/lenet5-w4")
    >>> torch.equal(restored.eval()(x), qmodel.eval()(x))
    True
    >>> tmp.cleanup()
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim.errors import CheckpointError, TorchslimError
from torchslim.graph import provenance
from torchslim.graph.transaction import transplant
from torchslim.io.bundle import bundle_paths, read_bundle, write_bundle
from torchslim.quant.affine import QParams, dequantize, quantize
from torchslim.quant.config import QuantizeConfig, WeightQuantConfig
from torchslim.quant.model import QUANT_LAYERS
from torchslim.quant.ptq import QUANT, build_structure, quant_info
from torchslim.quant.smooth import attach_input_scales

FORMAT = "torchslim-packed-quant"
FORMAT_VERSION = 1


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned integers ``< 2**bits`` into bytes, ``bits`` bits each (little-endian bit order).

    Example:
        >>> pack_bits(torch.tensor([1, 2, 3, 0]), 2).tolist()
        [57]
    """
    v = values.reshape(-1).to(torch.int64).numpy()
    if v.size and (v.min() < 0 or v.max() >= 2**bits):
        raise TorchslimError(f"values do not fit in {bits} bits")
    bit_matrix = ((v[:, None] >> np.arange(bits)) & 1).astype(np.uint8)
    return torch.from_numpy(np.packbits(bit_matrix.reshape(-1), bitorder="little").copy())


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``count`` unsigned integers (int32).

    Example:
        >>> unpack_bits(torch.tensor([57], dtype=torch.uint8), 2, 4).tolist()
        [1, 2, 3, 0]
    """
    flat = np.unpackbits(packed.numpy().astype(np.uint8), bitorder="little")[: count * bits]
    weights = (1 << np.arange(bits)).astype(np.int64)
    return torch.from_numpy((flat.reshape(count, bits).astype(np.int64) * weights).sum(1).astype(np.int32))


_paths = bundle_paths  # the name this module used before the bundle


def save_packed(model: nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write a quantized model with its weights packed at their bit width (atomic; sidecar last).

    Returns:
        The path of the tensors file.

    Raises:
        TorchslimError: the model was not quantized by ``quantize_``.

    Example:
        >>> import tempfile
        >>> from torchslim.quant import quantize_
        >>> tmp = tempfile.TemporaryDirectory()
        >>> qmodel = ts.create_model("lenet300")
        >>> report = quantize_(qmodel, {"weight": {"bits": 4}}, calibration=[torch.randn(8, 784)])
        >>> path = save_packed(qmodel, f"{tmp.name}/model")
        >>> path.name
        'model.safetensors'
        >>> tmp.cleanup()
    """
    info = quant_info(model)
    if info is None:
        raise TorchslimError("save_packed needs a model quantized by quantize_")
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, Any] = {}
    skip: set[str] = set()
    for name, module in model.named_modules():
        if not isinstance(module, QUANT_LAYERS):
            continue
        fq = module.weight_fq
        qp = fq.qparams()
        q = quantize(module.weight.detach(), qp)
        bits = int(fq.spec.bits)
        tensors[f"{name}.weight.packed"] = pack_bits(q - qp.qmin, bits)
        tensors[f"{name}.weight.scale"] = qp.scale.detach().float().contiguous()
        tensors[f"{name}.weight.zero_point"] = qp.zero_point.to(torch.int16).contiguous()
        layers[name] = {
            "shape": list(module.weight.shape),
            "bits": bits,
            "qmin": qp.qmin,
            "qmax": qp.qmax,
            "axis": qp.axis,
            "group_size": qp.group_size,
        }
        prefix = f"{name}." if name else ""
        skip.add(prefix + "weight")
        skip.update(prefix + "weight_fq." + k for k, _ in fq.state_dict().items())
    for key, value in model.state_dict().items():
        if key not in skip:
            tensors[key] = value.detach().cpu().contiguous()
    return write_bundle(path, tensors, FORMAT, FORMAT_VERSION, {"quantize": info, "layers": layers, "meta": meta or {}})


def load_packed(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a packed checkpoint into a fresh FLOAT model of the same architecture (in place).

    The quantized structure (BatchNorm folds, layer swaps, activation points) is
    rebuilt from the sidecar, then the integers are unpacked and every tensor is
    loaded. Everything is read and checked before the model is touched.

    Returns:
        ``model`` (now quantized).

    Raises:
        CheckpointError: missing or corrupt files, or tensors that do not fit the model.

    Example:
        >>> import tempfile
        >>> from torchslim.quant import quantize_
        >>> tmp = tempfile.TemporaryDirectory()
        >>> qmodel = ts.create_model("lenet5")
        >>> report = quantize_(qmodel, {"weight": {"bits": 4}}, calibration=[torch.randn(8, 1, 28, 28)])
        >>> _ = save_packed(qmodel, f"{tmp.name}/model")
        >>> model = load_packed(ts.create_model("lenet5"), f"{tmp.name}/model")
        >>> type(model.fc1).__name__
        'QuantLinear'
        >>> tmp.cleanup()
    """
    tensors_path = bundle_paths(path)[0]
    record, tensors = read_bundle(path, FORMAT, FORMAT_VERSION, "packed checkpoint")
    layers = _checked_layers(record, tensors, str(tensors_path))
    work = copy.deepcopy(model)
    try:
        config = QuantizeConfig.parse(record["quantize"]["config"])
        wcfg_of = {n: WeightQuantConfig.parse(c) for n, c in record["quantize"]["layers"].items()}
        attach_input_scales(work, record["quantize"].get("smoothed", []), tensors)
        build_structure(work, config, wcfg_of, record["quantize"].get("inputs"))
        state = work.state_dict()
        new_state: dict[str, torch.Tensor] = {}
        for name, lay in layers.items():
            count = math.prod(lay["shape"])
            raw = unpack_bits(tensors.pop(f"{name}.weight.packed"), lay["bits"], count)
            q = raw.reshape(lay["shape"]) + lay["qmin"]
            scale = tensors.pop(f"{name}.weight.scale")
            zp = tensors.pop(f"{name}.weight.zero_point").to(torch.int32)
            qp = QParams(scale, zp, lay["qmin"], lay["qmax"], lay["axis"], lay["group_size"])
            prefix = f"{name}." if name else ""
            new_state[prefix + "weight"] = dequantize(q, qp)
            module = work.get_submodule(name)
            module.weight_fq.set_qparams(qp)
            module.weight_fq.observing = False
            for k, v in module.weight_fq.state_dict().items():
                new_state[prefix + "weight_fq." + k] = v
        new_state.update(tensors)
        missing = sorted(set(state) - set(new_state))
        unexpected = sorted(set(new_state) - set(state))
        if missing or unexpected:
            raise CheckpointError(
                f"packed checkpoint does not fit the model: missing {missing[:8]}, unexpected {unexpected[:8]}"
            )
        for key, value in new_state.items():
            if key in state and state[key].shape != value.shape:
                _resize_buffer(work, key, value)
        work.load_state_dict(new_state, strict=True)
        for module in work.modules():
            if hasattr(module, "initialized") and isinstance(module.initialized, torch.Tensor):
                module.observing = False  # type: ignore[assignment]
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - a sidecar's records that cannot be rebuilt are a bad file
        raise CheckpointError(f"cannot load {tensors_path}: {type(exc).__name__}: {exc}") from None
    provenance.record(work, QUANT, record["quantize"])
    transplant(model, work)
    return model


def _checked_layers(record: dict[str, Any], tensors: dict[str, torch.Tensor], source: str) -> dict[str, dict[str, Any]]:
    """The sidecar's per-layer records, each checked against the packed tensor it describes before anything is unpacked."""
    quant, layers = record.get("quantize"), record.get("layers")
    if not isinstance(quant, dict) or not isinstance(quant.get("layers"), dict) or not isinstance(layers, dict):
        raise CheckpointError(f"{source}: the sidecar lacks its quantize record or its layers")
    for name, lay in layers.items():
        shape = lay.get("shape") if isinstance(lay, dict) else None
        if not isinstance(shape, list) or len(shape) > 32 or not all(_is_int(d) and d >= 0 for d in shape):
            raise CheckpointError(f"{source}: layer {name} has no valid shape (got {shape!r})")
        bits, qmin, qmax = lay.get("bits"), lay.get("qmin"), lay.get("qmax")
        if not (_is_int(bits) and 1 <= bits <= 16 and _is_int(qmin) and _is_int(qmax) and qmin < qmax):
            raise CheckpointError(f"{source}: layer {name} has bad bits {bits!r} or range {qmin!r}..{qmax!r}")
        packed = tensors.get(f"{name}.weight.packed")
        need = (math.prod(shape) * bits + 7) // 8
        if packed is None or packed.dtype != torch.uint8 or packed.numel() != need:
            raise CheckpointError(f"{source}: layer {name} needs {need} packed bytes for its {shape} {bits}-bit weight")
    return layers


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _resize_buffer(model: nn.Module, key: str, value: torch.Tensor) -> None:
    """Scale/zero-point buffers are created as scalars; give them the stored shape first."""
    mod_name, _, attr = key.rpartition(".")
    module = model.get_submodule(mod_name) if mod_name else model
    if attr in module._buffers:
        module._buffers[attr] = torch.empty_like(value)
    else:
        raise CheckpointError(f"tensor {key} has shape {tuple(value.shape)}, the model expects another")


def packed_bytes(path: str | Path) -> int:
    """Bytes on disk of a packed checkpoint (tensors file + sidecar).

    Example:
        >>> import tempfile
        >>> from torchslim.measure import dense_bytes
        >>> from torchslim.quant import quantize_
        >>> tmp = tempfile.TemporaryDirectory()
        >>> qmodel = ts.create_model("lenet300")
        >>> float_bytes = dense_bytes(qmodel)
        >>> report = quantize_(qmodel, {"weight": {"bits": 4}}, calibration=[torch.randn(8, 784)])
        >>> _ = save_packed(qmodel, f"{tmp.name}/model")
        >>> packed_bytes(f"{tmp.name}/model") < float_bytes / 7     # 4 bits instead of 32 per weight
        True
        >>> tmp.cleanup()
    """
    tensors_path, sidecar = bundle_paths(path)
    return tensors_path.stat().st_size + sidecar.stat().st_size
