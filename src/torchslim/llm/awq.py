"""AWQ (Lin et al., 2023): activation-aware per-input-channel scales, searched, folded into the preceding layer.

For a group of linears reading the same input ``X`` (q/k/v after ``input_layernorm``), the
per-channel mean magnitude ``s_x`` gives candidate scales ``s = s_x ** alpha`` (normalised
by ``sqrt(max(s) * min(s))``) for ``alpha`` on a grid in ``[0, 1]``; the ``alpha`` whose
``round(W * diag(s))`` applied to ``X / s`` best reproduces the float outputs ``X W^T`` of the
group's chosen linears (squared error on a sample of calibration rows) wins. ``alpha = 0``
is plain rounding, so the search never does worse than RTN on its sample. The ``1/s`` is
folded into what produces ``X``, where the graph allows it (Llama-style blocks):

- ``input_layernorm`` -> ``q_proj``, ``k_proj``, ``v_proj`` (the norm's weight divided by ``s``);
- ``v_proj`` -> ``o_proj``, only when the block has as many key/value heads as query heads;
- ``post_attention_layernorm`` -> ``gate_proj``, ``up_proj``;
- ``up_proj`` -> ``down_proj`` (``up_proj``'s rows divided by ``s``).

Each fold is checked: the block's output on one calibration batch must not change (in
float); a fold that would change it is undone and its group quantized unscaled. Then each
chosen linear is quantized: with ``quantizer: rtn``, after a per-row, per-group clipping
search (the range shrunk by up to ``max_shrink``, the ratio with the least output error on
the sample kept); with ``quantizer: gptq``, GPTQ on the scaled weight against the Hessian
of the scaled inputs ``D^-1 H D^-1``.

Example:
    >>> _ = torch.manual_seed(0)
    >>> x = torch.randn(512, 32) * torch.cat([torch.full((4,), 20.0), torch.ones(28)])    # outlier channels
    >>> w = torch.randn(16, 32)
    >>> grid = Grid(bits=3, group_size=16)
    >>> s, alpha = search_scale(x, [w], x.abs().mean(0), grid, 20)
    >>> err = lambda q, xs: float((xs @ q.T - x @ w.T).square().sum())
    >>> rtn = QuantizedWeight.from_float(w, grid).dequantize()
    >>> err(fake_quantize(w * s, grid), x / s) < err(rtn, x), alpha > 0
    (True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from torchslim.llm.calibrate import LayerStats
from torchslim.llm.config import AWQConfig
from torchslim.llm.gptq import gptq_quantize, grid_details
from torchslim.llm.method import BlockJob, LayerResult, LLMMethod, output_error
from torchslim.llm.qweight import Grid, QuantizedWeight, grid_params, group_bounds, quantize_to_grid

__all__ = ["AWQ", "AWQ_METHOD", "ScaleGroup", "clip_search", "fake_quantize", "scale_groups", "search_scale"]


def fake_quantize(w: torch.Tensor, grid: Grid) -> torch.Tensor:
    """``w`` rounded to nearest on ``grid`` and dequantized (float32)."""
    return QuantizedWeight.from_float(w, grid).dequantize().to(w.device)


def search_scale(
    x: torch.Tensor, weights: list[torch.Tensor], mean_abs: torch.Tensor, grid: Grid, points: int
) -> tuple[torch.Tensor, float]:
    """The scales ``s`` (``[in]``) and ``alpha`` minimising the squared output error of ``weights`` on rows ``x``."""
    x = x.float()
    refs = [x @ w.float().T for w in weights]
    base = mean_abs.float().clamp_min(1e-4)
    tried = []
    for k in range(points):
        alpha = k / (points - 1)
        s = base.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        xs = x / s
        err = sum(float((xs @ fake_quantize(w.float() * s, grid).T - r).square().sum()) for w, r in zip(weights, refs))
        tried.append((err, k, s, alpha))
    _, _, best, alpha = min(tried, key=lambda t: (t[0], t[1]))
    return best, alpha


def clip_search(w: torch.Tensor, x: torch.Tensor, grid: Grid, points: int, max_shrink: float) -> torch.Tensor:
    """``w`` with each row's range in each group shrunk by the ratio (from 1 down) that best keeps ``x w^T`` once rounded."""
    w, x = w.detach().float(), x.float().to(w.device)
    out = w.clone()
    for a, b in group_bounds(w.shape[1], grid):
        wg, xt = w[:, a:b], x[:, a:b].T
        lo, hi = wg.amin(1, keepdim=True), wg.amax(1, keepdim=True)
        best_err = torch.full((w.shape[0],), float("inf"), device=w.device)
        for k in range(points):
            ratio = 1.0 - max_shrink * k / points
            wc = torch.maximum(torch.minimum(wg, hi * ratio), lo * ratio)
            scale, zero = grid_params(wc, grid)
            q = (quantize_to_grid(wc, scale, zero, grid) - zero.unsqueeze(1)) * scale.unsqueeze(1)
            err = ((wg - q) @ xt).square().sum(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            out[better, a:b] = wc[better]
    return out


@dataclass
class ScaleGroup:
    """Linears reading one input (``consumers``) and the module producing it (``producer``: a norm, or a linear's rows)."""

    producer: str
    rows: bool
    consumers: list[str]


#: Llama-style fold points: (producer, producer is a linear whose rows are scaled, consumers)
LLAMA_GROUPS = (
    ("input_layernorm", False, ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("self_attn.v_proj", True, ("self_attn.o_proj",)),
    ("post_attention_layernorm", False, ("mlp.gate_proj", "mlp.up_proj")),
    ("mlp.up_proj", True, ("mlp.down_proj",)),
)


def _has(block: nn.Module, name: str) -> bool:
    try:
        block.get_submodule(name)
    except AttributeError:
        return False
    return True


def scale_groups(block: nn.Module, chosen: list[str]) -> list[ScaleGroup]:
    """The fold points of a Llama-style ``block`` with at least one chosen consumer.

    ``v_proj -> o_proj`` only when ``v_proj`` has as many outputs as ``q_proj`` (as many
    key/value heads as query heads): with grouped-query attention one ``v`` channel feeds
    several heads' ``o`` inputs.
    """
    out = []
    for producer, rows, consumers in LLAMA_GROUPS:
        if not all(_has(block, n) for n in (producer, *consumers)) or not any(c in chosen for c in consumers):
            continue
        if producer == "self_attn.v_proj":
            q, v = block.get_submodule("self_attn.q_proj"), block.get_submodule(producer)
            if getattr(q, "out_features", None) != getattr(v, "out_features", -1):
                continue
        out.append(ScaleGroup(producer, rows, list(consumers)))
    return out


@torch.no_grad()
def _fold(block: nn.Module, group: ScaleGroup, s: torch.Tensor) -> None:
    producer = block.get_submodule(group.producer)
    weight: torch.Tensor = producer.weight  # type: ignore[assignment]
    weight.div_(s.to(weight.dtype).unsqueeze(1) if group.rows else s.to(weight.dtype))
    bias = getattr(producer, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.div_(s.to(bias.dtype))
    for name in group.consumers:
        w: torch.Tensor = block.get_submodule(name).weight  # type: ignore[assignment]
        w.mul_(s.to(w.dtype).unsqueeze(0))


class AWQ(LLMMethod):
    """AWQ scale search, folding and quantization of every chosen linear, block by block (see the module docstring)."""

    name, title, config, verb, function = "awq", "AWQ weight quantization", AWQConfig, "quantize", "awq_"

    def process_block(self, job: BlockJob) -> list[LayerResult]:
        cfg: AWQConfig = job.cfg
        needs = {"mean_abs", "samples"} | ({"hessian"} if cfg.quantizer == "gptq" else set())
        stats = job.inputs.collect(job.work, job.names, needs, sample_rows=cfg.search_tokens)
        scales: dict[str, tuple[torch.Tensor, float, str]] = {}
        for group in scale_groups(job.work, job.names):
            folded = self._scale(job, group, stats, cfg)
            if folded is not None:
                scales.update({c: (folded[0], folded[1], job.full(group.producer)) for c in group.consumers})
        return [self._quantize(job, name, stats[name], scales.get(name), cfg) for name in job.names]

    def _scale(self, job: BlockJob, group: ScaleGroup, stats: dict[str, LayerStats], cfg: AWQConfig
               ) -> tuple[torch.Tensor, float] | None:
        """Search ``group``'s scales and fold them; ``None`` when the fold would change the block's output."""
        chosen = [c for c in group.consumers if c in job.names]
        first = stats[chosen[0]]
        weights = [job.linear(c).weight.detach() for c in chosen]
        s, alpha = search_scale(first.samples(), weights, first.mean_abs(), cfg.grid(), cfg.grid_points)
        before = job.inputs.run(job.work, 0)
        saved = {k: v.detach().clone() for k, v in job.work.state_dict().items()}
        _fold(job.work, group, s.to(before.device))
        after = job.inputs.run(job.work, 0)
        if not torch.allclose(after.float(), before.float(), rtol=1e-3, atol=1e-4 * float(before.abs().max()) + 1e-6):
            job.work.load_state_dict(saved)
            return None
        return s, alpha

    def _quantize(self, job: BlockJob, name: str, st: LayerStats, scaled: tuple[torch.Tensor, float, str] | None,
                  cfg: AWQConfig) -> LayerResult:
        lin, grid = job.linear(name), cfg.grid()
        s = scaled[0].to(lin.weight.device) if scaled is not None else torch.ones(lin.in_features, device=lin.weight.device)
        x = st.samples().to(lin.weight.device) / s
        w = lin.weight.detach().float()
        details = {**grid_details(grid), "quantizer": cfg.quantizer, "clip": cfg.clips(),
                   "alpha": scaled[1] if scaled else None, "scaled_into": scaled[2] if scaled else None}
        with job.naming(name):
            if cfg.quantizer == "gptq":
                h = st.hessian().to(w.device) / (s.double().unsqueeze(1) * s.double().unsqueeze(0))
                solved = gptq_quantize(w, h, grid, damp=cfg.damp, block_size=cfg.block_size, act_order=cfg.act_order)
                qw, new = solved.quantized, solved.weight
                details["output_error"] = output_error(w, new, h)
            else:
                target = clip_search(w, x, grid, cfg.clip_points, cfg.max_shrink) if cfg.clips() else w
                qw = QuantizedWeight.from_float(target, grid)
                new = qw.dequantize().to(w.device)
        lin.weight.data.copy_(new.to(lin.weight.dtype))
        return LayerResult(name, "quantized", quantized=qw, details=details)


#: the AWQ technique object
AWQ_METHOD = AWQ()
