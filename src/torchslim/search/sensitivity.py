"""Sensitivity analysis: one setting on one layer (or coupled channel group) at a time, measured.

For every analysis (:mod:`torchslim.search.space`: unstructured and structured
pruning, weight bits, low-rank), every unit and every setting, a copy of the model
gets that one change through the technique's own verb and is measured on the
validation batches: accuracy and loss (or only the cheap proxy), the output SQNR
against the unchanged model on the first batch (the proxy), and what the change
costs or saves in the whole model (parameters, non-zeros, stored bytes, MACs).
The model itself is never changed. A setting that cannot apply is recorded as
refused with the verb's reason; one that fails is recorded as failed with the error.

Per analysis the Spearman rank correlation between the SQNR proxy and the accuracy
(and the loss) over the measured options says whether the proxy ranks like the
metric: where it does, the ``sqnr`` metric (one batch per option) is enough.

Every option runs with ``torch.manual_seed(seed)`` on the same batches in the same
order, so the same seed gives the same numbers.

Example:
    >>> data = ts.load_data("digits")
    >>> model = ts.create_model("lenet300", in_features=64)       # a trained model in practice
    >>> cfg = {"analyses": ["unstructured", "bits"], "unstructured": [0.5, 0.9], "bits": [8, 2], "batches": 1}
    >>> result = sensitivity(model, data, cfg, progress=False)
    >>> [(u.name, [o.status for o in u.options]) for u in result.analysis("bits").units]
    [('fc1', ['ok', 'ok']), ('fc2', ['ok', 'ok']), ('fc3', ['ok', 'ok'])]
    >>> fc1 = result.analysis("unstructured").units[0]
    >>> fc1.options[1].d_nonzeros == -round(0.9 * 64 * 300)           # 90 % of fc1's weights
    True
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torchslim._progress import progress_bar
from torchslim.data import DataBundle
from torchslim.data.batches import batch_size_of, move, split_batch
from torchslim.data.core import first_sample
from torchslim.errors import TorchslimError
from torchslim.graph.transaction import snapshot
from torchslim.measure import count_macs, count_nonzeros, count_params, sparse_bytes
from torchslim.measure.accuracy import logits_of
from torchslim.measure.macs import call_model, eval_mode
from torchslim.search.config import SensitivityConfig
from torchslim.search.result import (
    AnalysisResult,
    BaselineResult,
    OptionResult,
    SensitivityResult,
    UnitResult,
)
from torchslim.search.reuse import ActivationCache, changed_modules
from torchslim.search.space import ANALYSES, Analysis, Unit, own_parameters
from torchslim.targets import select_layers

__all__ = ["sensitivity", "spearman", "sqnr_db"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: SQNR of identical outputs (and the floor of outputs with no signal)
SQNR_CAP_DB = 200.0


# ---------------------------------------------------------------------------- measuring
def sqnr_db(reference: torch.Tensor, output: torch.Tensor) -> float:
    """``10·log10(Σ ref² / Σ (ref − out)²)`` in dB, within ±:data:`SQNR_CAP_DB` (identical outputs: the cap).

    Example:
        >>> sqnr_db(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 4.5]))
        20.0
        >>> sqnr_db(torch.ones(4), torch.ones(4))
        200.0
    """
    ref, out = reference.double(), output.double()
    signal, noise = float((ref * ref).sum()), float(((ref - out) ** 2).sum())
    if not math.isfinite(noise):
        return -SQNR_CAP_DB
    if noise == 0.0:
        return SQNR_CAP_DB
    if signal == 0.0:
        return -SQNR_CAP_DB
    return round(max(-SQNR_CAP_DB, min(SQNR_CAP_DB, 10.0 * math.log10(signal / noise))), 10)


def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their mean rank."""
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v))
    sorted_v = v[order]
    start = 0
    for end in range(1, len(v) + 1):
        if end == len(v) or sorted_v[end] != sorted_v[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    return ranks


def spearman(a: Iterable[float], b: Iterable[float]) -> float | None:
    """Spearman rank correlation (ties averaged); ``None`` for fewer than 3 pairs or a constant side.

    Example:
        >>> spearman([1, 2, 3, 4], [10, 20, 30, 35]), spearman([1, 2, 3], [3, 2, 1]), spearman([1, 1, 1], [1, 2, 3])
        (1.0, -1.0, None)
    """
    x, y = np.asarray(list(a), dtype=float), np.asarray(list(b), dtype=float)
    if len(x) < 3 or len(x) != len(y):
        return None
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return round(float(max(-1.0, min(1.0, np.corrcoef(rx, ry)[0, 1]))), 12)


@dataclass(frozen=True)
class Scores:
    """One measurement: accuracy and loss (``None`` for the ``sqnr`` metric) and the output SQNR."""

    accuracy: float | None
    loss: float | None
    sqnr_db: float


@dataclass
class Validation:
    """The validation batches (read once), the unchanged model's logits on the first one, the loss."""

    batches: list[tuple[Any, torch.Tensor | None]]
    reference: torch.Tensor
    loss_fn: LossFn
    cache: ActivationCache | None = None

    @property
    def samples(self) -> int:
        return sum(int(batch_size_of(x)) for x, _ in self.batches)

    def measure(self, model: nn.Module, metric: str, changed: set[str] | None = None) -> Scores:
        """Accuracy and mean loss over the batches (the first one only for ``sqnr``) and the first batch's SQNR.

        With the modules ``changed`` from the unchanged model, only what they feed is recomputed (:mod:`~torchslim.search.reuse`).
        """
        correct, total, seen = 0, 0.0, 0
        sqnr = -SQNR_CAP_DB
        with eval_mode(model), torch.no_grad():
            for i, (x, y) in enumerate(self.batches[:1] if metric == "sqnr" else self.batches):
                out = call_model(model, x) if self.cache is None or changed is None else self.cache.forward(model, i, changed)
                logits = logits_of(out).float()
                if i == 0:
                    sqnr = sqnr_db(self.reference, logits)
                if metric == "sqnr" or y is None:
                    continue
                n = int(y.shape[0])
                total += float(self.loss_fn(logits, y)) * n
                correct += int((logits.argmax(dim=-1) == y).sum()) if logits.dim() == 2 else 0
                seen += n
        if metric == "sqnr":
            return Scores(None, None, sqnr)
        return Scores(correct / seen, total / seen, sqnr)


def _validation(model: nn.Module, data: DataBundle | Iterable[Any], cfg: SensitivityConfig, loss_fn: LossFn | None) -> Validation:
    """Read the validation batches once (moved to the model's device) and the unchanged model's first logits."""
    if isinstance(data, DataBundle):
        if len(data.split(cfg.split)) == 0:
            raise TorchslimError(f"data set {data.name!r} has no samples in its {cfg.split!r} split; set split, or pass "
                                 "validation batches")
        source: Iterable[Any] = data.loader(cfg.split, cfg.batch_size)
    else:
        source = data
    device = next((p.device for p in model.parameters()), None)
    batches = []
    for i, batch in enumerate(itertools.islice(iter(source), cfg.batches)):
        x, y = split_batch(batch, i)
        if y is None and cfg.metric != "sqnr":
            raise TorchslimError(f"validation batch {i} has no labels: metric {cfg.metric!r} needs them (metric 'sqnr' "
                                 "does not)")
        batches.append((move(x, device), move(y, device)))
    if not batches:
        raise TorchslimError("the validation data yields no batch")
    with eval_mode(model), torch.no_grad():
        reference = logits_of(call_model(model, batches[0][0])).float()
    if cfg.metric != "sqnr" and loss_fn is None and reference.dim() != 2:
        raise TorchslimError(f"metric {cfg.metric!r} needs logits of shape (batch, classes), got {tuple(reference.shape)}; "
                             "pass loss_fn, or use metric 'sqnr'")
    return Validation(batches, reference, loss_fn or F.cross_entropy)


# ---------------------------------------------------------------------------- the driver
@dataclass(frozen=True)
class _Base:
    """The unchanged model's figures, and what every option needs."""

    model: nn.Module
    x: Any
    params: int
    nonzeros: int
    bytes: int
    macs: int
    cfg: SensitivityConfig
    val: Validation

    @property
    def options(self) -> dict[str, Any]:
        return {"granularity": self.cfg.granularity, "round_to": self.cfg.round_to}


def _refusal(setting: float, status: Literal["refused", "failed"], reason: str, start: float) -> OptionResult:
    return OptionResult(setting=setting, status=status, reason=reason[:4000], seconds=round(time.perf_counter() - start, 6))


def _option(base: _Base, analysis: Analysis, unit: Unit, setting: float) -> OptionResult:
    """Apply ``setting`` to ``unit`` of a copy of the model, measure it; a refusal or failure is recorded, not raised."""
    start = time.perf_counter()
    if unit.refused is not None:
        return _refusal(setting, "refused", unit.refused, start)
    torch.manual_seed(base.cfg.seed)
    work = snapshot(base.model)
    try:
        report = analysis.apply(work, unit, setting, base.options, base.x)
    except TorchslimError as exc:
        return _refusal(setting, "refused", str(exc), start)
    except Exception as exc:  # noqa: BLE001 - any failure of one option is recorded with its error, never a crash
        return _refusal(setting, "failed", f"{type(exc).__name__}: {exc}", start)
    layer = next((lr for lr in report.layers if lr.name == unit.name), None)
    if layer is None:
        why = next((s.reason for s in report.skipped if s.name == unit.name), f"{analysis.technique.name} changed nothing")
        return _refusal(setting, "refused", why, start)
    try:
        scores = base.val.measure(work, base.cfg.metric, changed_modules(base.model, work))
    except Exception as exc:  # noqa: BLE001 - a model the change broke is a failed option, with the error
        return _refusal(setting, "failed", f"measuring: {type(exc).__name__}: {exc}", start)
    if scores.loss is not None and not math.isfinite(scores.loss):
        return _refusal(setting, "failed", "the loss is not finite after the change", start)
    d_bytes = analysis.bytes_change(base.model, unit, setting, base.options)
    macs_before, macs_after = report.meta.get("macs_before"), report.meta.get("macs_after")
    d_macs = 0
    if analysis.changes_macs:
        d_macs = (macs_after - macs_before) if isinstance(macs_after, int) and isinstance(macs_before, int) else (
            count_macs(work, base.x) - base.macs)
    return OptionResult(
        setting=setting, status="ok", achieved=analysis.achieved(layer, setting),
        accuracy=scores.accuracy, loss=scores.loss, sqnr_db=scores.sqnr_db,
        d_params=count_params(work) - base.params, d_nonzeros=count_nonzeros(work) - base.nonzeros,
        d_bytes=d_bytes if d_bytes is not None else sparse_bytes(work) - base.bytes, d_macs=d_macs,
        seconds=round(time.perf_counter() - start, 6),
    )


def _layers_for(model: nn.Module, cfg: SensitivityConfig) -> dict[str, list[str]]:
    """The chosen layers of each analysis: the union of the techniques' candidates through the targets grammar."""
    names: dict[str, nn.Module] = {}
    for a in cfg.analyses:
        for name, module in ANALYSES.get(a).technique.candidates(model):
            names.setdefault(name, module)
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    universe = sorted(names.items(), key=lambda item: order.get(item[0], len(order)))
    chosen, _ = select_layers(universe, cfg.targets)
    out: dict[str, list[str]] = {}
    for a in cfg.analyses:
        out[a] = [n for n, _, m in chosen if m is None or m.value is None or m.value.analyses is None or a in m.value.analyses]
    return out


def _unit_result(model: nn.Module, unit: Unit, options: list[OptionResult]) -> UnitResult:
    own = own_parameters(model, unit.layers)
    return UnitResult(name=unit.name, kind=unit.kind, layers=list(unit.layers), params=sum(p.numel() for _, p in own),
                      bytes=sum(p.numel() * p.element_size() for _, p in own), options=options)


def _analysis_result(name: str, setting: str, settings: list[float], units: list[UnitResult], seconds: float) -> AnalysisResult:
    measured = [o for u in units for o in u.options if o.status == "ok"]
    acc = [(o.sqnr_db, o.accuracy) for o in measured if o.sqnr_db is not None and o.accuracy is not None]
    loss = [(o.sqnr_db, o.loss) for o in measured if o.sqnr_db is not None and o.loss is not None]
    return AnalysisResult(
        name=name, setting=setting, settings=settings, units=units, seconds=round(seconds, 6),  # type: ignore[arg-type]
        spearman_accuracy=spearman(*zip(*acc)) if acc else None, spearman_loss=spearman(*zip(*loss)) if loss else None,
    )


def sensitivity(
    model: nn.Module,
    data: DataBundle | Iterable[Any],
    config: SensitivityConfig | dict[str, Any] | None = None,
    *,
    example_input: Any = None,
    loss_fn: LossFn | None = None,
    progress: bool = True,
) -> SensitivityResult:
    """Measure how much each layer (or coupled channel group) suffers from each setting of each analysis.

    Args:
        model: the trained model; it is not changed (every option runs on a copy).
        data: a data set (its ``split``, ``val`` by default, in batches of ``batch_size``) or an
            iterable of labelled batches (the first ``batches`` of them are measured).
        config: a :class:`SensitivityConfig` or a mapping.
        example_input: one input batch for tracing and MACs (default: the first validation sample).
        loss_fn: ``(logits, labels) -> mean loss`` for the ``loss`` metric (cross-entropy by default).
        progress: show a progress bar on a terminal.

    Returns:
        A :class:`~torchslim.search.result.SensitivityResult`.

    Raises:
        ConfigError: the config is invalid.
        TorchslimError: the data yields no batch, or no labels for a metric that needs them.
    """
    cfg = SensitivityConfig.parse(config)
    start = time.perf_counter()
    val = _validation(model, data, cfg, loss_fn)
    x = example_input if example_input is not None else first_sample(val.batches[0][0])
    base = _Base(model, x, count_params(model), count_nonzeros(model), sparse_bytes(model), count_macs(model, x), cfg, val)
    baseline = BaselineResult() if cfg.metric == "sqnr" else BaselineResult(
        accuracy=(s := val.measure(model, cfg.metric)).accuracy, loss=s.loss)
    layers = _layers_for(model, cfg)
    plans = [(ANALYSES.get(a), ANALYSES.get(a).units(model, x, layers[a]), cfg.settings(a)) for a in cfg.analyses]
    used = val.batches[:1] if cfg.metric == "sqnr" else val.batches
    val.cache = ActivationCache.build(model, [b for b, _ in used], [set(u.layers) for _, units, _ in plans for u in units])
    analyses = []
    with progress_bar(enabled=progress) as bar:
        task = bar.add_task("sensitivity", total=sum(len(units) * len(s) for _, units, s in plans))
        for analysis, units, settings in plans:
            t0 = time.perf_counter()
            results = []
            for unit in units:
                bar.update(task, description=f"sensitivity {analysis.name} {unit.name}")
                options = []
                for setting in settings:
                    options.append(_option(base, analysis, unit, setting))
                    bar.advance(task)
                results.append(_unit_result(model, unit, options))
            analyses.append(_analysis_result(analysis.name, analysis.setting, settings, results, time.perf_counter() - t0))
    return SensitivityResult(
        model=type(model).__name__, metric=cfg.metric, higher_is_better=cfg.metric != "loss", seed=cfg.seed,
        samples=0 if cfg.metric == "sqnr" else val.samples, proxy_samples=batch_size_of(val.batches[0][0]),
        baseline=baseline, params=base.params, nonzeros=base.nonzeros, bytes=base.bytes, macs=base.macs,
        config=cfg.model_dump(mode="json"), analyses=analyses, wall_s=round(time.perf_counter() - start, 6),
    )
