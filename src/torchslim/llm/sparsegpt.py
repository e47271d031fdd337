"""SparseGPT (Frantar & Alistarh, 2023): prune with the OBS update, optionally quantizing the survivors (joint).

Each chosen linear's columns are fixed one at a time by :func:`~torchslim.llm.gptq.obs_solve`
against the Hessian of its calibration inputs: unstructured masks are chosen per row
within each lazy block of ``block_size`` columns (every row ends with exactly
``round(sparsity * in_features)`` zeros), N:M masks every ``m`` columns; the error of each
pruned weight is compensated on the weights not yet fixed. With ``quantize`` (joint
SparseGPT + GPTQ) the surviving weights are quantized in the same pass and the pruned ones
get the zero point as their code, which dequantizes to exactly 0: the layer becomes a
:class:`~torchslim.llm.modules.QuantizedLinear` whose zeros are the mask. Without it the
layer keeps its class, with zeros and a mask constraint.
"""

from __future__ import annotations

from torchslim.llm.config import SparseGPTConfig
from torchslim.llm.gptq import grid_details, hessian_layers, obs_solve
from torchslim.llm.method import BlockJob, LayerResult, LLMMethod, output_error

__all__ = ["SPARSEGPT_METHOD", "SparseGPT"]


class SparseGPT(LLMMethod):
    """SparseGPT on every chosen linear, block by block (see the module docstring)."""

    name, title, config, verb, function = "sparsegpt", "SparseGPT pruning", SparseGPTConfig, "prune", "sparsegpt_"
    kind = "prune"

    def process_block(self, job: BlockJob) -> list[LayerResult]:
        cfg: SparseGPTConfig = job.cfg
        grid = cfg.quantize.grid() if cfg.quantize is not None else None
        nm, sparsity = cfg.nm(), cfg.target_sparsity()
        out = []
        for name, lin, h, prepared in hessian_layers(job, cfg.damp):
            with job.naming(name):
                solved = obs_solve(lin.weight, prepared, grid=grid, block_size=cfg.block_size,
                                   sparsity=0.0 if nm else sparsity, nm=nm)
            keep = solved.mask
            details = {"granularity": cfg.granularity, "sparsity": round(1 - float(keep.float().mean()), 6) if keep is not None else 0.0,
                       "output_error": output_error(lin.weight, solved.weight, h)}
            if grid is not None:
                details.update(grid_details(grid))
            lin.weight.data.copy_(solved.weight.to(lin.weight.dtype))
            if solved.quantized is not None:
                out.append(LayerResult(name, "pruned+quantized", quantized=solved.quantized, details=details))
            else:
                out.append(LayerResult(name, "pruned", weight=solved.weight.clone(), mask=keep, details=details))
        return out


#: the SparseGPT technique object
SPARSEGPT_METHOD = SparseGPT()
