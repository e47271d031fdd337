"""Float against quantized: the output a comparison reads, output SQNR and top-1 agreement, per-layer SQNR.

A model's output may be a tensor, a Hugging Face ``ModelOutput``, a dict or a
tuple: :func:`comparable_output` picks the tensor compared (the output itself,
its ``logits``, its ``last_hidden_state``, else its first tensor).
:func:`compare_outputs` pools the SQNR and the top-1 agreement over batches;
:class:`LayerSQNR` measures every named layer's output against the same layer
of a float reference model.

Example:
    >>> m = nn.Linear(4, 3)
    >>> compare_outputs([m(torch.ones(2, 4))], [m(torch.ones(2, 4))])
    {'output_sqnr_db': inf, 'output_top1_agreement': 1.0}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from torchslim.measure.macs import batch_inputs, call_model, eval_mode
from torchslim.quant.tokens import mask_of, real_tokens, token_mask

#: where :func:`comparable_output` finds a tensor that is the model's logits (no ``output_compared`` note)
LOGITS_PLACES = ("output", "logits", "output[0]")
#: values sampled per layer output and batch by :class:`LayerSQNR` (all of them when fewer)
LAYER_SAMPLE = 1 << 16


def comparable_output(output: Any) -> tuple[torch.Tensor, str] | None:
    """The tensor of a model output that the float/quantized comparison uses, and where it was found.

    In order: the output itself when it is a tensor; its ``logits`` (attribute or
    key: Hugging Face outputs, dicts); its ``last_hidden_state``; the first tensor
    among its items (tuple, list) or values (mapping). ``None`` when there is none.

    Example:
        >>> comparable_output({"last_hidden_state": torch.zeros(1, 2)})[1]
        'last_hidden_state'
        >>> comparable_output((None, torch.zeros(2)))[1], comparable_output(("text",))
        ('output[1]', None)
    """
    if isinstance(output, torch.Tensor):
        return output, "output"
    for key in ("logits", "last_hidden_state"):
        value = output.get(key) if isinstance(output, Mapping) else getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value, key
    items: Iterable[tuple[Any, Any]] = ()
    if isinstance(output, Mapping):
        items = output.items()
    elif isinstance(output, (tuple, list)):
        items = enumerate(output)
    for key, value in items:
        if isinstance(value, torch.Tensor):
            return value, f"output[{key!r}]"
    return None


def _db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * math.log10(signal / noise)


def compare_outputs(refs: Sequence[Any], outs: Sequence[Any]) -> dict[str, Any]:
    """Output SQNR (dB) and top-1 agreement of ``outs`` against ``refs`` (model outputs, pooled over pairs).

    The tensor compared is :func:`comparable_output`'s; when it is not the output
    itself or its logits, ``output_compared`` says which it was. When an output
    has no comparable floating-point tensor of the reference's shape, the metrics
    are left out and ``output_note`` says why: this never raises.

    Example:
        >>> ref, out = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.9, 0.0]])
        >>> m = compare_outputs([ref, ref], [out, ref])          # noise 0.01 against signal 2
        >>> round(m["output_sqnr_db"], 2), m["output_top1_agreement"]
        (23.01, 1.0)
        >>> compare_outputs([ref], ["text"])["output_note"]
        "the model's output (str) holds no tensor: output_sqnr_db and output_top1_agreement left out"
    """
    signal = noise = 0.0
    same = total = 0
    where = "output"
    for ref_out, q_out in zip(refs, outs):
        ref, q = comparable_output(ref_out), comparable_output(q_out)
        if ref is None or q is None:
            kind = type(ref_out if ref is None else q_out).__name__
            return {"output_note": f"the model's output ({kind}) holds no tensor: output_sqnr_db and "
                                   "output_top1_agreement left out"}
        (r, where), (y, _) = ref, q
        if r.shape != y.shape or not r.is_floating_point() or not y.is_floating_point():
            return {"output_note": f"the float and quantized {where} ({r.dtype} {tuple(r.shape)} vs {y.dtype} "
                                   f"{tuple(y.shape)}) cannot be compared: output_sqnr_db and output_top1_agreement "
                                   "left out"}
        r, y = r.detach().float(), y.detach().float()
        signal += float(torch.sum(r**2))
        noise += float(torch.sum((r - y) ** 2))
        same += int((r.argmax(-1) == y.argmax(-1)).sum())
        total += r.argmax(-1).numel()
    meta: dict[str, Any] = {} if where in LOGITS_PLACES else {"output_compared": where}
    meta["output_sqnr_db"] = _db(signal, noise)
    meta["output_top1_agreement"] = same / total if total else float("nan")
    return meta


@torch.no_grad()
def model_outputs(model: nn.Module, batches: Sequence[Any]) -> list[Any]:
    """``model``'s outputs on ``batches`` (eval mode, no gradients).

    Example:
        >>> [o.shape for o in model_outputs(nn.Linear(4, 2), [torch.ones(3, 4)])]
        [torch.Size([3, 2])]
    """
    with eval_mode(model):
        return [call_model(model, batch_inputs(b, model)) for b in batches]


def output_agreement(model: nn.Module, work: nn.Module, batch: Any) -> dict[str, Any]:
    """SQNR (dB) and top-1 agreement of ``work``'s output against ``model``'s on ``batch`` (eval mode).

    Example:
        >>> m = nn.Linear(4, 3)
        >>> output_agreement(m, m, torch.randn(2, 4))
        {'output_sqnr_db': inf, 'output_top1_agreement': 1.0}
    """
    return compare_outputs(model_outputs(model, [batch]), model_outputs(work, [batch]))


class LayerSQNR:
    """Each named layer's output in one model against the same-named layer of a float reference.

    Both models run the same batches (first the reference, then the model); every
    layer's output is sampled at :data:`LAYER_SAMPLE` fixed positions per batch (all
    of them when fewer; real tokens only under a token mask), and the signal and
    noise energies are pooled over the batches. A layer called twice is measured on
    its first call.

    Example:
        >>> import copy
        >>> ref = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> noisy = copy.deepcopy(ref); _ = noisy[2].weight.data.mul_(1.01)
        >>> sqnr = LayerSQNR(ref, noisy, ["0", "2"]).measure([torch.randn(8, 4)])
        >>> sqnr["0"], round(sqnr["2"]) > 30
        (inf, True)
    """

    def __init__(self, reference: nn.Module, model: nn.Module, names: Sequence[str], mask_key: str | None = None) -> None:
        self.reference, self.model, self.names, self.mask_key = reference, model, list(names), mask_key

    def _capture(self, model: nn.Module, inputs: Any) -> dict[str, torch.Tensor]:
        found: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())

        def hook(name: str) -> Any:
            def record(_m: nn.Module, _i: Any, y: Any) -> None:
                if name not in found and isinstance(y, torch.Tensor):
                    found[name] = _sample(real_tokens(y.detach()).float().reshape(-1))
            return record

        handles = [modules[n].register_forward_hook(hook(n)) for n in self.names if n in modules]
        try:
            call_model(model, inputs)
        finally:
            for h in handles:
                h.remove()
        return found

    @torch.no_grad()
    def measure(self, batches: Sequence[Any]) -> dict[str, float]:
        """Per-layer output SQNR (dB) over ``batches``; layers that never ran are left out."""
        energy: dict[str, list[float]] = {}
        with eval_mode(self.reference), eval_mode(self.model):
            for batch in batches:
                inputs = batch_inputs(batch, self.reference)
                with token_mask(mask_of(inputs, self.mask_key)):
                    ref = self._capture(self.reference, inputs)
                    out = self._capture(self.model, inputs)
                for name, r in ref.items():
                    y = out.get(name)
                    if y is None or y.shape != r.shape:
                        continue
                    e = energy.setdefault(name, [0.0, 0.0])
                    e[0] += float(torch.sum(r**2))
                    e[1] += float(torch.sum((r - y) ** 2))
        return {n: _db(*energy[n]) for n in self.names if n in energy}


def _sample(flat: torch.Tensor) -> torch.Tensor:
    """At most :data:`LAYER_SAMPLE` values of ``flat`` at positions fixed by its length (same in both models)."""
    n = flat.numel()
    if n <= LAYER_SAMPLE:
        return flat
    gen = torch.Generator().manual_seed(n)
    return flat[torch.randint(n, (LAYER_SAMPLE,), generator=gen).to(flat.device)]
