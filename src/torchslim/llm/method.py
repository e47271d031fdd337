"""The technique every language-model method is: select linears, calibrate block by block, apply, report.

A method subclasses :class:`LLMMethod` and defines :meth:`LLMMethod.process_block` (what it
does to one decoder block's chosen linears, given the block's calibration inputs) or, for a
method that needs no data (RTN, magnitude), :meth:`LLMMethod.process_layer`.

``plan`` does all the work on copies: each decoder block is deep-copied, the copy is
transformed, and the copy's outputs are the next block's calibration inputs (sequential,
as GPTQ does); the model itself is not touched. ``apply`` then writes the results into the
model: quantized layers become :class:`~torchslim.llm.modules.QuantizedLinear`, pruned
layers keep their class with zeros and a mask constraint (:mod:`torchslim.graph.constraints`:
fine-tuning keeps them), and the parameters a method folded scales into (AWQ's norms) take
their new values. Everything runs inside :func:`torchslim.technique.run`'s transaction: a
failure leaves the model as it was.

The output head (``lm_head``) is kept unless a targets key names it exactly; linears that
are neither in a decoder block nor the head are skipped (layer-by-layer calibration does
not reach them).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from torchslim._progress import progress_bar
from torchslim.errors import TorchslimError, TransformRefusedError
from torchslim.llm.calibrate import (
    BlockInputs,
    DecoderBlocks,
    PeakRss,
    calibration_batches,
    capture_inputs,
    decoder_blocks,
    eval_mode,
    peak_rss_mb,
    release_freed_memory,
)
from torchslim.llm.config import LLMConfig
from torchslim.llm.modules import QuantizedLinear, swap_quantized
from torchslim.llm.qweight import QuantizedWeight
from torchslim.prune.mask import MASK
from torchslim.report import LayerReport, SkippedLayer
from torchslim.technique import Inputs, Plan, Selection, Technique, refuse_if_empty

__all__ = ["BlockJob", "LLMMethod", "LayerResult", "output_error"]


@dataclass
class LayerResult:
    """What a method decided for one linear layer (its qualified name once the block is done)."""

    name: str
    action: str  # "quantized" or "pruned"
    weight: torch.Tensor | None = None
    quantized: QuantizedWeight | None = None
    mask: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class BlockJob:
    """One decoder block's work: the block's copy (transformed in place), its chosen linears, its inputs."""

    work: nn.Module
    names: list[str]
    prefix: str
    inputs: BlockInputs
    cfg: Any

    def linear(self, name: str) -> nn.Linear:
        return self.work.get_submodule(name)  # type: ignore[return-value]

    def full(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    @contextmanager
    def naming(self, name: str) -> Iterator[None]:
        """Refusals raised inside name the layer."""
        try:
            yield
        except TransformRefusedError as exc:
            raise TransformRefusedError(f"{self.full(name)}: {exc}") from None

    def groups(self) -> list[list[str]]:
        """The chosen linears in the order the block runs them, grouped by shared input (one group per block
        unless ``true_sequential``)."""
        return self.inputs.order(self.work, self.names) if self.cfg.true_sequential else [list(self.names)]


def output_error(w: torch.Tensor, new: torch.Tensor, h: torch.Tensor) -> float:
    """Relative output error on the calibration inputs: ``tr(dW H dW^T) / tr(W H W^T)``.

    Example:
        >>> w = torch.randn(3, 4)
        >>> output_error(w, w, torch.eye(4)), round(output_error(w, 0 * w, torch.eye(4)), 6)
        (0.0, 1.0)
    """
    hf, wf = h.float(), w.detach().float()
    dw = wf - new.detach().float().to(wf.device)
    den = float(((wf @ hf) * wf).sum())
    return float(((dw @ hf) * dw).sum()) / den if den > 0 else 0.0


class _Head(nn.Module):
    """The final norm and the output head as one block (the head's calibration inputs are the last block's outputs)."""

    def __init__(self, norm: nn.Module | None, head: nn.Module) -> None:
        super().__init__()
        self.norm, self.head = norm if norm is not None else nn.Identity(), head

    def forward(self, hidden: torch.Tensor, **_: Any) -> torch.Tensor:
        return self.head(self.norm(hidden))


class LLMMethod(Technique[Any, Plan]):
    """Base of the language-model methods (see the module docstring)."""

    handles = (nn.Linear,)
    #: ``quantize`` methods swap layers for QuantizedLinear; ``prune`` methods keep them with masks
    kind = "quantize"
    #: show a progress bar per decoder block (on a terminal)
    progress = True
    #: the plan transforms deep copies of one block at a time (training flags and hooks restored in ``finally``)
    plan_reads_only = True

    def needs_calibration(self, cfg: Any) -> bool:
        """Whether the method runs block by block on calibration data (default: yes)."""
        return True

    def process_block(self, job: BlockJob) -> list[LayerResult]:
        """Transform ``job.work``'s chosen linears in place; one result per linear (local names)."""
        raise NotImplementedError

    def process_layer(self, name: str, module: nn.Linear, cfg: Any) -> LayerResult:
        """The result for one linear without calibration (methods that need none)."""
        raise NotImplementedError

    def candidates(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]

    def select(self, model: nn.Module, cfg: Any, filter_fn: Any) -> Selection:
        selection = super().select(model, cfg, filter_fn)
        head = _head_name(model)
        blocks = _block_prefix(model) if self.needs_calibration(cfg) else None
        chosen, skipped = [], list(selection.skipped)
        for name, module, match in selection.chosen:
            if name == head and (match is None or match.key != name):
                skipped.append(SkippedLayer(name, f"the output head is kept (name it exactly in targets to {self.verb} it)"))
            elif blocks is not None and name != head and not name.startswith(blocks + "."):
                skipped.append(SkippedLayer(name, f"not in a decoder block ({blocks}.N) nor the output head: "
                                                  "layer-by-layer calibration does not reach it"))
            else:
                chosen.append((name, module, match))
        return Selection(chosen, skipped)

    def plan(self, model: nn.Module, cfg: LLMConfig, selection: Selection, inputs: Inputs) -> Plan:
        names = [n for n, _, _ in selection.chosen]
        refuse_if_empty(names, selection.skipped, self.verb)
        start = time.perf_counter()
        meta: dict[str, Any] = {"method": self.name, "config": cfg.model_dump(exclude={"calibration", "targets"})}
        self._refuse_tied(model, names)
        with PeakRss() as tracked:  # the resident memory during the method (sampled)
            if not self.needs_calibration(cfg):
                results = []
                for name, module, _ in selection.chosen:
                    try:
                        results.append(self.process_layer(name, module, cfg))  # type: ignore[arg-type]
                    except TransformRefusedError as exc:
                        raise TransformRefusedError(f"{name}: {exc}") from None
                updates: dict[str, torch.Tensor] = {}
            else:
                batches = calibration_batches(inputs.calibration, cfg.calibration.batch_size)
                with eval_mode(model), torch.no_grad():
                    results, updates = self._blockwise(model, cfg, names, batches)
                meta["calibration"] = {"sequences": sum(int(b.shape[0]) for b in batches),
                                       "tokens": sum(int(b.numel()) for b in batches)}
        meta["seconds"] = round(time.perf_counter() - start, 3)
        meta["peak_rss_mb"] = tracked.peak_mb  # during the method (what was resident before it included)
        meta["rss_before_mb"] = tracked.start_mb
        meta["process_peak_rss_mb"] = peak_rss_mb()  # since the process started (loading, earlier copies)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            meta["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return Plan(selection.skipped, meta, (results, updates))

    def _refuse_tied(self, model: nn.Module, names: list[str]) -> None:
        if self.kind != "prune":
            return
        owners: dict[int, list[str]] = {}
        for mname, module in model.named_modules():
            for pname, p in module.named_parameters(recurse=False):
                owners.setdefault(id(p), []).append(f"{mname}.{pname}" if mname else pname)
        for name in names:
            shared = owners.get(id(model.get_submodule(name).weight), [])
            if len(shared) > 1:
                raise TransformRefusedError(f"{name}: its weight is shared with {', '.join(s for s in shared if s != name + '.weight')}; "
                                            "pruning it would prune those too (untie it or leave it out of targets)")

    def _blockwise(self, model: nn.Module, cfg: Any, names: list[str], batches: list[torch.Tensor]
                   ) -> tuple[list[LayerResult], dict[str, torch.Tensor]]:
        blocks = decoder_blocks(model)
        per_block: dict[int, list[str]] = {}
        head = [n for n in names if not n.startswith(blocks.prefix + ".")]
        for n in names:
            if n not in head:
                index, _, local = n[len(blocks.prefix) + 1 :].partition(".")
                per_block.setdefault(int(index), []).append(local)
        last = len(blocks.layers) - 1 if head else max(per_block)
        cache = capture_inputs(model, batches, blocks)
        results: list[LayerResult] = []
        updates: dict[str, torch.Tensor] = {}
        with progress_bar(enabled=self.progress, elapsed=True) as bar:
            task = bar.add_task(f"{self.name} blocks", total=last + 1 + bool(head))
            for i in range(last + 1):
                block = blocks.layers[i]
                if i in per_block:
                    work = copy.deepcopy(block)
                    done = self.process_block(BlockJob(work, per_block[i], f"{blocks.prefix}.{i}", cache, cfg))
                    _collect(block, work, f"{blocks.prefix}.{i}", done, results, updates)
                    block = work
                if i < last or head:
                    cache.advance(block)
                release_freed_memory()
                bar.advance(task)
            if head:
                self._head(model, blocks, head, cache, cfg, results, updates)
                bar.advance(task)
        return results, updates

    def _head(self, model: nn.Module, blocks: DecoderBlocks, head: list[str], cache: BlockInputs, cfg: Any,
              results: list[LayerResult], updates: dict[str, torch.Tensor]) -> None:
        """The output head, calibrated on the final norm of the last block's outputs (the norm is not changed)."""
        work = copy.deepcopy(_Head(blocks.norm, model.get_submodule(head[0])))
        done = self.process_block(BlockJob(work, ["head"], "", cache, cfg))
        for r in done:
            r.name = head[0]
            if r.quantized is not None and isinstance(work.head.bias, torch.Tensor):
                r.bias = work.head.bias.detach().clone()
        results.extend(done)

    def apply(self, model: nn.Module, plan: Plan) -> list[LayerReport]:
        results, updates = plan.work
        with torch.no_grad():
            for key, value in updates.items():
                mname, _, pname = key.rpartition(".")
                param = getattr(model.get_submodule(mname) if mname else model, pname)
                param.copy_(value.to(param.dtype))
        layers = [LayerReport.of(k.rpartition(".")[0], model.get_submodule(k.rpartition(".")[0]), "scaled",
                                 {"by": self.name}) for k in updates if k.endswith(".weight")]
        for r in results:
            layers.append(self._apply_one(model, r))
        return layers

    def _apply_one(self, model: nn.Module, r: LayerResult) -> LayerReport:
        module = model.get_submodule(r.name)
        if r.quantized is not None:
            bias = r.bias if r.bias is not None else getattr(module, "bias", None)
            untied = _untie(model, r.name, module)
            layer = swap_quantized(model, r.name, r.quantized, bias)
            details = {**r.details, "untied_from": untied} if untied else r.details
            return LayerReport.of(r.name, layer, r.action, details, weight=layer.nonzero_mask())
        if r.weight is None or r.mask is None:
            raise TorchslimError(f"{r.name}: the method produced neither a quantized weight nor a pruned one")
        weight: torch.Tensor = module.weight  # type: ignore[assignment]
        with torch.no_grad():
            weight.copy_(r.weight.to(weight.dtype))
        MASK.attach(module, "weight", r.mask)
        return LayerReport.of(r.name, module, r.action, r.details)

    def skip_reason(self, name: str, module: nn.Module, params: list[str]) -> str | None:
        if isinstance(module, QuantizedLinear):
            return None  # a layer an earlier run quantized: its bias belongs to that transform
        return super().skip_reason(name, module, params)


def _collect(original: nn.Module, work: nn.Module, prefix: str, done: list[LayerResult],
             results: list[LayerResult], updates: dict[str, torch.Tensor]) -> None:
    """Name ``done``'s results, take the transformed layers' biases, and record every other changed parameter."""
    own: set[str] = set()
    for r in done:
        local = r.name
        r.name = f"{prefix}.{local}" if prefix else local
        bias = getattr(work.get_submodule(local), "bias", None)
        if r.quantized is not None and isinstance(bias, torch.Tensor):
            r.bias = bias.detach().clone()
        own |= {f"{local}.weight", f"{local}.bias"} if r.quantized is not None else {f"{local}.weight"}
        results.append(r)
    before = dict(original.named_parameters())
    for key, value in work.named_parameters():
        if key not in own and key in before and not torch.equal(before[key], value):
            updates[f"{prefix}.{key}" if prefix else key] = value.detach().clone()


def _untie(model: nn.Module, name: str, module: nn.Module) -> list[str]:
    """The other parameters sharing ``module``'s weight (they keep it in float when ``module`` is swapped for its
    quantized form); a Hugging Face config that ties the output head to the input embeddings is told it no longer does,
    so ``save_pretrained`` writes the head and ``from_pretrained`` does not tie it back."""
    weight = getattr(module, "weight", None)
    shared = [f"{m}.{p}" if m else p for m, owner in model.named_modules() for p, t in owner.named_parameters(recurse=False)
              if t is weight and not (m == name and p == "weight")]
    config: Any = getattr(model, "config", None)
    if shared and name == _head_name(model) and getattr(config, "tie_word_embeddings", False):
        untied = copy.deepcopy(config)  # a copy: other models built from the same config object stay tied
        untied.tie_word_embeddings = False
        for owner in model.modules():
            if getattr(owner, "config", None) is config:
                owner.config = untied
    return shared


def _head_name(model: nn.Module) -> str | None:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        return None
    return next((n for n, m in model.named_modules() if m is head), None)


def _block_prefix(model: nn.Module) -> str | None:
    try:
        return decoder_blocks(model).prefix
    except TransformRefusedError:
        return None
