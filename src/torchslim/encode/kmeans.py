"""Weight sharing: per-layer k-means on the non-zero weights (Deep Compression, Han et al. 2016).

``share_weights_(model, config)``, the driver's run of the technique object
:data:`SHARE`, clusters each targeted layer's live weights into ``2**bits``
centroids and replaces every weight by its centroid. The
cluster of each weight is kept in an ``int16`` buffer ``<param>_codes`` (``-1``
where the weight is pruned), so the sharing survives a checkpoint and training:

* during fine-tuning (:func:`torchslim.train.finetune` keeps every registered
  constraint, :data:`SHARING` included) the gradients of all weights of a cluster are summed and that
  sum is what every member receives, so the centroid moves by exactly the
  paper's update; after each optimizer step every weight is snapped to its
  cluster's value (the value of the cluster's first member), so members stay
  bit-identical whatever the optimizer does; pruned weights stay ``+0.0``;
* :mod:`torchslim.io.tslim` stores a shared tensor as its codebook and
  the (Huffman-coded) cluster index of each non-zero.

Centroid initialisation, as compared in the paper: ``linear`` (evenly spaced
between the smallest and largest weight: keeps the rare large weights, the
paper's choice), ``density`` (at quantiles of the weights' distribution) and
``random`` (distinct weights drawn with the seed). Lloyd iterations then run in
1-D (assignment by the midpoints between sorted centroids).

Example:
    Per-layer bits through ``targets`` (Deep Compression uses 8 bits for
    convolutions, ``"re:conv.*": {"bits": 8}``, and 5 for fully connected layers;
    here the first layer of an MLP gets 8):

    >>> data = ts.load_data("digits")
    >>> model = ts.create_model("lenet300", in_features=64)
    >>> report = ts.share_weights_(model, {"bits": 5, "targets": {"fc1": {"bits": 8}, "re:fc.*": {}}})
    >>> [(layer.name, layer.details["clusters"]) for layer in report.layers]
    [('fc1', 256), ('fc2', 32), ('fc3', 32)]
    >>> _ = ts.finetune(model, data, {"epochs": 2, "lr": 0.01})   # centroids fine-tuned
    >>> len(model.fc2.weight.unique())                           # still 32 shared values
    32
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from torchslim.config import Config
from torchslim.errors import TransformRefusedError
from torchslim.graph import constraints
from torchslim.report import LayerReport, Report, SkippedLayer
from torchslim.report.coverage import NORMALIZATIONS
from torchslim.targets import check_target_keys
from torchslim.technique import FilterFn, Inputs, Plan, Selection, Technique, legacy_inputs, refuse_if_empty, run

CODES_SUFFIX = "_codes"
#: layers whose weight sharing always covered (every module with a parameter of two or more
#: dimensions of its own is shareable: Embedding, GRU/LSTM weights, attention input projections too)
SHAREABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
INITS = ("linear", "density", "random")
_CACHE_ATTR = "_torchslim_share_cache"


class LayerShareConfig(Config):
    """Per-layer override inside ``targets`` (fields left out inherit the verb's values)."""

    bits: int | None = Field(default=None, ge=1, le=15)
    init: Literal["linear", "density", "random"] | None = None


class ShareConfig(Config):
    """Weight sharing by k-means.

    Attributes:
        bits: ``log2`` of the number of shared values per layer (1 to 15); the
            paper uses 8 for convolutions and 5 for fully connected layers.
        init: centroid initialisation: ``linear``, ``density`` or ``random``.
        iterations: Lloyd iterations (stops earlier when assignments settle).
        targets: per-layer overrides (``LayerShareConfig``) or ``null`` to skip a
            layer, keyed by exact name or ``re:`` regular expression; when given,
            layers no key matches are left alone.
        min_weights: layers with fewer live weights than this are left dense.
        relocate_empty: restart empty clusters at the worst-served weights (``False``:
            plain Lloyd iterations, empty clusters dropped, as in the paper).
        seed: seed of the ``random`` initialisation.
    """

    bits: int = Field(default=5, ge=1, le=15)
    init: Literal["linear", "density", "random"] = "linear"
    iterations: int = Field(default=30, ge=0, le=1000)
    targets: dict[str, LayerShareConfig | None] | None = None
    min_weights: int = Field(default=0, ge=0)
    relocate_empty: bool = True
    seed: int = 0

    @field_validator("targets")
    @classmethod
    def _check_targets(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            issues = check_target_keys(v)
            if issues:
                raise ValueError("; ".join(str(i) for i in issues))
        return v


# -- 1-D k-means ----------------------------------------------------------------------------------


def init_centroids(values: np.ndarray, k: int, init: str, rng: np.random.Generator) -> np.ndarray:
    """``k`` initial centroids (sorted, float64) for 1-D ``values``.

    Example:
        >>> init_centroids(np.array([-1.0, 0.5, 2.0]), 4, "linear", np.random.default_rng(0))
        array([-1.,  0.,  1.,  2.])
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; allowed: {', '.join(INITS)}")
    lo, hi = float(values.min()), float(values.max())
    if init == "linear":
        return np.linspace(lo, hi, k)
    if init == "density":
        return np.quantile(values, (np.arange(k) + 0.5) / k)
    distinct = np.unique(values)
    return np.sort(rng.choice(distinct, size=min(k, distinct.size), replace=False))


def kmeans_1d(
    values: np.ndarray,
    k: int,
    *,
    init: str = "linear",
    iterations: int = 30,
    seed: int = 0,
    relocate_empty: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster 1-D ``values`` into at most ``k`` groups; returns ``(centroids float32, labels int64)``.

    With ``relocate_empty`` a cluster left empty during the iterations (linear
    initialisation puts centroids in the gap pruning leaves around zero)
    restarts at the value farthest from its centroid, as k-means
    implementations commonly do. Centroids are sorted; clusters still empty at the end are dropped, so every returned
    centroid has at least one member and ``labels`` index ``centroids``. With
    no more distinct values than ``k`` each distinct value is its own centroid
    (exact). Deterministic for a given ``seed``.

    Example:
        >>> c, labels = kmeans_1d(np.array([0.1, 0.11, 0.9, 1.0]), 2)
        >>> c.dtype, [round(float(v), 3) for v in c], labels.tolist()
        (dtype('float32'), [0.105, 0.95], [0, 0, 1, 1])
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    distinct, inverse = np.unique(values, return_inverse=True)
    if distinct.size <= k:
        return distinct.astype(np.float32), inverse.astype(np.int64)
    rng = np.random.default_rng(seed)
    centroids = init_centroids(values, k, init, rng)
    labels = _assign(values, centroids)
    for _ in range(iterations):
        counts = np.bincount(labels, minlength=centroids.size)
        sums = np.bincount(labels, weights=values, minlength=centroids.size)
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        empty = np.flatnonzero(counts == 0)
        if relocate_empty and empty.size:
            # an empty cluster restarts at the value worst served by its centroid (largest error first)
            error = np.abs(values - updated[labels])
            worst = np.unique(values[np.argsort(-error, kind="stable")[: 4 * empty.size]])
            worst = worst[~np.isin(worst, updated)][: empty.size]
            updated[empty[: worst.size]] = worst
        centroids = np.sort(updated)
        new_labels = _assign(values, centroids)
        if np.array_equal(new_labels, labels) and not (relocate_empty and empty.size):
            break
        labels = new_labels
    # final values: members' means in float32, then drop empty clusters
    counts = np.bincount(labels, minlength=centroids.size)
    sums = np.bincount(labels, weights=values, minlength=centroids.size)
    used = counts > 0
    centroids = (sums[used] / counts[used]).astype(np.float32)
    remap = np.cumsum(used) - 1
    labels = remap[labels]
    order = np.argsort(centroids, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return centroids[order], rank[labels].astype(np.int64)


def _assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest sorted centroid of each value (ties go to the lower centroid)."""
    mids = (centroids[1:] + centroids[:-1]) / 2
    return np.searchsorted(mids, values, side="left").astype(np.int64)


# -- codes on modules ------------------------------------------------------------------------------


def get_codes(module: nn.Module, param_name: str = "weight") -> torch.Tensor | None:
    """The cluster codes buffer of ``module.<param_name>`` (``None`` when it is not shared)."""
    return module._buffers.get(param_name + CODES_SUFFIX)


def iter_shared(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, torch.Tensor]]:
    """Yield ``(module_name, module, param_name, codes)`` for every shared parameter."""
    return constraints.members(model, SHARING)


def _cache(module: nn.Module, pname: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(flat codes int64, live positions, first member of each cluster)``, cached per codes buffer."""
    codes = cast(torch.Tensor, module._buffers[pname + CODES_SUFFIX])
    store: dict[str, Any] = module.__dict__.setdefault(_CACHE_ATTR, {})
    hit = store.get(pname)
    if hit is None or hit[0] is not codes or hit[1] != codes._version:
        flat = codes.detach().flatten().long()
        live = torch.nonzero(flat >= 0).flatten()
        k = int(flat.max()) + 1 if live.numel() else 0
        first = torch.full((k,), -1, dtype=torch.long, device=flat.device)
        # scatter in reverse order so the smallest position of each cluster is written last
        rev = live.flip(0)
        first[flat[rev]] = rev
        hit = (codes, codes._version, (flat, live, first))
        store[pname] = hit
    return hit[2]


def validate_codes(codes: torch.Tensor, param: torch.Tensor, what: str) -> None:
    """Raise ``ValueError`` unless ``codes`` fits ``param``: same shape, every cluster value-consistent."""
    if tuple(codes.shape) != tuple(param.shape):
        raise ValueError(f"{what}: codes shape {tuple(codes.shape)} does not match {tuple(param.shape)}")
    if codes.dtype not in (torch.int16, torch.int32, torch.int64):
        raise ValueError(f"{what}: codes must be an integer tensor, got {codes.dtype}")
    flat = codes.flatten().long()
    if flat.numel() and int(flat.min()) < -1:
        raise ValueError(f"{what}: codes below -1")
    k = int(flat.max()) + 1 if flat.numel() else 0
    live = flat >= 0
    if k and int(torch.bincount(flat[live], minlength=k).min()) == 0:
        raise ValueError(f"{what}: cluster ids are not contiguous (an id in 0..{k - 1} is unused)")


def attach_codes(module: nn.Module, param_name: str, codes: torch.Tensor) -> None:
    """Mark ``module.<param_name>`` as shared with cluster ``codes`` (``-1`` = pruned) and snap it.

    Every member of a cluster takes the value of the cluster's first member and
    pruned entries become ``+0.0``, so a parameter already on its codebook is
    unchanged bit for bit.
    """
    param = getattr(module, param_name)
    validate_codes(codes, param, f"{param_name} of {type(module).__name__}")
    buffer = param_name + CODES_SUFFIX
    codes = codes.to(
        device=param.device, dtype=torch.int16 if (codes.numel() == 0 or int(codes.max()) < 2**15) else torch.int32
    )
    if buffer in module._buffers:
        module._buffers[buffer] = codes
    else:
        module.register_buffer(buffer, codes)
    snap_(module, param_name)


@torch.no_grad()
def snap_(module: nn.Module, param_name: str) -> None:
    """Set every weight to its cluster's value (the first member's) and pruned weights to ``+0.0``."""
    param = getattr(module, param_name)
    flat, live, first = _cache(module, param_name)
    w = param.data.view(-1) if param.is_contiguous() else param.data.reshape(-1)
    codebook = w[first] if first.numel() else w.new_zeros(0)
    out = torch.zeros_like(w)
    if live.numel():
        out[live] = codebook[flat[live]]
    param.data.copy_(out.view_as(param))


def codebook_of(module: nn.Module, param_name: str = "weight") -> torch.Tensor:
    """The shared values of ``module.<param_name>`` (index = cluster id)."""
    param = getattr(module, param_name)
    _, _, first = _cache(module, param_name)
    return param.detach().reshape(-1)[first].clone()


@torch.no_grad()
def sum_cluster_gradients_(model: nn.Module) -> None:
    """Replace each shared parameter's gradient by its cluster's summed gradient (pruned: 0)."""
    for _, module, pname, _ in iter_shared(model):
        param = getattr(module, pname)
        if param.grad is None:
            continue
        flat, live, first = _cache(module, pname)
        g = param.grad.reshape(-1)
        sums = torch.zeros(first.numel(), dtype=g.dtype, device=g.device)
        sums.index_add_(0, flat[live], g[live])
        out = torch.zeros_like(g)
        out[live] = sums[flat[live]]
        param.grad.copy_(out.view_as(param.grad))


def reapply_sharing(model: nn.Module) -> None:
    """Snap every shared parameter back onto its codebook (after an optimizer step)."""
    for _, module, pname, _ in iter_shared(model):
        snap_(module, pname)


def remove_sharing(model: nn.Module) -> int:
    """Drop the codes buffers (the weights keep their shared values). Returns how many were removed."""
    found = list(iter_shared(model))
    for _, module, pname, _ in found:
        del module._buffers[pname + CODES_SUFFIX]
        module.__dict__.get(_CACHE_ATTR, {}).pop(pname, None)
    return len(found)


SHARING = constraints.register(
    constraints.Constraint(
        "sharing",
        CODES_SUFFIX,
        attach=attach_codes,
        validate=validate_codes,
        before_step=sum_cluster_gradients_,
        after_step=reapply_sharing,
        order=1,
        after_weights=True,  # snapping a loaded shared weight onto its codebook is then a no-op
    )
)


# -- the technique ----------------------------------------------------------------------------------


def shared_params(module: nn.Module) -> list[str]:
    """The parameters of ``module`` itself that weight sharing clusters: every one of two or more dimensions.

    A Linear/Conv/Embedding's ``weight``; a GRU/LSTM's ``weight_ih_l0``, ``weight_hh_l0``...;
    an ``nn.MultiheadAttention``'s ``in_proj_weight``. Biases and normalisation scales (one
    dimension) stay as they are.

    Example:
        >>> shared_params(nn.GRU(4, 8))
        ['weight_ih_l0', 'weight_hh_l0']
        >>> shared_params(nn.Embedding(10, 4)), shared_params(nn.LayerNorm(4))
        (['weight'], [])
    """
    return [n for n, p in module.named_parameters(recurse=False) if p is not None and p.dim() >= 2]


def shareable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules with a parameter weight sharing may cluster (:func:`shared_params`), in registration order."""
    return [(n, m) for n, m in model.named_modules() if n and shared_params(m)]


@dataclass(frozen=True)
class LayerSharing:
    """One layer's planned sharing.

    Attributes:
        name: the layer's qualified name.
        module: the layer.
        codes: ``int32`` cluster of each weight (``-1`` where the weight is not live), on the CPU.
        shared: the shared value of each live weight, in the order of ``codes >= 0``, in the weight's dtype.
        report: the layer's :class:`LayerReport`.
    """

    name: str
    module: nn.Module
    codes: torch.Tensor
    shared: torch.Tensor
    report: LayerReport
    param: str = "weight"


def live_weights(module: nn.Module, param: str = "weight") -> torch.Tensor:
    """Which weights of ``module.<param>`` are live: its pruning mask (the ``mask`` constraint), else the non-zeros."""
    mask = module._buffers.get(param + constraints.get("mask").suffix)
    return (_weight(module, param) != 0) if mask is None else mask.bool()


def _weight(module: nn.Module, param: str = "weight") -> torch.Tensor:
    """``module.<param>``, detached."""
    return cast(torch.Tensor, getattr(module, param)).detach()


def layer_name(name: str, param: str) -> str:
    """How a report names one shared parameter: the module for its ``weight``, else ``module.param``."""
    return name if param == "weight" else f"{name}.{param}" if name else param


def plan_layer(
    name: str, module: nn.Module, bits: int, init: str, cfg: ShareConfig, index: int, param: str = "weight"
) -> LayerSharing | str:
    """The k-means of one parameter's live weights, or why it is skipped (reads only)."""
    weight = _weight(module, param)
    live = live_weights(module, param)
    n_live = int(live.sum())
    if n_live == 0 or n_live < cfg.min_weights:
        return f"{n_live} live weights (min_weights {cfg.min_weights})"
    values = weight[live].cpu().double().numpy()
    centroids, labels = kmeans_1d(
        values, 2**bits, init=init, iterations=cfg.iterations, seed=cfg.seed + index, relocate_empty=cfg.relocate_empty
    )
    codes = torch.full(weight.shape, -1, dtype=torch.int32)
    codes[live.cpu()] = torch.from_numpy(labels.astype(np.int32))
    shared = torch.from_numpy(centroids[labels]).to(weight.dtype)
    change = float((shared.double() - torch.from_numpy(values)).abs().mean())
    details = {"bits": bits, "clusters": int(centroids.size), "init": init, "mean_abs_change": change}
    # counted on the live weights: the report's nonzeros are the weights clustered
    report = LayerReport.of(layer_name(name, param), module, "shared", details, weight=live)
    return LayerSharing(layer_name(name, param), module, codes, shared, report, param)


class Share(Technique[ShareConfig, Plan]):
    """Weight sharing as a technique object: plan the k-means of every chosen layer, apply the codes.

    ``plan`` clusters each chosen layer's live weights (a pruning mask, or the
    non-zeros) and refuses when no layer is left; ``apply`` writes the shared
    values and attaches the ``<param>_codes`` buffers (:data:`SHARING`).

    Example:
        >>> from torchslim.technique import run
        >>> model = ts.create_model("lenet300")
        >>> report = run(SHARE, model, {"bits": 2, "targets": {"fc3": {}}})
        >>> [(l.name, l.details["clusters"]) for l in report.layers], len(model.fc3.weight.unique())
        ([('fc3', 4)], 4)
    """

    name = "share"
    title = "weight sharing"
    config = ShareConfig
    verb = "share"
    function = "share_weights_"

    def candidates(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """Every module with a parameter of two or more dimensions (:func:`shareable_layers`)."""
        return shareable_layers(model)

    def select(self, model: nn.Module, cfg: ShareConfig, filter_fn: FilterFn | None) -> Selection:
        """The targets grammar over :meth:`candidates`; refuses a model with no weight matrix."""
        if not self.candidates(model):
            raise TransformRefusedError("the model has no layer to share (no parameter of two or more dimensions)")
        return super().select(model, cfg, filter_fn)

    def plan(self, model: nn.Module, cfg: ShareConfig, selection: Selection, inputs: Inputs) -> Plan:
        """Cluster every chosen layer (``Plan.work``: :class:`LayerSharing` list); refuses when none is left."""
        skipped = list(selection.skipped)
        work: list[LayerSharing] = []
        for index, (name, module, match) in enumerate(selection.chosen):
            override = match.value if match is not None and match.value is not None else LayerShareConfig()
            bits = override.bits if override.bits is not None else cfg.bits
            init = override.init if override.init is not None else cfg.init
            for param in shared_params(module):
                layer = plan_layer(name, module, bits, init, cfg, index, param)
                if isinstance(layer, str):
                    skipped.append(SkippedLayer(layer_name(name, param), layer))
                else:
                    work.append(layer)
        refuse_if_empty(work, skipped, "share")
        return Plan(skipped, {"config": cfg.model_dump()}, work)

    @torch.no_grad()
    def apply(self, model: nn.Module, plan: Plan) -> list[LayerReport]:
        """Write each layer's shared values, then attach its codes (snapping is then a no-op)."""
        for layer in plan.work:
            # the centroids go in first, so snapping to each cluster's first member keeps them
            weight = cast(torch.Tensor, getattr(layer.module, layer.param))
            new = torch.zeros(weight.shape, dtype=weight.dtype)
            new[layer.codes >= 0] = layer.shared
            weight.data.copy_(new.to(weight.device))
            attach_codes(layer.module, layer.param, layer.codes)
        return [layer.report for layer in plan.work]

    def skip_reason(self, name: str, module: nn.Module, params: list[str]) -> str | None:
        """Parameters of one dimension (biases, a PReLU's slopes) are not clustered; otherwise the generic reason.

        Example:
            >>> SHARE.skip_reason("gru", nn.GRU(2, 2), ["bias_ih_l0", "bias_hh_l0"])
            'GRU: bias_ih_l0, bias_hh_l0 are not shared (share_weights_ clusters parameters of two or more dimensions)'
        """
        if name and not isinstance(module, NORMALIZATIONS) and all(module.get_parameter(p).dim() < 2 for p in params):
            held = f"{', '.join(params)} {'are' if len(params) > 1 else 'is'}"
            return f"{type(module).__name__}: {held} not shared ({self.function} clusters parameters of two or more dimensions)"
        return super().skip_reason(name, module, params)


#: the weight-sharing technique object (``share_weights_`` is ``run(SHARE, ...)``)
SHARE = Share()


def share_weights_(
    model: nn.Module,
    config: ShareConfig | dict[str, Any] | None = None,
    *,
    filter_fn: FilterFn | None = None,
    calibration: Iterable[Any] | None = None,
    example_input: Any = None,
    **deprecated: Any,
) -> Report:
    """Share the weights of ``model`` by per-layer k-means, in place: every weight matrix (Linear, Conv,
    Embedding, GRU/LSTM weights, attention input projections), each with its own codebook.

    Only live weights are clustered (a pruning mask, or the non-zeros when the
    layer has none); pruned weights stay exactly zero. Every cluster is computed
    before any layer changes, and a refusal or failure leaves the model bit-identical.

    Args:
        model: modified in place (weights replaced by centroids, ``<param>_codes`` buffers added).
        config: a :class:`ShareConfig` or a mapping validated into one.
        filter_fn: optional ``(module, name) -> bool``; layers it rejects are skipped.
        calibration: unused (weight sharing needs no data); accepted for the common signature.
        example_input: unused; accepted for the common signature.

    Returns:
        A :class:`Report`: per layer the clusters used, bits, live weights and the
        mean absolute change of the live weights.

    Raises:
        ConfigError: bad config (every problem listed).
        TransformRefusedError: no layer to share.

    Example:
        >>> model = ts.create_model("lenet300")
        >>> report = ts.share_weights_(model, {"bits": 5})
        >>> [layer.details["clusters"] for layer in report.layers]
        [32, 32, 32]
    """
    inputs = legacy_inputs("share_weights_", Inputs(calibration, example_input), deprecated)
    return run(SHARE, model, config, filter_fn=filter_fn, inputs=inputs)
