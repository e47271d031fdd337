"""Wanda (Sun et al., 2023): prune the weights with the smallest ``|W_ij| * ||X_j||_2``, compared within each row.

``||X_j||_2`` is the L2 norm of input channel ``j`` over the calibration tokens (collected
block by block, on the outputs of the blocks already pruned). ``score: magnitude`` drops
the activation term (``|W_ij|``, no calibration): the baseline. Unstructured: each row loses
exactly ``round(sparsity * in_features)`` weights; N:M: the ``n`` best of every ``m``
consecutive inputs are kept. Layers keep their class, with zeros and a mask constraint.

Example:
    >>> w = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    >>> prune_mask(w, torch.tensor([10.0, 1.0, 1.0, 1.0]), 0.5, None).tolist()
    [[True, False, True, False]]
    >>> prune_mask(w, None, 0.5, (2, 4)).tolist()
    [[False, True, True, False]]
"""

from __future__ import annotations

import torch
from torch import nn

from torchslim.llm.config import WandaConfig
from torchslim.llm.method import BlockJob, LayerResult, LLMMethod
from torchslim.prune.nm import nm_mask

__all__ = ["WANDA_METHOD", "Wanda", "prune_mask"]


def prune_mask(w: torch.Tensor, norms: torch.Tensor | None, sparsity: float, nm: tuple[int, int] | None) -> torch.Tensor:
    """Keep-mask of ``w`` by ``|w| * norms`` (``norms`` ``None``: by ``|w|``): per row, or N:M (``(n, m)``).

    Raises:
        TransformRefusedError: N:M on a row length that is not a multiple of ``m``.
    """
    score = w.detach().float().abs()
    if norms is not None:
        score = score * norms.float().to(score.device).unsqueeze(0)
    if nm is not None:
        return nm_mask(score, nm[0], nm[1])
    k = round(sparsity * w.shape[1])
    keep = torch.ones_like(score, dtype=torch.bool)
    if k > 0:
        keep.scatter_(1, torch.topk(score, k, dim=1, largest=False).indices, False)
    return keep


def _result(name: str, lin: nn.Linear, keep: torch.Tensor, cfg: WandaConfig) -> LayerResult:
    new = lin.weight.detach() * keep
    details = {"score": cfg.score, "granularity": cfg.granularity, "sparsity": round(1 - float(keep.float().mean()), 6)}
    return LayerResult(name, "pruned", weight=new.clone(), mask=keep, details=details)


class Wanda(LLMMethod):
    """Wanda or magnitude pruning of every chosen linear (see the module docstring)."""

    name, title, config, verb, function = "wanda", "Wanda pruning", WandaConfig, "prune", "wanda_"
    kind = "prune"

    def needs_calibration(self, cfg: WandaConfig) -> bool:
        return cfg.score == "wanda"

    def process_layer(self, name: str, module: nn.Linear, cfg: WandaConfig) -> LayerResult:
        keep = prune_mask(module.weight, None, cfg.target_sparsity(), cfg.nm())
        return _result(name, module, keep, cfg)

    def process_block(self, job: BlockJob) -> list[LayerResult]:
        cfg: WandaConfig = job.cfg
        out = []
        for group in job.groups():
            stats = job.inputs.collect(job.work, group, {"norms"})
            for name in group:
                lin = job.linear(name)
                with job.naming(name):
                    keep = prune_mask(lin.weight, stats[name].norms(), cfg.target_sparsity(), cfg.nm())
                result = _result(name, lin, keep, cfg)
                lin.weight.data.copy_(result.weight.to(lin.weight.dtype))  # type: ignore[union-attr]
                out.append(result)
        return out


#: the Wanda technique object
WANDA_METHOD = Wanda()
