"""Importance criteria: a registry of scores for every prunable weight.

Every criterion gives one score per weight element (a tensor shaped like the
layer's ``weight``; higher = more important). Element pruning removes the lowest
scores; structured pruning sums the element scores of a unit. Criteria that
need data gather their statistics for every layer in ONE pass over the
calibration batches (:func:`compute_scores`).

Registered criteria (``needs`` in brackets):

=====================  ===================================================================
``magnitude``          ``|w|`` (L1; Han et al. 2015) [nothing]
``l2``                 ``w²`` (a unit's sum is its squared L2 norm) [nothing]
``gradient``           ``E_b |g_b|``: mean over calibration batches of the absolute
                       batch-mean gradient [gradients]
``taylor``             ``E_b |w · g_b|``: first-order Taylor estimate of the loss change
                       when the weight is removed, averaged in absolute value over
                       batches (Molchanov et al. 2017) [gradients]
``hessian_fisher``     OBD saliency ``½·h·w²`` (LeCun et al. 1990) with ``h`` the
                       empirical-Fisher diagonal ``(1/N) Σ_n g_n²`` over the per-sample
                       gradients ``g_n`` of the calibration samples [per-sample gradients]
``hessian_hutchinson`` OBD saliency ``½·|h|·w²`` with ``h = E_z[z ⊙ Hz]`` (Hutchinson's
                       estimator; ``HUTCHINSON_PROBES`` Rademacher probes ``z`` per
                       calibration batch, the Hessian-vector products by one batched
                       double backward). Negative estimates are probe noise or
                       negative curvature; OBD ranks by curvature magnitude [hvp]
``activation_mean``    ``|w_ij| · mean|x_j|`` [activations]
``activation_max``     ``|w_ij| · max|x_j|`` [activations]
``activation_std``     ``|w_ij| · std(x_j)`` [activations]
``random``             uniform random scores, the baseline every criterion must beat
=====================  ===================================================================

Activation criteria measure a unit's output where it feeds the next layer: the
statistic of input feature ``j`` of a layer is the statistic of unit ``j`` of the
layer before it (after its non-linearity), taken with forward pre-hooks over all
batch/sequence/spatial positions (for convolutions, per input channel). For
element granularity each weight is scored by ``|w_ij|`` times the statistic of
the unit it reads (Wanda, Sun et al. 2023, uses the L2 norm ``‖x_j‖``): a weight
reading a feature that is always small (or constant, for ``std``) matters
little. Summed over the consumer layer's column ``j`` (as structured pruning
of unit ``j`` does through its dependency group) the score is the unit's output
statistic times the L1 norm of the weights reading it.

The Hessian estimates use the mean loss over a batch (``loss_fn``, cross-entropy
by default), so ``h`` estimates the diagonal of the Hessian of the mean loss;
:func:`estimate_hessian_diagonal` exposes it. Scores are computed with the model
in eval mode (BatchNorm running statistics, no dropout); the model is left
bit-identical (mode, ``requires_grad``, ``.grad``, parameters and buffers).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.errors import TorchslimError, TransformRefusedError
from torchslim.graph.surgery import is_conv1d
from torchslim.measure.accuracy import logits_of
from torchslim.measure.macs import call_model, eval_mode
from torchslim.registry import Registry

Needs = Literal["nothing", "gradients", "per_sample_gradients", "hvp", "activations"]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Upper bound on floats held by one chunk of per-sample gradients (empirical Fisher).
_PER_SAMPLE_FLOATS = 1 << 24
#: Rademacher probes per calibration batch in Hutchinson's estimator (one batched double backward).
HUTCHINSON_PROBES = 4


@dataclass
class ImportanceContext:
    """What a criterion may use besides the weights.

    Attributes:
        module: the module owning the weight.
        name: its qualified name.
        generator: a seeded CPU generator (``random``).
        stats: statistics gathered on calibration data for this layer (keys
            depend on the criterion's ``needs``: ``abs_grad``, ``abs_wgrad``,
            ``fisher``, ``hutchinson``, ``act_mean``, ``act_max``, ``act_std``).
    """

    module: nn.Module
    name: str
    generator: torch.Generator
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


Importance = Callable[[torch.Tensor, ImportanceContext], torch.Tensor]


@dataclass(frozen=True)
class Criterion:
    """A registered criterion: its score function and what data it needs."""

    name: str
    score: Importance
    needs: Needs = "nothing"
    help: str = ""

    @property
    def needs_data(self) -> bool:
        return self.needs != "nothing"

    def __call__(self, weight: torch.Tensor, ctx: ImportanceContext) -> torch.Tensor:
        return self.score(weight, ctx)


CRITERIA: Registry[Criterion] = Registry("criterion")


def register_criterion(name: str, *, needs: Needs = "nothing") -> Callable[[Importance], Importance]:
    """Decorator registering a score function as criterion ``name``.

    Example:
        >>> @register_criterion("cubic")
        ... def cubic(weight, ctx):
        ...     return weight.detach().abs() ** 3
    """

    def deco(fn: Importance) -> Importance:
        CRITERIA.register(name)(Criterion(name, fn, needs, (fn.__doc__ or "").strip().split("\n")[0]))
        return fn

    return deco


# --------------------------------------------------------------------------- criteria


@register_criterion("magnitude")
def magnitude(weight: torch.Tensor, ctx: ImportanceContext) -> torch.Tensor:
    """|w| (L1): the smallest weights go first (Han et al. 2015)."""
    return weight.detach().abs()


@register_criterion("l2")
def l2(weight: torch.Tensor, ctx: ImportanceContext) -> torch.Tensor:
    """w²: summed over a unit, its squared L2 norm."""
    return weight.detach().square()


@register_criterion("gradient", needs="gradients")
def gradient(weight: torch.Tensor, ctx: ImportanceContext) -> torch.Tensor:
    """E_b |g_b|: mean absolute batch gradient of the loss."""
    return ctx.stats["abs_grad"]


@register_criterion("taylor", needs="gradients")
def taylor(weight: torch.Tensor, ctx: ImportanceContext) -> torch.Tensor:
    """E_b |w·g_b|: first-order Taylor estimate of the loss change."""
    return ctx.stats["abs_wgrad"]


@register_criterion("hessian_fisher", needs="per_sample_gradients")
def hessian_fisher(weight: torch.Tensor, ctx: ImportanceContext) -> torch.Tensor:
    """½·h·w² with h the empirical-Fisher diagonal (OBD)."""
    return 0.5 * ctx.stats["fisher"] * weight.detach().float().square()


@register_criterion("hessian_hutchinson", needs="hvp")
def hessian_hutchinson(weight: torch.Tensor, ctx: ImportanceContext) -> torch.Tensor:
    """½·|h|·w² with h from Hutchinson's estimator (OBD)."""
    return 0.5 * ctx.stats["hutchinson"].abs() * weight.detach().float().square()


def _activation(stat: str, doc: str) -> Importance:
    def score(weight: torch.Tensor, ctx: ImportanceContext) -> torch.Tensor:
        return weight.detach().float().abs() * _expand_input_stat(ctx.module, ctx.stats[stat], weight)

    score.__doc__ = doc
    return score


register_criterion("activation_mean", needs="activations")(_activation("act_mean", "|w_ij|·mean|x_j| (Wanda-style input-feature statistic)."))
register_criterion("activation_max", needs="activations")(_activation("act_max", "|w_ij|·max|x_j| (Wanda-style input-feature statistic)."))
register_criterion("activation_std", needs="activations")(_activation("act_std", "|w_ij|·std(x_j) (Wanda-style input-feature statistic)."))


@register_criterion("random")
def random(weight: torch.Tensor, ctx: ImportanceContext) -> torch.Tensor:
    """Uniform random scores: the baseline every criterion must beat."""
    return torch.rand(weight.shape, generator=ctx.generator)


# --------------------------------------------------------------------------- helpers


def _expand_input_stat(module: nn.Module, stat: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-input-feature statistic to the weight's shape (grouped convs included)."""
    stat = stat.to(torch.float32)
    if is_conv1d(module):  # Hugging Face Conv1D: weight (in, out)
        return stat.view(-1, 1).expand_as(weight)
    if isinstance(module, nn.Linear) or weight.dim() == 2:
        return stat.view(1, -1).expand_as(weight)
    groups = int(getattr(module, "groups", 1))
    out_ch, in_per_group = weight.shape[0], weight.shape[1]
    per_group = stat.view(groups, in_per_group)  # (groups, in/groups)
    rows = per_group.repeat_interleave(out_ch // groups, dim=0)  # (out, in/groups)
    return rows.view(out_ch, in_per_group, *([1] * (weight.dim() - 2))).expand_as(weight)


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _batches(loader: Iterable[Any], batches: int) -> list[tuple[Any, torch.Tensor]]:
    out = []
    for item in itertools.islice(iter(loader), batches):
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise TorchslimError("a calibration loader must yield (inputs, targets) batches")
        out.append((item[0], item[1]))
    if not out:
        raise TorchslimError("the calibration loader yielded no batch")
    return out


def _default_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target)


class _Preserve:
    """Context manager: eval mode, ``requires_grad`` on the scored weights, everything restored."""

    def __init__(self, model: nn.Module, weights: list[torch.Tensor]) -> None:
        self.model, self.weights = model, weights

    def __enter__(self) -> None:
        self._eval = eval_mode(self.model)
        self._eval.__enter__()
        self._req = [w.requires_grad for w in self.weights]
        for w in self.weights:
            w.requires_grad_(True)

    def __exit__(self, *exc: object) -> None:
        for w, r in zip(self.weights, self._req):
            w.requires_grad_(r)
        self._eval.__exit__(*exc)


def _loss(model: nn.Module, x: Any, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
    return loss_fn(logits_of(call_model(model, x)), y)


def _gradient_stats(model: nn.Module, weights: list[torch.Tensor], data: list[tuple[Any, torch.Tensor]], loss_fn: LossFn) -> list[dict[str, torch.Tensor]]:
    abs_g = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
    abs_wg = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
    for x, y in data:
        grads = torch.autograd.grad(_loss(model, x, y, loss_fn), weights, allow_unused=True)
        for i, (w, g) in enumerate(zip(weights, grads)):
            if g is not None:
                abs_g[i] += g.detach().float().abs()
                abs_wg[i] += (w.detach().float() * g.detach().float()).abs()
    n = len(data)
    return [{"abs_grad": a / n, "abs_wgrad": b / n} for a, b in zip(abs_g, abs_wg)]


def _sample(obj: Any, i: int) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj[i : i + 1]
    if isinstance(obj, dict):
        return {k: _sample(v, i) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_sample(v, i) for v in obj)
    return obj


def _fisher_stats(model: nn.Module, weights: list[torch.Tensor], data: list[tuple[Any, torch.Tensor]], loss_fn: LossFn) -> list[dict[str, torch.Tensor]]:
    """Empirical Fisher diagonal: mean over samples of the squared per-sample gradient.

    Per-sample gradients come from ``torch.func.vmap`` over chunks of samples
    (plain tensor inputs); models or inputs vmap cannot handle fall back to one
    backward pass per sample.
    """
    from torch.func import functional_call, grad, vmap

    sq = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
    count = 0
    names_by_id = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    wnames = [names_by_id[id(w)] for w in weights]
    numel = sum(w.numel() for w in weights)
    chunk = max(1, _PER_SAMPLE_FLOATS // max(1, numel))

    def one(wdict: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = logits_of(functional_call(model, wdict, (x.unsqueeze(0),), strict=False))
        return loss_fn(out, y.unsqueeze(0))

    per_sample = vmap(grad(one), in_dims=(None, 0, 0))
    if not all(isinstance(x, torch.Tensor) for x, _ in data):
        return _fisher_loop(model, weights, data, loss_fn)
    wdict = {name: w.detach() for name, w in zip(wnames, weights)}
    try:
        for x, y in data:
            n = int(y.shape[0])
            for s in range(0, n, chunk):
                g = per_sample(wdict, x[s : s + chunk], y[s : s + chunk])
                for i, name in enumerate(wnames):
                    sq[i] += g[name].float().square().sum(0)
            count += n
    except Exception:  # noqa: BLE001 - any vmap limitation: exact per-sample loop instead
        return _fisher_loop(model, weights, data, loss_fn)
    return [{"fisher": s / max(1, count)} for s in sq]


def _fisher_loop(model: nn.Module, weights: list[torch.Tensor], data: list[tuple[Any, torch.Tensor]], loss_fn: LossFn) -> list[dict[str, torch.Tensor]]:
    sq = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
    count = 0
    for x, y in data:
        for i in range(int(y.shape[0])):
            grads = torch.autograd.grad(_loss(model, _sample(x, i), y[i : i + 1], loss_fn), weights, allow_unused=True)
            for j, g in enumerate(grads):
                if g is not None:
                    sq[j] += g.detach().float().square()
            count += 1
    return [{"fisher": s / max(1, count)} for s in sq]


def _hutchinson_stats(
    model: nn.Module, weights: list[torch.Tensor], data: list[tuple[Any, torch.Tensor]], loss_fn: LossFn, seed: int, probes: int
) -> list[dict[str, torch.Tensor]]:
    """Mean of ``z ⊙ Hz`` over ``probes`` Rademacher vectors per batch (batched double backward)."""
    gen = torch.Generator().manual_seed(seed)
    acc = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
    total = 0
    for x, y in data:
        grads = torch.autograd.grad(_loss(model, x, y, loss_fn), weights, create_graph=True, allow_unused=True)
        pairs = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]
        total += probes
        if not pairs:
            continue
        zs = [(torch.randint(0, 2, (probes, *weights[i].shape), generator=gen) * 2 - 1).to(weights[i]) for i, _ in pairs]
        outs, ins = [g for _, g in pairs], [weights[i] for i, _ in pairs]
        try:
            hz = torch.autograd.grad(outs, ins, grad_outputs=zs, allow_unused=True, retain_graph=True, is_grads_batched=probes > 1)
            hz = [h if probes > 1 or h is None else h.unsqueeze(0) for h in hz]
        except RuntimeError:  # an op without a batching rule: one probe at a time
            per = [torch.autograd.grad(outs, ins, grad_outputs=[z[k] for z in zs], allow_unused=True, retain_graph=True) for k in range(probes)]
            hz = [None if per[0][j] is None else torch.stack([p[j] for p in per]) for j in range(len(ins))]
        for (i, _), z, h in zip(pairs, zs, hz):
            if h is not None:
                acc[i] += (z * h).detach().float().sum(0)
    return [{"hutchinson": a / max(1, total)} for a in acc]


def _activation_stats(
    model: nn.Module, modules: list[nn.Module], data: list[tuple[Any, torch.Tensor]]
) -> list[dict[str, torch.Tensor]]:
    """Per-input-feature mean|x|, max|x| and std of every layer's input (one pass)."""
    sums: list[dict[str, Any]] = [{"n": 0, "abs": None, "sum": None, "sq": None, "max": None} for _ in modules]

    def hook_for(i: int, module: nn.Module) -> Callable[..., None]:
        feat_dim = -1 if isinstance(module, nn.Linear) or is_conv1d(module) else 1

        def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach().float()
            x = x.movedim(feat_dim, -1).reshape(-1, x.shape[feat_dim])
            acc = sums[i]
            a = x.abs()
            stats = {"abs": a.sum(0), "sum": x.sum(0), "sq": x.square().sum(0), "max": a.amax(0)}
            for k, v in stats.items():
                acc[k] = v if acc[k] is None else (torch.maximum(acc[k], v) if k == "max" else acc[k] + v)
            acc["n"] += x.shape[0]

        return hook

    handles = [m.register_forward_pre_hook(hook_for(i, m)) for i, m in enumerate(modules)]
    try:
        with torch.no_grad():
            for x, _ in data:
                call_model(model, x)
    finally:
        for h in handles:
            h.remove()
    out = []
    for acc, m in zip(sums, modules):
        if acc["abs"] is None:
            raise TorchslimError(f"layer {m.__class__.__name__} was never called on the calibration data")
        n = acc["n"]
        mean = acc["sum"] / n
        var = (acc["sq"] / n - mean.square()).clamp_min(0)
        out.append({"act_mean": acc["abs"] / n, "act_max": acc["max"], "act_std": var.sqrt()})
    return out


def _gather(
    model: nn.Module,
    layers: list[tuple[str, nn.Module]],
    needs: Needs,
    data: list[tuple[Any, torch.Tensor]],
    loss_fn: LossFn,
    seed: int,
    probes: int = HUTCHINSON_PROBES,
) -> list[dict[str, torch.Tensor]]:
    weights = [m.weight for _, m in layers]
    if needs == "activations":
        with eval_mode(model):
            return _activation_stats(model, [m for _, m in layers], data)
    with _Preserve(model, weights):
        if needs == "gradients":
            return _gradient_stats(model, weights, data, loss_fn)
        if needs == "per_sample_gradients":
            return _fisher_stats(model, weights, data, loss_fn)
        return _hutchinson_stats(model, weights, data, loss_fn, seed, probes)


def compute_scores(
    model: nn.Module,
    layers: list[tuple[str, nn.Module]],
    criterion: str,
    *,
    loader: Iterable[Any] | None = None,
    batches: int = 8,
    loss_fn: LossFn | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Score every weight of ``layers`` with ``criterion`` (higher = more important).

    Criteria needing data gather statistics for all layers in one pass over the
    first ``batches`` batches of ``loader``. The model is left bit-identical.

    Args:
        model: the whole model (data flows through it).
        layers: ``(qualified name, module)`` pairs; each module has a ``weight``.
        criterion: a registered criterion name (see the module docstring).
        loader: iterable of ``(inputs, targets)`` batches; required when the
            criterion needs data.
        batches: calibration batches to use.
        loss_fn: ``(logits, targets) -> mean loss``; cross-entropy by default.
        seed: seeds ``random`` and Hutchinson's probes.

    Returns:
        ``{name: float32 CPU tensor shaped like module.weight}``.

    Raises:
        UnknownNameError: unknown criterion (lists the registered ones).
        TransformRefusedError: a data-needing criterion without a loader.

    Example:
        >>> data = ts.load_data("digits")
        >>> model = ts.create_model("lenet300", in_features=64)
        >>> scores = compute_scores(model, [("fc1", model.fc1)], "taylor", loader=data.loader("train", 128))
        >>> scores["fc1"].shape == model.fc1.weight.shape
        True
    """
    crit = CRITERIA.get(criterion)
    if batches < 1:
        raise TorchslimError(f"batches must be >= 1, got {batches}")
    for name, module in layers:
        if not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise TransformRefusedError(f"layer {name!r} ({type(module).__name__}) has no weight tensor to score")
    stats: list[dict[str, torch.Tensor]] = [{} for _ in layers]
    if crit.needs_data:
        if loader is None:
            raise TransformRefusedError(
                f"criterion {criterion!r} needs calibration data: pass calibration batches (prune_(..., calibration=...)) "
                "(a recipe's prune stage draws it from the data set's training split)"
            )
        params = list(model.parameters())
        device = params[0].device if params else torch.device("cpu")
        data = [(_to_device(x, device), _to_device(y, device)) for x, y in _batches(loader, batches)]
        stats = _gather(model, layers, crit.needs, data, loss_fn or _default_loss, seed)
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for (name, module), st in zip(layers, stats):
        ctx = ImportanceContext(module, name, gen, {k: v.detach().float().cpu() for k, v in st.items()})
        w = module.weight.detach().cpu()
        s = crit(w, ctx).to(torch.float32).cpu()
        if s.shape != w.shape:
            raise TorchslimError(f"criterion {criterion!r} gave scores shaped {tuple(s.shape)} for {name} {tuple(w.shape)}")
        out[name] = s.contiguous()
    return out


def estimate_hessian_diagonal(
    model: nn.Module,
    layers: list[tuple[str, nn.Module]],
    method: Literal["fisher", "hutchinson"],
    *,
    loader: Iterable[Any],
    batches: int = 8,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    probes: int = HUTCHINSON_PROBES,
) -> dict[str, torch.Tensor]:
    """Estimate the Hessian diagonal of the mean loss w.r.t. each layer's weight.

    ``fisher``: empirical Fisher ``(1/N) Σ_n g_n²`` over the per-sample gradients;
    ``hutchinson``: the mean of ``z ⊙ H_b z`` over ``probes`` Rademacher
    vectors ``z`` per batch ``b``.

    Example:
        >>> model = ts.create_model("mlp", in_features=64, hidden=[32])
        >>> loader = ts.load_data("digits").loader("train", 32)
        >>> h = estimate_hessian_diagonal(model, [("fc2", model.fc2)], "hutchinson", loader=loader, batches=8)
        >>> h["fc2"].shape
        torch.Size([10, 32])
        >>> f = estimate_hessian_diagonal(model, [("fc2", model.fc2)], "fisher", loader=loader, batches=8)
        >>> bool((f["fc2"] >= 0).all())                  # a mean of squared gradients
        True
    """
    if method not in ("fisher", "hutchinson"):
        raise TorchslimError(f"unknown Hessian estimate {method!r}; allowed: fisher, hutchinson")
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    data = [(_to_device(x, device), _to_device(y, device)) for x, y in _batches(loader, batches)]
    if probes < 1:
        raise TorchslimError(f"probes must be >= 1, got {probes}")
    stats = _gather(model, layers, "per_sample_gradients" if method == "fisher" else "hvp", data, loss_fn or _default_loss, seed, probes)
    key = "fisher" if method == "fisher" else "hutchinson"
    return {name: st[key].detach().float().cpu() for (name, _), st in zip(layers, stats)}
