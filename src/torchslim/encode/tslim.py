"""The technique side of the ``.tslim`` container: quantized weights stored as their integers.

The container itself (:mod:`torchslim.io.tslim`) knows no technique. This
module reads a quantized model's layers (:mod:`torchslim.quant`'s public names)
and gives the container what it cannot find alone:

- the ``quantized`` codec, registered in :data:`torchslim.io.tslim.codecs.CODECS`:
  a weight as its ``qmin``-offset integers, Huffman-coded or fixed-width, with
  relative indices when most of them equal the zero point (a pruned weight); it
  decodes with the scale and zero point of the layer's weight quantizer, which
  are records of their own;
- :func:`quantized_offers`: each quantized layer's weight as such a record,
  offered to the container's policy, which takes it when it is smaller than the
  raw weight and decodes to exactly the weight the layer's forward uses;
- :func:`save` / :func:`encode_model` (``ts.save``): the container's, with those offers.

Example:
    >>> import tempfile
    >>> from torchslim.io.tslim import read
    >>> tmp = tempfile.TemporaryDirectory()
    >>> model = ts.create_model("lenet300", in_features=64)
    >>> _ = ts.quantize_(model, {"mode": "weight_only", "weight": {"bits": 4}})
    >>> path = save(model, f"{tmp.name}/q.tslim", arch={"model": "zoo:lenet300", "args": {"in_features": 64}})
    >>> {r["name"]: r["enc"] for r in read(path).records}["fc1.weight"]
    'quantized'
    >>> x = torch.randn(2, 64)
    >>> torch.equal(ts.load(path)(x), model.eval()(x))
    True
    >>> tmp.cleanup()
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim.graph import provenance
from torchslim.io.atomic import atomic_write_bytes
from torchslim.io.tslim import model as tslim_model
from torchslim.io.tslim.codecs import Codec, Decoded, encode_positions, read_positions, register
from torchslim.io.tslim.policy import Offers
from torchslim.io.tslim.records import Record, TslimFormatError, check_coding, coding_field, dtype_name, int_field
from torchslim.io.tslim.streams import decode_stream, encode_stream
from torchslim.quant.affine import QParams, dequantize, expand_qparam, quantize
from torchslim.quant.fake import ste_fake_quantize
from torchslim.quant.model import QUANT_LAYERS

#: key -> (integers, qparams, the key of the weight's fake-quant module, the fake-quantized weight)
QuantizedWeights = dict[str, tuple[torch.Tensor, QParams, str, torch.Tensor]]


def quantized_record(name: str, t: torch.Tensor, q: torch.Tensor, qp: QParams, fq: str, coding: str) -> Record:
    """Integers of a quantized weight (``qmin``-offset symbols), only where they differ from the zero point when sparse."""
    flat_q = q.detach().cpu().flatten().long().numpy()
    zp = expand_qparam(qp.zero_point, q, qp.axis, qp.group_size).expand(q.shape).detach().cpu().flatten().long().numpy()
    live = flat_q != zp
    info: dict[str, Any] = {
        "of": fq,
        "qmin": int(qp.qmin),
        "qmax": int(qp.qmax),
        "axis": qp.axis,
        "group_size": qp.group_size,
        "coding": coding,
        "sparse": bool(live.mean() < 0.5),
    }
    parts: list[tuple[str, bytes]] = []
    if info["sparse"]:
        positions = np.flatnonzero(live)
        gap_info, parts = encode_positions(positions, coding)
        info.update(gap_info, nnz=int(positions.size))
        symbols = flat_q[positions] - qp.qmin
    else:
        symbols = flat_q - qp.qmin
    stream = encode_stream(symbols, int(qp.qmax - qp.qmin + 1), coding)
    q_parts = [(f"q_{n}", v) for n, v in stream.items()]
    return Record(name, list(t.shape), dtype_name(t.dtype), "quantized", [*q_parts, *parts], info)


def _fields(record: Record) -> tuple[str, int, int, int | None, int | None]:
    """``(of, qmin, qmax, axis, group_size)`` of a quantized record, each checked."""
    name, info, shape = record.name, record.info, record.shape
    of = info.get("of")
    if not isinstance(of, str) or record.dtype != "float32":
        raise TslimFormatError(f"record {name}: a quantized float32 weight needs the scale and zero point of {of!r}")
    qmin, qmax = int_field(info, "qmin", -(1 << 16), 1 << 16, name), int_field(info, "qmax", -(1 << 16), 1 << 16, name)
    axis, group = info.get("axis"), info.get("group_size")
    if qmax <= qmin or not (axis is None or (_is_int(axis) and 0 <= axis < len(shape))):
        raise TslimFormatError(f"record {name}: bad integer range or axis")
    if not (group is None or (_is_int(group) and group >= 1 and axis is not None and shape[axis] % group == 0)):
        raise TslimFormatError(f"record {name}: bad group size {group!r}")
    return of, qmin, qmax, axis, group


def _qparam_shape(shape: list[int], axis: int | None, group: int | None) -> list[int]:
    """The shape of the scales (and zero points) of a weight of ``shape`` quantized along ``axis`` in groups."""
    if axis is None:
        return []
    if group is None:
        return [shape[axis]]
    out = list(shape)
    out[axis] //= group
    return out


def check_quantized(record: Record, records: dict[str, Record]) -> None:
    """What a ``quantized`` record's header must agree with: its quantizer's records, before anything is decoded.

    The scale (or ``log_scale``) and zero point of the quantizer it names exist
    with the shape its axis and group size give; ``initialized`` is a scalar bool.
    """
    of, _, _, axis, group = _fields(record)
    want = _qparam_shape(record.shape, axis, group)
    scale = records.get(f"{of}.log_scale", records.get(f"{of}.scale"))
    zero_point, init = records.get(f"{of}.zero_point"), records.get(f"{of}.initialized")
    if scale is None or zero_point is None:
        raise TslimFormatError(f"record {record.name}: a quantized float32 weight needs the scale and zero point of {of!r}")
    if scale.shape != want or zero_point.shape != want:
        raise TslimFormatError(
            f"record {record.name}: the scale and zero point of {of} have shapes {scale.shape} and {zero_point.shape}; "
            f"axis {axis} and group size {group} of a {record.shape} weight need {want}"
        )
    if init is not None and (init.shape != [] or init.dtype != "bool"):
        raise TslimFormatError(f"record {record.name}: {of}.initialized must be a scalar bool, not {init.dtype} {init.shape}")


def _qparams(record: Record, done: Decoded) -> QParams:
    """The checked qparams of a quantized record: its fields, and the scale and zero point records it names."""
    name = record.name
    of, qmin, qmax, axis, group = _fields(record)
    if f"{of}.zero_point" not in done:
        raise TslimFormatError(f"record {name}: a quantized float32 weight needs the scale and zero point of {of!r}")
    init = done.get(f"{of}.initialized")
    if init is not None and (init[1].dtype != torch.bool or init[1].dim() != 0 or not bool(init[1])):
        raise TslimFormatError(f"record {name}: its quantizer {of} must be initialized (a scalar true), got {init[0].shape}")
    zero_point = done[f"{of}.zero_point"][1]
    if f"{of}.log_scale" in done:
        scale = torch.exp(done[f"{of}.log_scale"][1]).detach()
    elif f"{of}.scale" in done:
        scale = done[f"{of}.scale"][1]
    else:
        raise TslimFormatError(f"record {name}: no scale for {of}")
    return QParams(scale, zero_point, qmin, qmax, axis, group)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def decode_quantized(record: Record, payload: dict[str, bytes], done: Decoded) -> torch.Tensor:
    """The float weight of a ``quantized`` record: its integers dequantized with the qparams it names.

    The integer stream is decoded (its length checked against its bytes) before
    anything of the weight's size is built.
    """
    name, shape = record.name, record.shape
    numel = math.prod(shape)
    qp = _qparams(record, done)
    symbols_of = {n[2:]: v for n, v in payload.items() if n.startswith("q_")}
    coding, n_symbols, sparse = coding_field(record.info, name), qp.qmax - qp.qmin + 1, record.info.get("sparse", False)
    if not isinstance(sparse, bool):
        raise TslimFormatError(f"record {name}: field 'sparse' must be true or false, got {sparse!r}")
    positions = read_positions(record, payload, numel) if sparse else None
    symbols = decode_stream(symbols_of, n_symbols, numel if positions is None else positions.size, coding) + qp.qmin
    if qp.zero_point.dtype.is_floating_point or qp.zero_point.dtype == torch.bool or qp.scale.dtype == torch.bool:
        raise TslimFormatError(f"record {name}: the zero point of {record.info['of']} must be integers and its scale numbers")
    want = _qparam_shape(shape, qp.axis, qp.group_size)
    if list(qp.scale.shape) != want or list(qp.zero_point.shape) != want:
        raise TslimFormatError(
            f"record {name}: the scale and zero point of {record.info['of']} have shapes {list(qp.scale.shape)} and "
            f"{list(qp.zero_point.shape)}; axis {qp.axis} and group size {qp.group_size} of a {shape} weight need {want}"
        )
    try:
        zp = expand_qparam(qp.zero_point, torch.empty(shape), qp.axis, qp.group_size).expand(shape).flatten().long().numpy()
    except (RuntimeError, ValueError, IndexError) as exc:
        raise TslimFormatError(f"record {name}: scale/zero point do not fit the weight: {exc}") from None
    if positions is None:
        q = symbols
    else:
        q = zp.copy()
        q[positions] = symbols
    return dequantize(torch.from_numpy(q).reshape(shape), qp)


def _sparse(record: Record) -> bool:
    return bool(record.info.get("sparse"))


QUANTIZED = register(
    Codec("quantized", quantized_record, decode_quantized, derived=True, stores_positions=_sparse, check=check_quantized)
)


def quantized_weights(model: nn.Module) -> QuantizedWeights:
    """For every quantized layer of ``model``: its weight's integers, qparams and fake-quantized value."""
    if provenance.latest(model, "quant") is None:
        return {}
    out = {}
    for name, module in model.named_modules():
        fq: Any = getattr(module, "weight_fq", None)
        if not isinstance(module, QUANT_LAYERS) or fq is None or not bool(fq.initialized) or not fq.enabled:
            continue
        qp = fq.qparams()
        with torch.no_grad():
            weight = module.weight.detach()
            prefix = f"{name}." if name else ""
            out[prefix + "weight"] = (quantize(weight, qp), qp, prefix + "weight_fq", ste_fake_quantize(weight, qp))
    return out


def offers_of(weights: QuantizedWeights, state: dict[str, torch.Tensor], coding: str) -> Offers:
    """The ``quantized`` record of each of ``weights`` in ``state``, with the weight it must decode to."""
    return {
        key: (quantized_record(key, state[key].detach().cpu(), q, qp, fq, coding), target)
        for key, (q, qp, fq, target) in weights.items()
        if key in state
    }


def quantized_offers(model: nn.Module, coding: str) -> Offers:
    """What :func:`save` offers the container for ``model``: each quantized layer's weight as its integers."""
    return offers_of(quantized_weights(model), model.state_dict(), coding)


def encode_model(
    model: nn.Module,
    *,
    arch: str | dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    coding: str = "huffman",
) -> bytes:
    """The bytes of the ``.tslim`` file of ``model`` (see :func:`save`)."""
    check_coding(coding)
    return tslim_model.encode_model(model, arch=arch, meta=meta, coding=coding, offers=quantized_offers(model, coding))


def save(
    model: nn.Module,
    path: str | Path,
    *,
    arch: str | dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    coding: str = "huffman",
) -> Path:
    """Write ``model`` as a ``.tslim`` file (atomically); returns the path.

    The file is checked before it is written to decode to the model's state dict
    bit for bit (a tensor that would not falls back to ``raw``); saving the same
    model twice gives the same bytes.

    Args:
        model: any model; pruned (masks), shared (codes), structurally pruned and
            quantized models are stored compactly, everything else raw.
        path: destination (``.tslim`` is the usual suffix).
        arch: the architecture reference ``ts.load`` builds when given no model:
            ``"zoo:<name>"`` or ``{"model": "zoo:<name>", "args": {...}}``.
        meta: JSON-ready facts stored in the header.
        coding: ``huffman`` (Deep Compression) or ``fixed`` (fixed-width indices).

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> model = ts.create_model("lenet300")
        >>> path = ts.save(model, f"{tmp.name}/lenet300.tslim", arch="zoo:lenet300")
        >>> path.name
        'lenet300.tslim'
        >>> tmp.cleanup()
    """
    return atomic_write_bytes(path, encode_model(model, arch=arch, meta=meta, coding=coding))
