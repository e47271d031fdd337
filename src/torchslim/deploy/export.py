"""Export to ONNX: a float model (:func:`export_fp32`) and a quantized one as QDQ (:func:`export_qdq`).

The QDQ export runs the quantized simulation through torch's ONNX exporter,
where every :class:`~torchslim.quant.fake.FakeQuantize` emits a
QuantizeLinear/DequantizeLinear pair carrying its own scale and zero point.
Weights are then rewritten as integer initializers computed with
:func:`torchslim.quant.affine.quantize` (bit-exact with ONNX), feeding a
DequantizeLinear, which is the pattern ONNX Runtime turns into integer kernels
(QLinearConv, QLinearMatMul, QLinearAdd...). Bias stays float. The rewrites
are the passes of :data:`torchslim.deploy.passes.QDQ_PASSES`, run in order.

Example:
    >>> from torchslim.deploy import OrtModel
    >>> from torchslim.quant import quantize_
    >>> model = ts.create_model("lenet300", in_features=64)
    >>> x = torch.randn(8, 1, 8, 8)
    >>> report = quantize_(model, {"weight": {"bits": 8}}, calibration=[x])
    >>> proto = export_qdq(model, x[:1])
    >>> OrtModel(proto, threads=2)(x).shape
    torch.Size([8, 10])
"""

from __future__ import annotations

import copy
import io
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from torchslim.data.batches import map_tensors
from torchslim.deploy import passes
from torchslim.errors import TorchslimError
from torchslim.graph.deps import unwrapped
from torchslim.io import atomic_write_bytes
from torchslim.measure.macs import ExampleInput, eval_mode, mha_slow_path
from torchslim.quant.affine import fake_quantize
from torchslim.quant.fake import FakeQuantize
from torchslim.quant.model import QUANT_LAYERS, QUANT_MODULES, activation_quantizers

__all__ = ["check_exportable", "eager_attention", "export_fp32", "export_qdq", "mha_slow_path", "onnx_export_bytes"]


class _FlatIO(nn.Module):
    """Wraps a model so ONNX export sees positional tensors in and a tuple of tensors out."""

    def __init__(self, model: nn.Module, keys: list[str] | None) -> None:
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *tensors: torch.Tensor) -> Any:
        out = self.model(**dict(zip(self.keys, tensors))) if self.keys is not None else self.model(*tensors)
        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, Mapping):  # Hugging Face ModelOutput and plain dicts
            return tuple(v for v in out.values() if isinstance(v, torch.Tensor))
        if isinstance(out, (tuple, list)):
            return tuple(v for v in out if isinstance(v, torch.Tensor))
        raise TorchslimError(f"cannot export a model returning {type(out).__name__} to ONNX")


def _flat_inputs(example_input: ExampleInput) -> tuple[list[str] | None, list[str], tuple[torch.Tensor, ...]]:
    """(keyword names or None, ONNX input names, tensors in order) of an example input."""
    if isinstance(example_input, torch.Tensor):
        return None, ["input"], (example_input,)
    if isinstance(example_input, Mapping):
        keys = [str(k) for k in example_input]
        return keys, keys, tuple(example_input[k] for k in keys)
    if isinstance(example_input, (tuple, list)) and example_input:
        return None, [f"input_{i}" for i in range(len(example_input))], tuple(example_input)
    raise TorchslimError(
        "example_input must be a tensor, a non-empty tuple/list of tensors or a dict of tensors, "
        f"got {type(example_input).__name__}"
    )


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run Hugging Face modules with the plain ("eager") attention while exporting.

    Exported through the TorchScript exporter, SDPA attention becomes a graph with
    an ``IsNaN``/``Where`` guard over every attention probability tensor: measured
    here on all-MiniLM-L6-v2 (batch 32 x 128 tokens) that guard was about 30 % of the
    int8 model's ONNX Runtime time. The eager path (``QKᵀ·s + mask → softmax → ·V``)
    computes the same function (max difference 1.6e-7 on MiniLM) without it. Every
    ``config._attn_implementation`` found on a submodule is restored afterwards;
    models without one are untouched.

    Example:
        >>> import transformers
        >>> model = transformers.BertModel(transformers.BertConfig(
        ...     vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64))
        >>> model.config._attn_implementation
        'sdpa'
        >>> with eager_attention(model):      # export in here (onnx_export_bytes does)
        ...     model.config._attn_implementation
        'eager'
        >>> model.config._attn_implementation
        'sdpa'
    """
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None
               and getattr(c, "_attn_implementation", None) not in (None, "eager")}
    saved = {k: c._attn_implementation for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = "eager"
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation = saved[k]


def onnx_export_bytes(
    model: nn.Module, example_input: ExampleInput, *, opset: int = 17, constant_folding: bool = True
) -> bytes:
    """Export ``model`` (eval mode, float) to ONNX and return the serialized model.

    Uses torch's TorchScript-based exporter (the dynamo exporter needs onnxscript,
    which is not a dependency). Inputs are named ``input`` (one tensor),
    ``input_<i>`` (positional tensors) or by their keys (a dict, e.g. a tokenizer
    output); every input and output has a dynamic batch axis 0, and integer inputs
    (token ids, attention masks) a dynamic sequence axis 1: in a dict, ``sequence``
    for the encoder's tensors (``input_ids`` and its mask) and ``decoder_sequence``
    for the ``decoder_*`` ones (T5, BART, Whisper), when the example's lengths agree
    within each; otherwise, and for positional inputs (a source and a target), each
    input's own (``sequence_<name>``). Hugging Face
    attention is exported in its eager form (:func:`eager_attention`),
    ``nn.MultiheadAttention`` on its slow path (:func:`mha_slow_path`). The model's
    training mode is restored afterwards.

    Args:
        model: The model to export (on CPU).
        example_input: An example batch (tensor, tuple/list of tensors or dict of tensors).
        opset: ONNX opset version.
        constant_folding: let the exporter fold constant sub-graphs.

    Returns:
        The ONNX model as bytes.

    Raises:
        TorchslimError: the model or its output cannot be exported.

    Example:
        >>> data = onnx_export_bytes(nn.Linear(4, 2), torch.randn(1, 4))
        >>> len(data) > 0
        True
    """
    model = unwrapped(model)[0]  # torch.compile's and DataParallel's wrappers: the model they hold
    keys, names, tensors = _flat_inputs(example_input)
    wrapper = _FlatIO(model, keys)
    with eval_mode(model), torch.no_grad(), eager_attention(model), mha_slow_path():
        probe = wrapper(*tensors)
        n_out = 1 if isinstance(probe, torch.Tensor) else len(probe)
        out_names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
        axes: dict[str, dict[int, str]] = {n: {0: "batch"} for n in [*names, *out_names]}
        tokens = {n: int(t.shape[1]) for n, t in zip(names, tensors) if t.dim() >= 2 and not t.is_floating_point()}
        for n in tokens:  # ids and masks: the sequence length varies too (see the docstring)
            axis = "decoder_sequence" if n.startswith("decoder_") else "sequence"
            kin = {m for m in tokens if m.startswith("decoder_") == n.startswith("decoder_")}
            shared = (keys is not None or len(tensors) == 1) and len({tokens[m] for m in kin}) == 1
            axes[n][1] = axis if shared else f"sequence_{n}"
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notices
            try:
                torch.onnx.export(
                    wrapper,
                    tensors,
                    buffer,  # type: ignore[arg-type]  # a file-like object is accepted
                    dynamo=False,
                    opset_version=opset,
                    input_names=names,
                    output_names=out_names,
                    dynamic_axes=axes,
                    do_constant_folding=constant_folding,
                )
            except Exception as exc:  # the exporter raises many unrelated types
                where = _failing_layer(model, example_input, opset, _first_line(exc))
                at = f" at layer {where!r} ({type(model.get_submodule(where)).__name__})" if where else ""
                raise TorchslimError(f"ONNX export of {type(model).__name__} failed{at}: {exc}") from exc
    return buffer.getvalue()


def _float32(model: nn.Module, example_input: ExampleInput) -> tuple[nn.Module, ExampleInput]:
    """``model`` and ``example_input`` as they are when every floating tensor is float32, else float32 copies."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(not t.is_floating_point() or t.dtype == torch.float32 for t in tensors):
        return model, example_input

    example = map_tensors(example_input, lambda t: t.float() if t.is_floating_point() else t)
    return copy.deepcopy(model).float(), example


def _first_line(exc: BaseException) -> str:
    """The exporter's message without the graph values it names (those differ between a layer and the model)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(" [Caused by")[0]


def _fails_alike(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], opset: int, error: str) -> bool:
    """Does ``module`` alone fail to export with the model's ``error`` (the same first line)?"""
    try:
        torch.onnx.export(module, (*args, kwargs) if kwargs else args, io.BytesIO(), dynamo=False,  # type: ignore[arg-type]
                          opset_version=opset)
    except Exception as exc:  # noqa: BLE001 - the exporter raises many unrelated types
        return _first_line(exc) == error
    return False


def _failing_layer(model: nn.Module, example_input: ExampleInput, opset: int, error: str, budget_s: float = 60.0) -> str | None:
    """The deepest layer of ``model`` that fails to export on its own with the model's ``error``, given the inputs
    it gets in the model (``None``: none does within ``budget_s`` seconds; the failure is in how the model joins
    its layers). The layers are tried deepest first. Called (warnings silenced) only once the whole model failed.
    """
    calls: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    def record(name: str) -> Any:
        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            calls.setdefault(name, (args, kwargs))
        return hook

    hooks = [m.register_forward_pre_hook(record(n), with_kwargs=True) for n, m in model.named_modules() if n]
    try:
        keys, _, tensors = _flat_inputs(example_input)
        _FlatIO(model, keys)(*tensors)
    except Exception:  # noqa: BLE001 - no layer can be named when the model does not even run
        return None
    finally:
        for h in hooks:
            h.remove()
    deadline = time.perf_counter() + budget_s
    for name in sorted(calls, key=lambda n: -n.count(".")):
        if time.perf_counter() > deadline:
            return None
        if _fails_alike(model.get_submodule(name), *calls[name], opset, error):
            return name
    return None


def export_fp32(
    model: nn.Module, example_input: ExampleInput, path: str | os.PathLike[str] | None = None, *, opset: int = 17
) -> onnx.ModelProto:
    """Export a float model to ONNX (dynamic batch) and optionally write it atomically.

    Returns:
        The ``onnx.ModelProto``.

    Example:
        >>> proto = export_fp32(nn.Linear(4, 2), torch.randn(1, 4))
        >>> proto.graph.input[0].name
        'input'
    """
    proto = onnx.load_from_string(onnx_export_bytes(model, example_input, opset=opset))
    if path is not None:
        atomic_write_bytes(Path(path), proto.SerializeToString())
    return proto


def check_exportable(model: nn.Module) -> None:
    """Refuse a model whose activation quantizers a QDQ graph cannot carry.

    Raises:
        TorchslimError: an enabled activation quantizer has other than 8 bits, or was never calibrated.

    Example:
        >>> check_exportable(nn.Linear(2, 2))       # no activation quantizer: nothing to refuse
    """
    for name, fq in activation_quantizers(model):
        if fq.enabled and fq.spec.bits != 8:
            raise TorchslimError(
                f"activation quantizer {name!r} has {fq.spec.bits} bits: ONNX QDQ export needs 8-bit activations"
            )
        if fq.enabled and not bool(fq.initialized):
            raise TorchslimError(f"activation quantizer {name!r} was never calibrated")


def _export_quantized(model: nn.Module, layers: list[Any], example_input: ExampleInput, opset: int) -> bytes:
    """The exporter's graph of a quantized model, each layer's weight exported already on its grid."""
    for module in model.modules():
        if isinstance(module, FakeQuantize):
            module.freeze_learned_scale()
    constants: list[Any] = [m for m in model.modules() if callable(getattr(m, "begin_export", None))]  # int8 tables
    try:
        for layer in layers:
            qp = layer.weight_fq.qparams()
            layer._export_weight = fake_quantize(layer.weight.detach(), qp)
        for module in constants:
            module.begin_export()
        return onnx_export_bytes(model, example_input, opset=opset, constant_folding=False)
    finally:
        for layer in layers:
            layer._export_weight = None
        for module in constants:
            module.end_export()


def export_qdq(
    model: nn.Module,
    example_input: ExampleInput,
    path: str | os.PathLike[str] | None = None,
    *,
    opset: int = 17,
    space_to_depth: bool = True,
    pad_channels: bool = True,
) -> onnx.ModelProto:
    """Export a quantized model (after :func:`~torchslim.quant.ptq.quantize_`) as QDQ ONNX.

    Activation points become QuantizeLinear/DequantizeLinear pairs with their
    calibrated scale and zero point (one QuantizeLinear per tensor where the
    layers reading it share their parameters, as Q, K and V do; placed before
    a Flatten/Reshape so the op ahead of it can run in integers); weights
    become int8 initializers (values on the layer's own grid, 2 to 8 bits)
    followed by DequantizeLinear with the layer's per-tensor or per-channel
    scales. Per-group weights are written as float constants already on their
    grid (ONNX Runtime has no int8 kernel for them). The model is not modified
    (a bfloat16 or float16 model is exported from a float32 copy: the QDQ graph's
    float tensors are float32). The graph rewrites are
    :data:`~torchslim.deploy.passes.QDQ_PASSES`, in order.

    Args:
        model: a quantized model.
        example_input: an example batch.
        path: where to write the ``.onnx`` file (atomically); ``None`` writes nothing.
        opset: ONNX opset (13 or newer).
        space_to_depth: rewrite a convolution over 1-3 channels that feeds a
            2×2 max-pool as SpaceToDepth → conv → channel-group max (exact; ONNX
            Runtime's int8 conv is slow on so few channels). See
            :func:`~torchslim.deploy.passes.space_to_depth_conv_pool`.
        pad_channels: give any other convolution over 1-3 channels a quantized
            input padded with zero-point channels to 4 (exact; ResNet-20 on
            28×28 images, batch 32, 2 threads: 4.02 → 3.81 ms). See
            :func:`~torchslim.deploy.passes.pad_conv_input_channels`.

    Returns:
        The ``onnx.ModelProto``.

    Raises:
        TorchslimError: the model is not quantized, has non-8-bit or uncalibrated activations.

    Example:
        >>> import tempfile
        >>> from torchslim.deploy import qdq_summary
        >>> from torchslim.quant import quantize_
        >>> tmp = tempfile.TemporaryDirectory()
        >>> qmodel = ts.create_model("lenet300", in_features=64)
        >>> x = torch.randn(8, 1, 8, 8)
        >>> report = quantize_(qmodel, {"weight": {"bits": 8}}, calibration=[x])
        >>> proto = export_qdq(qmodel, x[:1], f"{tmp.name}/model.int8.onnx")
        >>> qdq_summary(proto)
        {'QuantizeLinear': 3, 'Flatten': 1, 'DequantizeLinear': 6, 'Gemm': 3, 'Relu': 2}
        >>> tmp.cleanup()
    """
    if not any(isinstance(m, QUANT_MODULES) for m in model.modules()):
        raise TorchslimError("export_qdq needs a quantized model (run quantize_ first); use export_fp32 for float")
    check_exportable(model)
    model, example_input = _float32(model, example_input)
    layers: list[Any] = [m for m in model.modules() if isinstance(m, QUANT_LAYERS)]
    proto = onnx.load_from_string(_export_quantized(model, layers, example_input, opset))
    skip = {name for name, on in (("space_to_depth", space_to_depth), ("pad_channels", pad_channels)) if not on}
    passes.run_passes(proto, passes.QDQ_PASSES, skip=skip)
    onnx.checker.check_model(proto)
    if path is not None:
        atomic_write_bytes(Path(path), proto.SerializeToString())
    return proto
