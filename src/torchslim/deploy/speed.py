"""Which quantized layers run faster in float in ONNX Runtime: decided by measuring whole graphs.

An int8 kernel is not always faster than the float one: a depthwise convolution
has few multiply-adds per value moved, and on some CPUs ONNX Runtime's int8
depthwise kernel loses to its float one; a layer over very few channels may
lose too. :func:`choose_float_layers` exports the quantized model once as it
is and once per group of layers with that group in float (its weight and
activation quantizers off: the exported graph carries no QuantizeLinear/
DequantizeLinear around it), times every graph in ONNX Runtime in interleaved
rounds (each round runs every variant, so machine load falls on all alike) and
keeps a group in float only when its graph is faster by more than ``margin``.
The groups default to :func:`layer_groups` (depthwise convolutions, the other
convolutions, Linear layers, attention, embeddings and recurrent layers).

The choice is a list of layer names: quantize again with them as ``null`` in
``targets`` (or export with them in float through
:func:`~torchslim.quant.guard.kept_in_float`). Given the float model as
``reference``, its fp32 graph is one more candidate: unless the int8 graph chosen
beats it by more than ``margin`` (int8 must pay for itself), or when the choice
keeps every quantized layer in float (what is left of int8 is quantize/dequantize
pairs around float layers), ``float_model`` is ``True`` and the model to deploy is
the float one. That is
common for models of a few hundred microseconds, where the QuantizeLinear/
DequantizeLinear pairs cost more than the int8 kernels save.

Example:
    >>> from torchslim.quant import quantize_
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
    ...                       nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    >>> x = torch.randn(8, 3, 8, 8)
    >>> report = quantize_(model, {"guard": {"enabled": False}}, calibration=[x])
    >>> layer_groups(model)
    {'depthwise conv': ['2'], 'conv': ['0'], 'linear': ['5']}
    >>> choice = choose_float_layers(model, x[:1], batch_size=8, threads=1, runs=3, rounds=1)
    >>> sorted(k for k in choice.latency_ms if k != "chosen")         # median ms of each graph
    ['int8', 'int8, conv in float', 'int8, depthwise conv in float', 'int8, linear in float']
    >>> set(choice.float_layers) <= {"0", "2", "5"}
    True
    >>> choice.float_model                                           # no reference given: not a candidate
    False
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import onnx
from torch import nn

from torchslim.deploy.export import export_fp32, export_qdq
from torchslim.deploy.runtime import measure_ort_latency
from torchslim.measure.macs import ExampleInput
from torchslim.quant.attention import QuantMultiheadAttention
from torchslim.quant.guard import kept_in_float
from torchslim.quant.layers import QUANT_LAYERS, QUANT_MODULES

__all__ = ["SpeedChoice", "choose_float_layers", "layer_groups"]


def layer_groups(model: nn.Module) -> dict[str, list[str]]:
    """The quantized layers of ``model`` by kind (kinds with no layer are left out).

    Kinds: ``depthwise conv`` (one input channel per group), ``conv`` (the others),
    ``linear``, ``attention``, ``weight-only`` (embeddings, recurrent layers).
    """
    groups: dict[str, list[str]] = {"depthwise conv": [], "conv": [], "linear": [], "attention": [], "weight-only": []}
    for name, m in model.named_modules():
        if not isinstance(m, QUANT_MODULES):
            continue
        if isinstance(m, QUANT_LAYERS) and isinstance(m, nn.modules.conv._ConvNd):
            kind = "depthwise conv" if m.groups > 1 and m.groups == m.in_channels else "conv"
        elif isinstance(m, QUANT_LAYERS):
            kind = "linear"
        else:
            kind = "attention" if isinstance(m, QuantMultiheadAttention) else "weight-only"
        groups[kind].append(name)
    return {k: v for k, v in groups.items() if v}


@dataclass
class SpeedChoice:
    """What :func:`choose_float_layers` measured and chose.

    Attributes:
        float_layers: the layers to keep in float (``[]``: the all-int8 graph was fastest).
        float_groups: the groups they come from.
        latency_ms: median ms per variant (``int8``, ``int8, <group> in float``, ``fp32`` when given,
            ``chosen`` when more than one group is kept).
        rounds: the per-round medians of every variant.
        float_model: the reference's fp32 graph was faster than the int8 graph chosen: deploy the float
            model (``float_layers`` and ``float_groups`` still say which int8 graph was the best).
    """

    float_layers: list[str]
    float_groups: list[str]
    latency_ms: dict[str, float]
    rounds: dict[str, list[float]] = field(default_factory=dict)
    float_model: bool = False


def _int8_graph(model: nn.Module, example_input: ExampleInput, floats: Sequence[str]) -> onnx.ModelProto:
    with kept_in_float(model, floats):
        return export_qdq(model, example_input)


def _timed(graphs: Mapping[str, onnx.ModelProto], example_input: ExampleInput, batch_size: int, threads: int,
           runs: int, rounds: int) -> dict[str, list[float]]:
    """Per-round median ms of every graph, every round running each graph once (interleaved)."""
    per_round: dict[str, list[float]] = {k: [] for k in graphs}
    for _ in range(rounds):
        for key, graph in graphs.items():
            per_round[key].append(measure_ort_latency(graph, example_input, batch_size=batch_size, threads=threads,
                                                      runs=runs, warmup=3).median_ms)
    return per_round


def choose_float_layers(
    model: nn.Module,
    example_input: ExampleInput,
    groups: Mapping[str, Sequence[str]] | None = None,
    *,
    reference: nn.Module | None = None,
    batch_size: int = 8,
    threads: int = 2,
    runs: int = 20,
    rounds: int = 3,
    margin: float = 0.03,
) -> SpeedChoice:
    """Time the quantized ``model`` in ONNX Runtime as it is and with each group of layers in float; keep the
    groups whose float graph is faster by more than ``margin`` (a fraction of the int8 graph's time).

    Args:
        model: a quantized model (not modified).
        example_input: one example batch (its first sample is repeated to ``batch_size``).
        groups: ``{name: layer names}`` to try in float (default :func:`layer_groups`).
        reference: the float model, timed as ``fp32`` beside them (exported with :func:`export_fp32`); unless the
            int8 graph chosen is faster than it by more than ``margin`` and keeps some layer int8, ``float_model``
            is set (int8 is deployed only where it measurably pays).
        batch_size: samples per timed run.
        threads: ONNX Runtime intra-op threads.
        runs: timed runs per variant and round (the median is taken).
        rounds: interleaved rounds (the median over rounds is reported).
        margin: how much faster a float group's graph must be to be kept, and the int8 graph chosen to be
            deployed instead of the float model.

    Returns:
        A :class:`SpeedChoice`; when several groups win, their combination is timed too and kept only if it
        is the fastest, else the best single group.

    Example (a model too small for int8 to pay: the fp32 graph may win)::

        choice = choose_float_layers(quantized, x[:1], reference=float_model)
        deployed = float_model if choice.float_model else quantized
    """
    groups = dict(layer_groups(model) if groups is None else groups)
    graphs = {"int8": _int8_graph(model, example_input, [])}
    for g, names in groups.items():
        graphs[f"int8, {g} in float"] = _int8_graph(model, example_input, names)
    if reference is not None:
        graphs["fp32"] = export_fp32(reference, example_input)
    per_round = _timed(graphs, example_input, batch_size, threads, runs, rounds)
    med = {k: statistics.median(v) for k, v in per_round.items()}
    winners = [g for g in groups if med[f"int8, {g} in float"] < med["int8"] * (1 - margin)]
    chosen = sorted(winners, key=lambda g: med[f"int8, {g} in float"])[:1]
    if len(winners) > 1:
        both = [n for g in winners for n in groups[g]]
        extra = _timed({"chosen": _int8_graph(model, example_input, both)}, example_input, batch_size, threads, runs, rounds)
        per_round.update(extra)
        med["chosen"] = statistics.median(extra["chosen"])
        if med["chosen"] < med[f"int8, {chosen[0]} in float"]:
            chosen = winners
    best = med["chosen"] if len(chosen) > 1 else med[f"int8, {chosen[0]} in float"] if chosen else med["int8"]
    every = {n for names in layer_groups(model).values() for n in names}  # no int8 layer left: fp32 with extra nodes
    all_float = bool(every) and every <= {n for g in chosen for n in groups[g]}
    float_model = "fp32" in med and (all_float or best >= med["fp32"] * (1 - margin))  # int8 must pay by the margin too
    return SpeedChoice([n for g in chosen for n in groups[g]], chosen, med, per_round, float_model)
