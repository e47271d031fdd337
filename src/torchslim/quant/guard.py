"""The accuracy guard of static PTQ: measure on held-back batches, warn below a floor, fall back to float.

After calibration, :func:`run_guard` compares the quantized model with the float
model on calibration batches that calibration did not see
(:attr:`~torchslim.quant.config.GuardConfig.holdout`): every quantized layer's
output SQNR (against the same layer of the float model), and the model's output
SQNR and top-1 agreement. Below the floor (default output SQNR < 15 dB or
agreement < 90 %; the agreement floor applies when the compared output is the
model's logits, not a hidden state) it measures each layer's *sensitivity* (the
output SQNR with that layer alone in float, on the first held-back batch) and
warns with an :class:`AccuracyWarning` naming the most sensitive layers (the
candidates are the quantized layers and the residual ``add`` outputs, named
``quant_act.<point>``). With
``fallback: auto`` it then keeps layers in float, most sensitive first, each step
measured, until the floor is met (the fewest found this way, as NNCF's accuracy
control and Intel Neural Compressor's fallback do), rebuilds the quantized model
without them and measures it again; the report gives the layers and the figures
before and after. The probes run the layers in float by switching their quantizers
off, without bias correction (whose shifts assume the other layers quantized);
the rebuilt model, calibrated and corrected again, is the one measured and kept.

Example:
    A model whose input has one channel a thousand times the others' (its first layer reads it with tiny
    weights): one per-tensor input scale leaves the other channels a few levels.

    >>> import warnings
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 10))
    >>> with torch.no_grad():
    ...     model[0].weight[:, 0] /= 1000.0
    >>> batches = [torch.randn(64, 16) * torch.tensor([1000.0] + [1.0] * 15) for _ in range(4)]
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     report = ts.quantize_(model, {"guard": {"fallback": "auto"}}, calibration=batches)
    >>> caught[0].category.__name__, report.meta["guard"]["fallback"]["float_layers"], report.skipped[0].name
    ('AccuracyWarning', ['0'], '0')
    >>> report.meta["guard"]["before"]["output_sqnr_db"] < 15 <= report.meta["output_sqnr_db"]
    True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from torchslim._progress import progress_bar
from torchslim.quant.config import GuardConfig, QuantizeConfig
from torchslim.quant.correct import uncorrected
from torchslim.quant.fake import FakeQuantize, cached_weights
from torchslim.quant.metrics import LayerSQNR, compare_outputs, model_outputs
from torchslim.quant.model import ACT_DICT, add_points, layer_quantizers

__all__ = ["AccuracyWarning", "GuardOutcome", "kept_in_float", "run_guard", "split_holdout"]

#: how many times ``fallback: auto`` rebuilds the model when the rebuilt one still misses the floor
MAX_REBUILDS = 3


class AccuracyWarning(UserWarning):
    """A quantized model measured below the accuracy guard's floor (the message names the sensitive layers)."""


def split_holdout(batches: Sequence[Any], guard: GuardConfig) -> tuple[list[Any], list[Any]]:
    """``(calibration batches, held-back batches)``: the last ``floor(n * guard.holdout)`` are held back.

    Example:
        >>> split_holdout([1, 2, 3, 4, 5, 6, 7, 8], GuardConfig())
        ([1, 2, 3, 4, 5, 6], [7, 8])
        >>> split_holdout([1], GuardConfig())
        ([1], [])
    """
    n = len(batches)
    held = math.floor(n * guard.holdout) if guard.enabled else 0
    held = min(held, n - 1)
    return list(batches[: n - held]), list(batches[n - held :])


@contextmanager
def kept_in_float(model: nn.Module, names: Sequence[str]) -> Iterator[None]:
    """Run the quantized layers ``names`` of ``model`` in float inside the block (their :func:`layer_quantizers` off,
    and their biases as before bias correction, which compensated an error they no longer have); a name
    ``quant_act.<point>`` turns that activation point off (a residual add's output)."""
    modules = dict(model.named_modules())
    points = [m for n in names if isinstance(m := modules.get(n), FakeQuantize)]
    layers = [m for n in names if (m := modules.get(n)) is not None and not isinstance(m, FakeQuantize)]
    quantizers = [fq for n in names for fq in layer_quantizers(model, n)] + points
    saved = [fq.enabled for fq in quantizers]
    try:
        for fq in quantizers:
            fq.enabled = False
        with uncorrected(layers):
            yield
    finally:
        for fq, enabled in zip(quantizers, saved):
            fq.enabled = enabled


def _figures(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("output_sqnr_db", "output_top1_agreement", "output_compared", "output_note") if k in m}


def meets_floor(m: dict[str, Any], guard: GuardConfig) -> bool:
    """Whether output figures ``m`` meet the floor (the agreement floor only applies to logits; none measured: met).

    Example:
        >>> meets_floor({"output_sqnr_db": 20.0, "output_top1_agreement": 0.8}, GuardConfig())
        False
        >>> meets_floor({"output_sqnr_db": 20.0, "output_top1_agreement": 0.1, "output_compared": "last_hidden_state"},
        ...             GuardConfig())
        True
    """
    if "output_sqnr_db" not in m:
        return True
    if m["output_sqnr_db"] < guard.min_sqnr_db:
        return False
    return "output_compared" in m or m["output_top1_agreement"] >= guard.min_agreement


@dataclass
class GuardOutcome:
    """What :func:`run_guard` found and did.

    Attributes:
        model: the quantized model kept (rebuilt when ``fallback: auto`` kept layers in float).
        meta: the report's ``meta["guard"]``.
        output: the final output figures (``output_sqnr_db``, ``output_top1_agreement``...).
        layer_sqnr: each quantized layer's output SQNR (dB) in the model kept.
        float_layers: the layers the fallback kept in float (with their sensitivity, dB).
    """

    model: nn.Module
    meta: dict[str, Any]
    output: dict[str, Any]
    layer_sqnr: dict[str, float]
    float_layers: dict[str, float] = field(default_factory=dict)


class _Probe:
    """Measures a quantized model on the held-back batches against the float model's outputs (computed once)."""

    def __init__(self, model: nn.Module, reference: nn.Module, batches: list[Any], mask_key: str | None) -> None:
        self.batches, self.reference, self.mask_key = batches, reference, mask_key
        self.refs = model_outputs(model, batches)

    def output(self, work: nn.Module, first_only: bool = False) -> dict[str, Any]:
        n = 1 if first_only else len(self.batches)
        return compare_outputs(self.refs[:n], model_outputs(work, self.batches[:n]))

    def layers(self, work: nn.Module, names: Sequence[str]) -> dict[str, float]:
        return LayerSQNR(self.reference, work, names, self.mask_key).measure(self.batches)

    def sensitivity(self, work: nn.Module, names: Sequence[str]) -> dict[str, float]:
        """Output SQNR on the first batch with each layer alone in float, most sensitive (highest) first.

        Measured without bias correction (each layer's shift was made for the others quantized as they
        were: with one of them in float, the shifts after it would be wrong).
        """
        found = {}
        with uncorrected(_modules(work, names)), cached_weights(work), progress_bar() as bar:  # (points: no bias)
            task = bar.add_task("accuracy guard: each layer alone in float", total=len(names))
            for name in names:
                with kept_in_float(work, [name]):
                    found[name] = self.output(work, first_only=True).get("output_sqnr_db", float("nan"))
                bar.advance(task)
        return dict(sorted(found.items(), key=lambda kv: -kv[1]))


def run_guard(model: nn.Module, work: nn.Module, config: QuantizeConfig, names: Sequence[str], held: list[Any],
              reference: nn.Module, rebuild: Callable[[list[str]], nn.Module], *, held_back: bool = True) -> GuardOutcome:
    """Measure ``work`` (quantized layers ``names``) against ``model`` on ``held``; warn and fall back as configured.

    Args:
        model: the float model (its outputs are the reference).
        work: the quantized, calibrated model.
        config: the quantization config (its ``guard`` block and token-mask key are read).
        names: the quantized layers of ``work``.
        held: the batches measured on.
        reference: a float model whose layers have ``work``'s names and inputs (BatchNorm folded the same way).
        rebuild: builds and calibrates a new quantized model with the given layers (and ``quant_act.<point>``
            residual-add points) left in float.
        held_back: whether ``held`` was held back from calibration (else the report says it was not).
    """
    guard = config.guard
    probe = _Probe(model, reference, held, config.activation.mask_key)
    before = probe.output(work)
    meta: dict[str, Any] = {
        "measured_on": f"{len(held)} held-back batch(es)" if held_back else "the first calibration batch (none held back)",
        "floor": {"output_sqnr_db": guard.min_sqnr_db, "output_top1_agreement": guard.min_agreement},
        "before": _figures(before),
        "passed": meets_floor(before, guard),
    }
    if meta["passed"]:
        return GuardOutcome(work, meta, before, probe.layers(work, names))
    candidates = [*names, *(f"{ACT_DICT}.{k}" for k in add_points(work))]  # layers and residual-add points
    sensitivity = probe.sensitivity(work, candidates)
    top = list(sensitivity)[: guard.sensitive_layers]
    meta["sensitive_layers"] = {n: sensitivity[n] for n in top}
    outcome = GuardOutcome(work, meta, before, {})
    if guard.fallback == "auto":
        _fall_back(outcome, probe, candidates, sensitivity, guard, rebuild)
    outcome.layer_sqnr = probe.layers(outcome.model, [n for n in names if n not in outcome.float_layers])
    warnings.warn(_message(meta, before, guard, top), AccuracyWarning, stacklevel=6)  # the caller of quantize_
    return outcome


def _fall_back(outcome: GuardOutcome, probe: _Probe, names: Sequence[str], sensitivity: dict[str, float],
               guard: GuardConfig, rebuild: Callable[[list[str]], nn.Module]) -> None:
    """Keep the most sensitive layers in float, one at a time (measured), until the floor is met; rebuild."""
    limit = min(guard.max_float_layers or len(names), len(names) - 1)
    ranked = list(sensitivity)
    chosen: list[str] = []
    work, after = outcome.model, outcome.output
    for _ in range(MAX_REBUILDS):
        with cached_weights(work):
            for name in ranked:
                if name in chosen or len(chosen) >= limit:
                    continue
                chosen.append(name)
                with uncorrected(_modules(work, names)), kept_in_float(work, chosen):  # as in the sensitivity probe
                    if meets_floor(probe.output(work), guard):
                        break
        work = rebuild(list(chosen))
        after = probe.output(work)
        if meets_floor(after, guard) or len(chosen) >= limit:
            break
    outcome.model, outcome.output = work, after
    outcome.float_layers = {n: sensitivity[n] for n in chosen}
    outcome.meta["fallback"] = {"float_layers": chosen, "after": _figures(after), "passed": meets_floor(after, guard)}


def _modules(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    modules = dict(model.named_modules())
    return [modules[n] for n in names if n in modules]


def _message(meta: dict[str, Any], before: dict[str, Any], guard: GuardConfig, top: list[str]) -> str:
    figures = f"output SQNR {before['output_sqnr_db']:.1f} dB"
    if "output_compared" not in before:
        figures += f", top-1 agreement {before['output_top1_agreement']:.1%}"
    sens = ", ".join(f"{n} ({meta['sensitive_layers'][n]:.1f} dB when float)" for n in top)
    text = (f"quantize_: the quantized model measures {figures} against the float model on {meta['measured_on']}, "
            f"below the floor (guard.min_sqnr_db {guard.min_sqnr_db}, guard.min_agreement {guard.min_agreement}); "
            f"most sensitive layers: {sens}")
    fb = meta.get("fallback")
    if fb is None:
        return text + "; set guard.fallback: auto to keep the fewest of them in float"
    after = fb["after"]
    state = "meets the floor" if fb["passed"] else "still misses the floor"
    return (text + f"; fallback auto kept {len(fb['float_layers'])} layer(s) in float ({', '.join(fb['float_layers'])}): "
            f"output SQNR {after.get('output_sqnr_db', float('nan')):.1f} dB, "
            f"agreement {after.get('output_top1_agreement', float('nan')):.1%}, {state}")
