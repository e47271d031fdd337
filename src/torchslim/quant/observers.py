"""Observers: collect statistics of a tensor and turn them into scale and zero point.

Registered by name in :data:`OBSERVERS`: ``minmax``, ``moving_average``,
``percentile`` and ``mse`` (search over clipping ranges minimising the
quantization error). Every observer works at the spec's granularity.

Example:
    >>> obs = OBSERVERS.get("percentile")(QuantSpec(signed=False, symmetric=False))
    >>> obs.update(torch.randn(1000))
    >>> qp = obs.qparams()
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from torchslim.errors import TorchslimError
from torchslim.quant.affine import QParams, QuantSpec, _blocks, dequantize, qparams_from_range, quantize, reduce_min_max
from torchslim.registry import Registry


class Observer:
    """Base observer: running min and max at the spec's granularity.

    Args:
        spec: how the observed tensor will be quantized.
    """

    def __init__(self, spec: QuantSpec) -> None:
        self.spec = spec
        self.min_val: torch.Tensor | None = None
        self.max_val: torch.Tensor | None = None
        self.count = 0

    def update(self, x: torch.Tensor) -> None:
        """Fold a new batch of values into the statistics."""
        lo, hi = reduce_min_max(x, self.spec)
        if self.min_val is None or self.max_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val, self.max_val = torch.minimum(self.min_val, lo), torch.maximum(self.max_val, hi)
        self.count += 1

    def _check(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.min_val is None or self.max_val is None:
            raise TorchslimError(f"{type(self).__name__} has seen no data (was the calibration loader empty?)")
        return self.min_val, self.max_val

    def qparams(self) -> QParams:
        """Scale and zero point from what was observed.

        Raises:
            TorchslimError: nothing was observed.
        """
        lo, hi = self._check()
        return _with_axis(qparams_from_range(lo, hi, self.spec), self.spec, self._ndim)

    @property
    def _ndim(self) -> int:
        return getattr(self, "_last_ndim", 1)


def _with_axis(qp: QParams, spec: QuantSpec, ndim: int) -> QParams:
    if qp.axis is None:
        return qp
    return QParams(qp.scale, qp.zero_point, qp.qmin, qp.qmax, qp.axis % max(ndim, 1), qp.group_size)


ObserverFactory = Callable[..., Observer]
OBSERVERS: Registry[ObserverFactory] = Registry("observer")


def _remember_ndim(obs: Observer, x: torch.Tensor) -> None:
    obs._last_ndim = x.dim()  # type: ignore[attr-defined]


@OBSERVERS.register("minmax")
class MinMaxObserver(Observer):
    """Running minimum and maximum over everything seen.

    Example:
        >>> o = MinMaxObserver(QuantSpec()); o.update(torch.tensor([-2.0, 1.0]))
        >>> round(float(o.qparams().scale) * 127.5, 6)    # symmetric 8-bit: max|x| / 127.5
        2.0
    """

    def update(self, x: torch.Tensor) -> None:
        _remember_ndim(self, x)
        super().update(x)


@OBSERVERS.register("moving_average")
class MovingAverageObserver(Observer):
    """Exponential moving average of per-batch min and max (``momentum`` weight of the new batch).

    Example:
        >>> o = MovingAverageObserver(QuantSpec(), momentum=0.5)
        >>> o.update(torch.tensor([-4.0, 4.0])); o.update(torch.tensor([-2.0, 2.0]))
        >>> float(o.max_val)
        3.0
    """

    def __init__(self, spec: QuantSpec, momentum: float = 0.1) -> None:
        super().__init__(spec)
        if not 0.0 < momentum <= 1.0:
            raise TorchslimError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum

    def update(self, x: torch.Tensor) -> None:
        _remember_ndim(self, x)
        lo, hi = reduce_min_max(x, self.spec)
        if self.min_val is None or self.max_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            m = self.momentum
            self.min_val = (1 - m) * self.min_val + m * lo
            self.max_val = (1 - m) * self.max_val + m * hi
        self.count += 1


class _SampleObserver(Observer):
    """Keeps a bounded sample of the values (per channel/group when needed).

    Each batch contributes at most ``max_samples`` values (per unit: split over
    the units that own a scale), drawn at random with a generator seeded by the
    batch's index, so a calibration run is deterministic.
    """

    def __init__(self, spec: QuantSpec, max_samples: int = 200_000) -> None:
        super().__init__(spec)
        self.max_samples = max_samples
        self.samples: list[torch.Tensor] = []

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as (units, values) where a unit owns one scale (1 unit per tensor)."""
        x = x.detach().float()
        if self.spec.granularity == "tensor":
            return x.reshape(1, -1)
        axis = self.spec.axis % x.dim()
        if self.spec.granularity == "channel":
            return x.movedim(axis, 0).reshape(x.shape[axis], -1)
        if self.spec.group_size is None:
            raise TorchslimError("granularity 'group' needs group_size")
        b = _blocks(x, axis, self.spec.group_size)  # (..., nb, g, ...)
        b = b.movedim(axis + 1, -1)  # group values last
        return b.reshape(-1, self.spec.group_size)

    def update(self, x: torch.Tensor) -> None:
        _remember_ndim(self, x)
        super().update(x)
        self._shape = reduce_min_max(x, self.spec)[0].shape
        rows = self._rows(x)
        per_row = max(1, self.max_samples // max(1, rows.shape[0]))
        if rows.shape[1] > per_row:
            # a seeded random subset, not a stride: a stride that divides the channel count keeps only
            # some channels of a (tokens, channels) activation and never sees an outlier channel
            gen = torch.Generator().manual_seed(self.count)
            keep = torch.randperm(rows.shape[1], generator=gen)[:per_row].sort().values
            rows = rows[:, keep.to(rows.device)]
        self.samples.append(rows)

    def _data(self) -> torch.Tensor:
        self._check()
        return torch.cat(self.samples, dim=1)


@OBSERVERS.register("percentile")
class PercentileObserver(_SampleObserver):
    """Clip the range at the ``percentile``-th and ``(100 - percentile)``-th percentiles.

    Example:
        >>> o = PercentileObserver(QuantSpec(signed=False, symmetric=False), percentile=99.0)
        >>> o.update(torch.arange(1001.0))
        >>> float(o.max_val) > 990
        True
    """

    def __init__(self, spec: QuantSpec, percentile: float = 99.99, max_samples: int = 200_000) -> None:
        super().__init__(spec, max_samples)
        if not 50.0 < percentile <= 100.0:
            raise TorchslimError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def qparams(self) -> QParams:
        data = self._data()
        q = torch.tensor([1 - self.percentile / 100.0, self.percentile / 100.0])
        bounds = torch.quantile(data, q, dim=1)
        lo, hi = bounds[0].reshape(self._shape), bounds[1].reshape(self._shape)
        return _with_axis(qparams_from_range(lo, hi, self.spec), self.spec, self._ndim)


@OBSERVERS.register("mse")
class MSEObserver(_SampleObserver):
    """Search clipping ratios of the min-max range; keep, per unit, the one with the least squared error.

    Args:
        spec: the quantization spec.
        grid: number of candidate ratios in ``[min_ratio, 1]``.
        min_ratio: the smallest fraction of the observed range tried.

    Example:
        >>> _ = torch.manual_seed(0); o = MSEObserver(QuantSpec(bits=4))
        >>> x = torch.randn(10000); o.update(x)
        >>> float(o.qparams().scale) < float(x.abs().max()) / 7
        True
    """

    def __init__(self, spec: QuantSpec, grid: int = 50, min_ratio: float = 0.2, max_samples: int = 200_000) -> None:
        super().__init__(spec, max_samples)
        self.grid, self.min_ratio = grid, min_ratio

    def qparams(self) -> QParams:
        data = self._data()  # (units, n)
        lo_all, hi_all = self._check()
        lo_all, hi_all = lo_all.reshape(-1), hi_all.reshape(-1)
        best_err = torch.full((data.shape[0],), float("inf"))
        best_lo, best_hi = lo_all.clone(), hi_all.clone()
        flat_spec = self.spec.model_copy(update={"granularity": "channel", "axis": 0})
        for i in range(self.grid):
            r = 1.0 - (1.0 - self.min_ratio) * i / max(1, self.grid - 1)
            lo, hi = lo_all * r, hi_all * r
            qp = qparams_from_range(lo, hi, flat_spec)
            qp = QParams(qp.scale, qp.zero_point, qp.qmin, qp.qmax, 0, None)
            err = ((dequantize(quantize(data, qp), qp) - data) ** 2).mean(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo, best_hi = torch.where(better, lo, best_lo), torch.where(better, hi, best_hi)
        shape = self._shape
        qp = qparams_from_range(best_lo.reshape(shape), best_hi.reshape(shape), self.spec)
        return _with_axis(qp, self.spec, self._ndim)


def make_observer(name: str, spec: QuantSpec, **kwargs: float | int) -> Observer:
    """Build the registered observer ``name`` for ``spec``.

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists what is).

    Example:
        >>> type(make_observer("minmax", QuantSpec())).__name__
        'MinMaxObserver'
    """
    return OBSERVERS.get(name)(spec, **kwargs)
