"""GPTQ (Frantar et al., 2022) and the solver it shares with SparseGPT: column-wise OBS updates.

Given a layer's weight ``W`` ``[rows, cols]`` and the Hessian of its reconstruction loss
``H = 2/N sum x x^T``, the columns are fixed one at a time (quantized, pruned, or both);
each column's error ``(w - q) / [H^-1]_jj`` is spread over the columns not yet fixed
through the upper Cholesky factor of ``H^-1``. Updates inside a block of ``block_size``
columns are applied at once to the rest of the matrix (lazy batch updates).

- dampening: ``damp * mean(diag H)`` is added to the diagonal (increased tenfold, up to
  three times, if the Cholesky factorisation still fails);
- dead columns (``H_jj = 0``: an input that is always zero) get ``H_jj = 1`` and weight 0;
- groups: each row of each group of columns has its scale and zero point, computed when
  the solver reaches the group's first column from the weights as updated so far (the
  last group may be narrower); with ``act_order`` the columns are processed in descending
  order of ``diag H`` and the group parameters are computed up front on the original
  column order (static groups), so the result is a plain
  :class:`~torchslim.llm.qweight.QuantizedWeight` (no column permutation to store);
- clipped grids (``clip``): each row's range in a group is shrunk by the ratio (``points + 1``
  ratios from 1 down to ``1 - max_shrink``) that minimises the group's rounding error measured
  through the Hessian, ``e H_gg e^T`` (``e`` the row's error on the group's columns, ``H_gg`` the
  Hessian's block of those columns; ratio 1 is min/max, so no row is worse by that measure);
- pruning (SparseGPT): unstructured masks are chosen at the start of each block, per row,
  by ``w^2 / [U]_jj^2`` (``U`` the Cholesky factor of ``H^-1``), cumulatively rounded so
  every row ends with exactly ``round(sparsity * cols)`` pruned weights; N:M masks are
  chosen every ``m`` columns. Pruned weights are set to exactly zero (with a grid: their
  code is the zero point, which dequantizes to exactly 0 on both grids).

Example:
    >>> _ = torch.manual_seed(0)
    >>> x = torch.randn(256, 16) @ torch.randn(16, 16)          # correlated inputs
    >>> w = torch.randn(8, 16)
    >>> h = 2 * x.T.double() @ x.double() / 256
    >>> grid = Grid(bits=3, group_size=8)
    >>> qw = gptq_quantize(w, h, grid).quantized
    >>> err = lambda q: float((x @ (w - q).T).square().mean())
    >>> err(qw.dequantize()) < err(QuantizedWeight.from_float(w, grid).dequantize())
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from torchslim.errors import TransformRefusedError
from torchslim.llm.config import GPTQConfig
from torchslim.llm.method import BlockJob, LayerResult, LLMMethod, output_error
from torchslim.llm.qweight import Grid, QuantizedWeight, grid_params, group_bounds, quantize_to_grid

__all__ = ["GPTQ", "GPTQ_METHOD", "Clip", "Prepared", "Solved", "gptq_quantize", "grid_details", "inverse_factor", "obs_solve", "prepare"]


@dataclass
class Solved:
    """What the solver produced: the new float weight, its quantized form (with a grid), its keep-mask (when pruning)."""

    weight: torch.Tensor
    quantized: QuantizedWeight | None = None
    mask: torch.Tensor | None = None


def inverse_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """The upper Cholesky factor ``U`` of ``(H + damp * mean(diag H) * I)^-1`` (``U^T U``; float32, computed in float64).

    With ``P`` the reversal permutation and ``P H P = M M^T`` (lower Cholesky), ``U = P M^-1 P``:
    one factorisation and one triangular inverse, no explicit inverse of ``H``.

    Raises:
        TransformRefusedError: ``H`` is not positive definite even with a thousand times the dampening.

    Example:
        >>> h = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
        >>> u = inverse_factor(h, 0.0)
        >>> torch.allclose(u.T @ u, torch.linalg.inv(h)), bool(u[1, 0] == 0)
        (True, True)
    """
    h = h.double()
    mean = float(h.diagonal().mean())
    lam = damp * (mean if mean > 0 else 1.0)
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for _ in range(4):
        chol, info = torch.linalg.cholesky_ex((h + lam * eye).flip(0, 1))
        if int(info) == 0:
            return torch.linalg.solve_triangular(chol, eye, upper=False).flip(0, 1).float()
        lam = lam * 10 if lam > 0 else 1e-8 * max(mean, 1.0)
    raise TransformRefusedError(f"the Hessian is not positive definite even with dampening {lam / 10:.3g}; raise damp")


@dataclass
class Prepared:
    """What the solver needs of a Hessian, shared by the layers that read the same input.

    Attributes:
        dead: inputs with ``H_jj = 0`` (their weights are set to 0).
        perm: the processing order (``act_order``: descending ``diag H``), or ``None``.
        factor: the upper Cholesky factor of the dampened inverse Hessian, in processing order.
        hessian: ``H`` in the original column order (float32, dead inputs at 1), kept only for clipped
            grids (their error measure; ``prepare(..., keep_hessian=True)``), else ``None``.
    """

    dead: torch.Tensor
    perm: torch.Tensor | None
    factor: torch.Tensor
    hessian: torch.Tensor | None = None


@dataclass(frozen=True)
class Clip:
    """Clipped group grids: ``points + 1`` shrink ratios, 1 down to ``1 - max_shrink`` in ``points`` steps, tried per row and group."""

    points: int = 20
    max_shrink: float = 0.2


def clipped_grid_params(w: torch.Tensor, grid: Grid, h: torch.Tensor, clip: Clip) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scale and zero of the columns ``w`` (``[rows, cols]``) whose range, shrunk by the best ratio, minimises
    ``e h e^T`` (``e``: a row's rounding error; ``h``: the Hessian's block of these columns).

    Example:
        >>> _ = torch.manual_seed(0)
        >>> w = torch.randn(16, 32); w[:, 0] *= 8                       # an outlier column
        >>> h, grid = torch.eye(32), Grid(bits=3, group_size=32)
        >>> def err(p): return float(((w - (quantize_to_grid(w, *p, grid) - p[1][:, None]) * p[0][:, None]) ** 2).sum())
        >>> err(clipped_grid_params(w, grid, h, Clip())) < err(grid_params(w, grid))
        True
    """
    w, h = w.float(), h.float().to(w.device)
    best = grid_params(w, grid)
    best_err = torch.full((w.shape[0],), float("inf"), device=w.device)
    lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    for k in range(clip.points + 1):
        ratio = 1.0 - clip.max_shrink * k / max(clip.points, 1)
        scale, zero = grid_params(torch.cat([lo * ratio, hi * ratio], dim=1), grid)
        e = w - (quantize_to_grid(w, scale, zero, grid) - zero.unsqueeze(1)) * scale.unsqueeze(1)
        err = ((e @ h) * e).sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = (torch.where(better, scale, best[0]), torch.where(better, zero, best[1]))
        if clip.max_shrink == 0:
            break
    return best


def prepare(h: torch.Tensor, damp: float = 0.01, act_order: bool = False, keep_hessian: bool = False) -> Prepared:
    """:class:`Prepared` of Hessian ``h`` (dead inputs get ``H_jj = 1``; ``keep_hessian``: for clipped grids)."""
    hd = h.detach().double().clone()
    dead = hd.diagonal() == 0
    hd.diagonal()[dead] = 1.0
    perm = torch.argsort(hd.diagonal(), descending=True, stable=True) if act_order else None
    original = hd.float() if keep_hessian else None
    if perm is not None:
        hd = hd[perm][:, perm]
    return Prepared(dead, perm, inverse_factor(hd, damp), original)


class _Groups:
    """Per-row scale and zero of every group, filled up front (static) or when the solver reaches a group."""

    def __init__(self, w: torch.Tensor, grid: Grid, static: bool, clip: Clip | None = None, h: torch.Tensor | None = None) -> None:
        self.grid, self.bounds = grid, group_bounds(w.shape[1], grid)
        self.width = grid.width(w.shape[1])
        self.scales = torch.zeros(w.shape[0], len(self.bounds), device=w.device)
        self.zeros = torch.zeros_like(self.scales)
        self.static, self.clip, self.h = static, clip, h
        if static:
            for g, (a, b) in enumerate(self.bounds):
                self.scales[:, g], self.zeros[:, g] = self.params(a, w[:, a:b])

    def params(self, col: int, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero of the group starting at column ``col`` (original order) from its columns ``w``."""
        if self.clip is None or self.h is None:
            return grid_params(w, self.grid)
        b = col + w.shape[1]
        return clipped_grid_params(w, self.grid, self.h[col:b, col:b], self.clip)

    def due(self, col: int) -> int:
        """Columns to fit at column ``col`` (a group's first column, groups fitted as reached), else 0."""
        if self.static or col % self.width:
            return 0
        a, b = self.bounds[col // self.width]
        return b - a

    def fit(self, col: int, ahead: torch.Tensor) -> None:
        """Fit the parameters of the group starting at column ``col`` on ``ahead`` (its current columns)."""
        g = col // self.width
        self.scales[:, g], self.zeros[:, g] = self.params(col, ahead)

    def quantize(self, col: int, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (float) and dequantized values of column ``col`` (original order)."""
        g = col // self.width
        s, z = self.scales[:, g], self.zeros[:, g]
        codes = torch.clamp(torch.round(w / s).add_(z), 0, self.grid.qmax)  # quantize_to_grid, for one column
        return codes, (codes - z).mul_(s)


def _unstructured_mask(w1: torch.Tensor, d: torch.Tensor, start: int, stop: int, sparsity: float) -> torch.Tensor:
    """Keep-mask of a block: per row, the ``k`` lowest ``w^2 / d^2`` pruned (``k`` cumulatively rounded)."""
    k = round(sparsity * stop) - round(sparsity * start)
    keep = torch.ones_like(w1, dtype=torch.bool)
    if k > 0:
        score = w1.square() / d.square().unsqueeze(0)
        keep.scatter_(1, torch.topk(score, k, dim=1, largest=False).indices, False)
    return keep


def _nm_mask(w: torch.Tensor, d: torch.Tensor, n: int) -> torch.Tensor:
    """Keep-mask of ``m`` columns: per row the ``n`` highest ``w^2 / d^2``."""
    score = w.square() / d.square().unsqueeze(0)
    keep = torch.zeros_like(w, dtype=torch.bool)
    return keep.scatter_(1, torch.topk(score, n, dim=1).indices, True)


@dataclass
class _Job:
    groups: _Groups | None
    sparsity: float
    nm: tuple[int, int] | None
    perm: torch.Tensor | None
    codes: torch.Tensor | None
    keep: torch.Tensor | None


def _solve_block(job: _Job, w: torch.Tensor, u: torch.Tensor, i1: int, i2: int) -> torch.Tensor:
    """Fix columns ``i1:i2`` of ``w`` (processing order) in place; returns their scaled errors ``[rows, i2 - i1]``.

    The block is held transposed (one contiguous row per column), so the rank-1 update of the
    columns not yet fixed is one contiguous ``addr_``.
    """
    wt, u1 = w[:, i1:i2].t().contiguous(), u[i1:i2, i1:i2]
    d = u1.diagonal()
    errt = torch.zeros_like(wt)
    order = job.perm[i1:i2].tolist() if job.perm is not None else list(range(i1, i2))
    keep = None
    if job.keep is not None:
        keep = (_unstructured_mask(wt.t(), d, i1, i2, job.sparsity).t().contiguous() if job.nm is None
                else torch.ones_like(wt, dtype=torch.bool))
    codes_t = torch.zeros_like(wt) if job.groups is not None else None
    with _one_thread():
        _solve_columns(job, w, wt, u1, keep, codes_t, errt, order, i1, i2)
    cols = torch.tensor(order, device=w.device)
    if keep is not None and job.keep is not None:
        job.keep[:, cols] = keep.t()
    if codes_t is not None and job.codes is not None:
        job.codes[:, cols] = codes_t.t().to(torch.uint8)
    w[:, i1:i2] = wt.t()
    return errt.t()


@contextmanager
def _one_thread() -> Iterator[None]:
    """One intra-op thread for the column loop: its operations are too small to split, and split ones wait on each
    other when the cores are shared (tens of microseconds become milliseconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _solve_columns(job: _Job, w: torch.Tensor, wt: torch.Tensor, u1: torch.Tensor, keep: torch.Tensor | None,
                   codes_t: torch.Tensor | None, errt: torch.Tensor, order: list[int], i1: int, i2: int) -> None:
    """The column loop of :func:`_solve_block` (``wt``, ``keep``, ``codes_t``, ``errt``: the block, transposed)."""
    d = u1.diagonal()
    dl = d.tolist()
    for i, col in enumerate(order):
        if job.nm is not None and keep is not None and (i1 + i) % job.nm[1] == 0:
            m = job.nm[1]
            keep[i : i + m] = _nm_mask(wt[i : i + m].t(), d[i : i + m], job.nm[0]).t()
        wc = wt[i]
        if job.groups is not None and codes_t is not None:
            width = job.groups.due(col)
            if width:
                here = (wt[i : i + width] * keep[i : i + width] if keep is not None else wt[i : i + width]).t()
                job.groups.fit(col, torch.cat([here, w[:, i2 : i2 + width - here.shape[1]]], dim=1))
            codes, q = job.groups.quantize(col, wc)
            if keep is not None:
                codes = torch.where(keep[i], codes, job.groups.zeros[:, col // job.groups.width])
                q = q * keep[i]
            codes_t[i] = codes
        else:
            q = wc * keep[i] if keep is not None else wc
        e = (wc - q).div_(dl[i])
        wt[i:].addr_(u1[i, i:], e, alpha=-1.0)
        wt[i] = q
        errt[i] = e


def obs_solve(
    w: torch.Tensor,
    h: torch.Tensor | Prepared,
    *,
    grid: Grid | None = None,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
    sparsity: float = 0.0,
    nm: tuple[int, int] | None = None,
    clip: Clip | None = None,
) -> Solved:
    """Fix every column of ``w`` with OBS updates against Hessian ``h``: quantize (``grid``), prune, or both.

    Args:
        w: the weight ``[rows, cols]``.
        h: the Hessian ``[cols, cols]`` (``2/N sum x x^T``), or its :func:`prepare` (then ``damp``
            and ``act_order`` are the prepared ones).
        grid: quantize on this grid (``None``: no quantization).
        damp: dampening, a fraction of the mean diagonal.
        block_size: columns per lazy batch update.
        act_order: columns in descending ``diag H`` (static groups); not with ``nm``.
        sparsity: fraction of each row to prune (unstructured) when ``nm`` is ``None``.
        nm: ``(n, m)``: keep ``n`` of every ``m`` consecutive columns.
        clip: choose each group's grid among shrunk ranges by its error through the Hessian (see the module docstring).

    Raises:
        TransformRefusedError: the shapes disagree, ``nm`` does not divide the columns, or ``H`` is singular.
    """
    rows, cols = w.shape
    prep = h if isinstance(h, Prepared) else None
    if tuple(prep.factor.shape if prep is not None else h.shape) != (cols, cols):  # type: ignore[union-attr]
        raise TransformRefusedError(f"the Hessian does not match a weight with {cols} columns")
    if prep is None:
        prep = prepare(h, damp, act_order, keep_hessian=clip is not None)  # type: ignore[arg-type]
    if clip is not None and prep.hessian is None:
        raise TransformRefusedError("clipped grids need the Hessian: prepare(h, ..., keep_hessian=True)")
    if nm is not None and (cols % nm[1] or prep.perm is not None):
        raise TransformRefusedError(f"N:M with m={nm[1]} needs columns in order and a multiple of m; got {cols} columns"
                                    + (" with act_order" if prep.perm is not None else ""))
    wf = w.detach().float().clone()
    wf[:, prep.dead.to(wf.device)] = 0.0
    perm = prep.perm
    hessian = prep.hessian.to(wf.device) if clip is not None and prep.hessian is not None else None
    groups = _Groups(wf, grid, static=perm is not None, clip=clip, h=hessian) if grid is not None else None
    pruning = nm is not None or sparsity > 0
    job = _Job(groups, sparsity, nm, perm,
               torch.zeros(rows, cols, dtype=torch.uint8, device=w.device) if grid is not None else None,
               torch.ones(rows, cols, dtype=torch.bool, device=w.device) if pruning else None)
    if perm is not None:
        wf = wf[:, perm]
    if nm is not None:
        block_size = max(nm[1], block_size // nm[1] * nm[1])  # an N:M group never straddles two blocks
    u = prep.factor.to(wf.device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        err = _solve_block(job, wf, u, i1, i2)
        wf[:, i2:].addmm_(err, u[i1:i2, i2:], alpha=-1.0)
    if perm is not None:
        wf = wf[:, torch.argsort(perm)]
    quantized = None
    if groups is not None and job.codes is not None:
        quantized = QuantizedWeight(groups.grid, job.codes.cpu(), groups.scales.cpu(), groups.zeros.cpu())
        wf = quantized.dequantize().to(wf.device)
    elif job.keep is not None:
        wf = wf * job.keep
    return Solved(wf, quantized, job.keep)


def gptq_quantize(
    w: torch.Tensor, h: torch.Tensor | Prepared, grid: Grid, *, damp: float = 0.01, block_size: int = 128,
    act_order: bool = False, clip: Clip | None = None,
) -> Solved:
    """GPTQ: ``w`` quantized on ``grid`` against Hessian ``h`` (see :func:`obs_solve`)."""
    return obs_solve(w, h, grid=grid, damp=damp, block_size=block_size, act_order=act_order, clip=clip)


def hessian_layers(job: BlockJob, damp: float, act_order: bool = False, keep_hessian: bool = False
                   ) -> Iterator[tuple[str, Any, torch.Tensor, Prepared]]:
    """``(name, linear, H, prepared)`` for each linear of the block, group by group; layers reading one input
    share its Hessian's factorisation (computed once)."""
    for group in job.groups():
        stats = job.inputs.collect(job.work, group, {"hessian"})
        shared: dict[int, Prepared] = {}
        for name in group:
            h, key = stats[name].hessian(), id(stats[name])
            if key not in shared:
                with job.naming(name):
                    shared[key] = prepare(h, damp, act_order, keep_hessian)
            yield name, job.linear(name), h, shared[key]


def grid_details(grid: Grid) -> dict[str, Any]:
    """A grid as report details."""
    return {"bits": grid.bits, "group_size": grid.group_size, "symmetric": grid.symmetric}


class GPTQ(LLMMethod):
    """GPTQ on every chosen linear, block by block (see the module docstring)."""

    name, title, config, verb, function = "gptq", "GPTQ weight quantization", GPTQConfig, "quantize", "gptq_"

    def process_block(self, job: BlockJob) -> list[LayerResult]:
        cfg: GPTQConfig = job.cfg
        grid, out = cfg.grid(), []
        for name, lin, h, prepared in hessian_layers(job, cfg.damp, cfg.act_order, keep_hessian=cfg.clip):
            with job.naming(name):
                solved = gptq_quantize(lin.weight, prepared, grid, block_size=cfg.block_size, clip=cfg.clipping())
            details = {**grid_details(grid), "act_order": cfg.act_order, "clip": cfg.clip, "output_error": output_error(lin.weight, solved.weight, h)}
            lin.weight.data.copy_(solved.weight.to(lin.weight.dtype))
            out.append(LayerResult(name, "quantized", quantized=solved.quantized, details=details))
        return out


#: the GPTQ technique object
GPTQ_METHOD = GPTQ()
