"""The architecture x technique matrix: every technique on every reference model, each cell checked by numbers.

:func:`run_matrix` applies each technique to a deep copy of each model of
:data:`~torchslim.testing.architectures.ARCHITECTURES` and returns one :class:`Outcome` per cell:

* ``works``: the technique ran and the check that proves it passed; the figure says what it measured;
* ``refused``: it raised :class:`~torchslim.errors.TransformRefusedError` or
  :class:`~torchslim.errors.ConfigError` naming a layer of the model, and the model is bit-identical
  to before (module tree, every state tensor, the output on the example);
* ``FAILED``: a crash, a broken model (an output of another shape, or not finite), wrong numbers, a
  refusal that names no layer or leaves the model changed, or parameters that the report neither
  transformed nor listed as skipped (:func:`~torchslim.quant.coverage.unaccounted_parameters`).

The techniques and what proves they work (every layer is a candidate: ``keep_first_last: false``, so the
first and last layers, where embeddings, tied heads and odd readers live, are tried too):

=============== ===================================================================================
``channels``    ``prune_structured_`` heads then channels at 50 %: output shape kept, MACs drop
``unstructured`` ``prune_`` at 50 %: output shape kept, every masked weight zero, non-zeros drop
``nm``          ``prune_`` 2:4: every masked weight meets 2:4 along its inputs
``fold``        ``fold_``: the output equal to before within 1e-4 (relative; a model in a narrower dtype
                than float32: 4 of its epsilons, the rounding of the folded weights), parameters do not grow
``int8``        static ``quantize_``, ``export_qdq``, ONNX Runtime against the simulation: top-1
                agreement >= 99 % or cosine >= 0.99 (a float model torch's exporter cannot export is
                refused first, by ``export_fp32``'s error naming the layer that fails alone)
``factorize``   ``factorize_``: output shape kept (eval and train mode), parameters drop
``share``       ``share_weights_``, saved as ``.tslim`` and loaded into a fresh copy: outputs equal
=============== ===================================================================================

Run it from a shell (exit status 1 when a cell FAILED)::

    python -m torchslim.testing.matrix [--models a,b] [--techniques x,y] [--model module:factory]

``--model module:factory`` adds a model of your own: ``factory()`` returns an
:class:`~torchslim.testing.architectures.Architecture` or a ``(model, example_input)`` pair.

Example:
    >>> [o.cell() for o in run_matrix(["mlp"], ["fold", "unstructured"])]
    ['ok exact 0, params x1.00', 'ok nonzeros x0.51']
"""

from __future__ import annotations

import argparse
import copy
import importlib
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.deploy import OrtModel, export_fp32, export_qdq
from torchslim.encode import load, save, share_weights_
from torchslim.errors import ConfigError, ConfigIssue, TorchslimError, TransformRefusedError
from torchslim.fold import fold_
from torchslim.graph.surgery import is_conv1d
from torchslim.lowrank import factorize_
from torchslim.measure import count_macs
from torchslim.measure.size import count_nonzeros, count_params, dense_bytes
from torchslim.prune import iter_masks, prune_, prune_structured_, satisfies_nm
from torchslim.quant import quantize_
from torchslim.quant.coverage import unaccounted_parameters
from torchslim.quant.metrics import comparable_output
from torchslim.report import Report
from torchslim.testing.architectures import ARCHITECTURES, Architecture, call

__all__ = ["TECHNIQUES", "CheckFailed", "Outcome", "main", "run_cell", "run_matrix", "table"]

STATUSES = ("works", "refused", "FAILED")


class CheckFailed(Exception):
    """A technique ran but the check of its result failed (the message says which and by how much)."""


@dataclass
class Outcome:
    """One cell of the matrix.

    Attributes:
        model: the architecture's name.
        technique: the technique's name.
        status: ``works``, ``refused`` or ``FAILED``.
        detail: the figure that proved it works, the layer a refusal named, or why it failed.
        message: the full refusal or failure message (``""`` when it works).
        seconds: wall time of the cell.
    """

    model: str
    technique: str
    status: str
    detail: str
    message: str = ""
    seconds: float = 0.0

    def cell(self) -> str:
        """The table cell: ``ok <figure>``, ``refused: <layer>`` or ``FAILED: <why>``.

        Example:
            >>> Outcome("m", "fold", "refused", "head").cell()
            'refused: head'
        """
        return f"ok {self.detail}" if self.status == "works" else f"{self.status}: {self.detail}"


# -- checks shared by the techniques ----------------------------------------------------------------


def output_of(model: nn.Module, inputs: Any) -> torch.Tensor:
    """The tensor of ``model``'s output on ``inputs`` that is compared (logits, last hidden state, first tensor)."""
    found = comparable_output(call(model, inputs))
    if found is None:
        raise CheckFailed(f"the output of {type(model).__name__} holds no tensor")
    return found[0]


def check_output(model: nn.Module, arch: Architecture, shape: torch.Size) -> torch.Tensor:
    """The model's output on the example; fails unless it has ``shape`` and is finite."""
    out = output_of(model, arch.example)
    if out.shape != shape:
        raise CheckFailed(f"output shape {tuple(out.shape)}, was {tuple(shape)}")
    if not bool(torch.isfinite(out).all()):
        raise CheckFailed("output not finite")
    return out


def check_accounted(model: nn.Module, reports: Sequence[Report]) -> None:
    """Fail when a parameter of ``model`` is neither transformed nor skipped by any of ``reports``."""
    merged = Report(title="merged", layers=[l for r in reports for l in r.layers], skipped=[s for r in reports for s in r.skipped])
    missing = unaccounted_parameters(model, merged)
    if missing:
        shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
        raise CheckFailed(f"unaccounted: {len(missing)} parameter(s) ({shown})")


def snapshot(model: nn.Module, example: Any) -> tuple[list[tuple[str, str]], dict[str, torch.Tensor], Any]:
    """What a refusal must leave as it was: the module tree, every state tensor and the output on ``example``."""
    tree = [(n, type(m).__name__) for n, m in model.named_modules()]
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return tree, state, output_of(model, example)


def changed(model: nn.Module, before: tuple[list[tuple[str, str]], dict[str, torch.Tensor], Any], example: Any) -> str | None:
    """How ``model`` differs from ``before`` (a :func:`snapshot`), or ``None`` when it is bit-identical."""
    tree, state, out = before
    if [(n, type(m).__name__) for n, m in model.named_modules()] != tree:
        return "module tree changed"
    now = model.state_dict()
    if now.keys() != state.keys():
        return "state dict keys changed"
    for key, value in state.items():
        if now[key].dtype != value.dtype or now[key].shape != value.shape or not torch.equal(now[key], value):
            return f"{key} changed"
    if not torch.equal(output_of(model, example), out):
        return "output changed"
    return None


def named_layer(model: nn.Module, message: str) -> str | None:
    """The longest module name (or else a module class) of ``model`` that ``message`` names, or ``None``.

    Example:
        >>> named_layer(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), "layer 0 cannot be pruned at 0.5")
        '0'
        >>> named_layer(nn.Sequential(nn.Linear(2, 2)), "nothing to do") is None
        True
    """
    names = sorted((n for n, _ in model.named_modules() if n), key=len, reverse=True)
    for name in names:
        if re.search(rf"(?<![\w.]){re.escape(name)}(?!\w|\.\w)", message):
            return name
    for kind in sorted({type(m).__name__ for m in model.modules()}, key=len, reverse=True):
        if re.search(rf"\b{re.escape(kind)}\b", message):
            return kind
    return None


# -- the techniques -------------------------------------------------------------------------------


def _channels(model: nn.Module, arch: Architecture) -> str:
    shape, macs0 = output_of(model, arch.example).shape, count_macs(model, arch.example)
    reports, refusal, done = [], None, []
    for granularity in ("head", "channel"):
        before = snapshot(model, arch.example)
        try:
            cfg = {"granularity": granularity, "sparsity": 0.5, "keep_first_last": False}
            reports.append(prune_structured_(model, cfg, example_input=arch.example))
            done.append(granularity + "s")
        except (TransformRefusedError, ConfigError) as exc:
            problem = changed(model, before, arch.example)
            if problem is not None:
                raise CheckFailed(f"{granularity} pruning refused but left the model changed: {problem}") from exc
            refusal = exc
    if not reports and refusal is not None:
        raise refusal
    check_output(model, arch, shape)
    macs1 = count_macs(model, arch.example)
    if macs1 >= macs0:
        raise CheckFailed(f"MACs did not drop ({macs0} -> {macs1})")
    check_accounted(model, reports)
    return f"MACs x{macs1 / macs0:.2f} ({'+'.join(done)})"


def _masked(model: nn.Module) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    out = []
    for mname, module, pname, mask in iter_masks(model):
        weight = getattr(module, pname).detach()
        if bool((weight[~mask] != 0).any()):
            raise CheckFailed(f"{mname}.{pname}: masked weights are not zero")
        out.append((f"{mname}.{pname}", weight, mask))
    return out


def _dropped(what: str, before: int, after: int) -> float:
    """``after / before``; :class:`CheckFailed` naming ``what`` when it did not drop."""
    if after >= before:
        raise CheckFailed(f"{what} did not drop ({before} -> {after})")
    return after / before


def _unstructured(model: nn.Module, arch: Architecture) -> str:
    shape, nz0 = output_of(model, arch.example).shape, count_nonzeros(model)
    report = prune_(model, {"sparsity": 0.5, "keep_first_last": False})
    check_output(model, arch, shape)
    if not _masked(model):
        raise CheckFailed("no mask attached")
    ratio = _dropped("non-zeros", nz0, count_nonzeros(model))
    check_accounted(model, [report])
    return f"nonzeros x{ratio:.2f}"


def _nm(model: nn.Module, arch: Architecture) -> str:
    shape = output_of(model, arch.example).shape
    report = prune_(model, {"granularity": "nm", "n": 2, "m": 4, "keep_first_last": False})
    check_output(model, arch, shape)
    masked = _masked(model)
    if not masked:
        raise CheckFailed("no mask attached")
    modules = dict(model.named_modules())  # a Hugging Face Conv1D stores (in, out): its groups run down dim 0
    bad = [n for n, w, _ in masked if not satisfies_nm(w, 2, 4, transposed=is_conv1d(modules[n.rpartition(".")[0]]))]
    if bad:
        raise CheckFailed(f"not 2:4: {', '.join(bad[:3])}")
    check_accounted(model, [report])
    return f"2:4 in {len(masked)} layer(s)"


def _fold(model: nn.Module, arch: Architecture) -> str:
    ref, params0 = output_of(model, arch.example), count_params(model)
    report = fold_(model, example_input=arch.example)
    out = check_output(model, arch, ref.shape)
    rel = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    tol = max(1e-4, 4 * torch.finfo(ref.dtype).eps) if ref.is_floating_point() else 1e-4  # bfloat16: its own rounding
    if rel > tol:
        raise CheckFailed(f"output changed by {rel:.1e} (relative, tolerance {tol:.0e}); folding is exact")
    params1 = count_params(model)
    if params1 > params0:
        raise CheckFailed(f"parameters grew ({params0} -> {params1})")
    check_accounted(model, [report])
    return f"exact {rel:.0e}, params x{params1 / params0:.2f}".replace("exact 0e+00", "exact 0")


def _ort_output(outs: Any, like: torch.Tensor) -> torch.Tensor:
    tensors = outs if isinstance(outs, tuple) else (outs,)
    return next((t for t in tensors if t.shape == like.shape), tensors[0])


def _int8(model: nn.Module, arch: Architecture) -> str:
    try:  # a float graph torch cannot export has no int8 graph either: a refusal when the error names the layer
        export_fp32(model, arch.example)
    except TorchslimError as exc:
        raise TransformRefusedError(f"int8 deployment: {exc}") from exc
    shape = output_of(model, arch.example).shape
    report = quantize_(model, {"mode": "static"}, calibration=arch.calibration)
    check_accounted(model, [report])
    sim = check_output(model, arch, shape).float()
    got = _ort_output(OrtModel(export_qdq(model, arch.example), threads=1)(arch.example), sim).float()
    if got.shape != sim.shape:
        raise CheckFailed(f"ONNX Runtime output shape {tuple(got.shape)}, simulation {tuple(sim.shape)}")
    agree = float((got.argmax(-1) == sim.argmax(-1)).float().mean())
    cosine = float(F.cosine_similarity(got.flatten(), sim.flatten(), dim=0))
    if agree < 0.99 and not cosine >= 0.99:
        raise CheckFailed(f"ONNX Runtime vs simulation: top-1 agreement {agree:.0%}, cosine {cosine:.3f}")
    return f"ORT agree {agree:.0%} cos {cosine:.3f}"


def _factorize(model: nn.Module, arch: Architecture) -> str:
    shape, params0 = output_of(model, arch.example).shape, count_params(model)
    report = factorize_(model, {"keep_first_last": False}, example_input=arch.example)
    check_output(model, arch, shape)
    model.train()
    try:
        check_output(model, arch, shape)  # the training path (no fused fast paths) reads weights directly
    finally:
        model.eval()
    ratio = _dropped("parameters", params0, count_params(model))
    check_accounted(model, [report])
    return f"params x{ratio:.2f}"


def _share(model: nn.Module, arch: Architecture) -> str:
    fresh = copy.deepcopy(model)
    report = share_weights_(model)
    check_accounted(model, [report])
    out = check_output(model, arch, output_of(fresh, arch.example).shape)
    with tempfile.TemporaryDirectory() as tmp:
        path = save(model, Path(tmp) / "model.tslim")
        size = path.stat().st_size
        loaded = load(path, fresh)
    if not torch.equal(output_of(loaded, arch.example), out):
        raise CheckFailed("the loaded .tslim computes other outputs than the shared model")
    return f".tslim x{size / dense_bytes(fresh):.2f} of fp32"


#: every technique of the matrix: ``(model, architecture) -> figure`` (raises on refusal or failure)
TECHNIQUES: dict[str, Callable[[nn.Module, Architecture], str]] = {
    "channels": _channels,
    "unstructured": _unstructured,
    "nm": _nm,
    "fold": _fold,
    "int8": _int8,
    "factorize": _factorize,
    "share": _share,
}


# -- running it -----------------------------------------------------------------------------------


def _short(message: str, limit: int = 160) -> str:
    line = " ".join(message.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def run_cell(name: str, arch: Architecture, technique: str) -> Outcome:
    """Apply ``technique`` to a deep copy of ``arch.model`` and check the result (see the module doc).

    Example:
        >>> from torchslim.testing import ARCHITECTURES
        >>> run_cell("mlp", ARCHITECTURES["mlp"](), "nm").status
        'works'
    """
    model = copy.deepcopy(arch.model).eval()
    start = time.perf_counter()
    before = snapshot(model, arch.example)
    try:
        figure = TECHNIQUES[technique](model, arch)
        return Outcome(name, technique, "works", figure, "", time.perf_counter() - start)
    except (TransformRefusedError, ConfigError) as exc:
        seconds, message = time.perf_counter() - start, str(exc)
        problem = changed(model, before, arch.example)
        if problem is not None:
            return Outcome(name, technique, "FAILED", f"refused but {problem}", message, seconds)
        layer = named_layer(model, message)
        if layer is None:
            return Outcome(name, technique, "FAILED", f"refusal names no layer: {_short(message, 80)}", message, seconds)
        return Outcome(name, technique, "refused", layer, message, seconds)
    except CheckFailed as exc:
        return Outcome(name, technique, "FAILED", _short(str(exc)), str(exc), time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - a crash is a cell of the table, not the end of the run
        why = f"{type(exc).__name__}: {exc}"
        return Outcome(name, technique, "FAILED", _short(why), why, time.perf_counter() - start)


def run_matrix(
    names: Sequence[str] | None = None,
    techniques: Sequence[str] | None = None,
    *,
    extra: dict[str, Callable[[], Architecture]] | None = None,
) -> list[Outcome]:
    """Every technique of ``techniques`` on every model of ``names`` (``None``: all), model by model.

    Args:
        names: architecture names (of :data:`ARCHITECTURES` or ``extra``).
        techniques: technique names (of :data:`TECHNIQUES`).
        extra: more architectures by name, run after ``names``.

    Raises:
        ConfigError: an unknown model or technique name.
    """
    registry = {**ARCHITECTURES, **(extra or {})}
    chosen = list(ARCHITECTURES) if names is None else list(names)
    chosen += [n for n in extra or {} if n not in chosen]
    techs = list(TECHNIQUES) if techniques is None else list(techniques)
    unknown = [n for n in chosen if n not in registry] + [t for t in techs if t not in TECHNIQUES]
    if unknown:
        allowed = f"models: {', '.join(registry)}; techniques: {', '.join(TECHNIQUES)}"
        raise ConfigError([ConfigIssue("names", f"unknown model or technique {', '.join(unknown)}; {allowed}")])
    outcomes: list[Outcome] = []
    for name in chosen:
        arch = registry[name]()
        outcomes.extend(run_cell(name, arch, t) for t in techs)
    return outcomes


def table(outcomes: Sequence[Outcome], width: int = 34) -> str:
    """The outcome table: one row per model, one column per technique, each cell cut to ``width`` characters.

    Example:
        >>> print(table([Outcome("m", "fold", "works", "exact 0")]))
        | model | fold       |
        |-------|------------|
        | m     | ok exact 0 |
    """
    models = list(dict.fromkeys(o.model for o in outcomes))
    techs = list(dict.fromkeys(o.technique for o in outcomes))
    cells = {(o.model, o.technique): _short(o.cell(), width) for o in outcomes}
    first = max(len("model"), *(len(m) for m in models))
    widths = [max(len(t), *(len(cells.get((m, t), "")) for m in models)) for t in techs]
    head = "| " + "model".ljust(first) + " | " + " | ".join(t.ljust(w) for t, w in zip(techs, widths)) + " |"
    rule = "|" + "-" * (first + 2) + "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    rows = ["| " + m.ljust(first) + " | " + " | ".join(cells.get((m, t), "").ljust(w) for t, w in zip(techs, widths)) + " |"
            for m in models]
    return "\n".join([head, rule, *rows])


def _factory(spec: str) -> Callable[[], Architecture]:
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ConfigError([ConfigIssue("--model", "takes module:factory", spec)])
    build = getattr(importlib.import_module(module), attr)

    def make() -> Architecture:
        made = build()
        if isinstance(made, Architecture):
            return made
        if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
            model, example = made
            # calibration batches as (inputs, no labels): a tuple example (x, mask) is then never read as (x, labels)
            batch = (example, None) if isinstance(example, (tuple, list)) else example
            return Architecture(model.eval(), example, [batch] * 4, "custom")
        raise ConfigError([ConfigIssue("--model", f"{spec} returned {type(made).__name__}; expected an Architecture or (model, example_input)")])

    return make


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: print the outcome table and every refusal and failure; 1 when a cell FAILED."""
    parser = argparse.ArgumentParser(prog="python -m torchslim.testing.matrix", description=__doc__.split("\n")[0])
    parser.add_argument("--models", help=f"comma-separated, of: {', '.join(ARCHITECTURES)}")
    parser.add_argument("--techniques", help=f"comma-separated, of: {', '.join(TECHNIQUES)}")
    parser.add_argument("--model", action="append", default=[], metavar="MODULE:FACTORY",
                        help="a model of your own: factory() returns an Architecture or (model, example_input)")
    args = parser.parse_args(argv)
    extra = {spec: _factory(spec) for spec in args.model}
    names = args.models.split(",") if args.models else (None if not extra else [])
    techs = args.techniques.split(",") if args.techniques else None
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the accuracy guard's warnings on random weights: the table says what counts
        outcomes = run_matrix(names, techs, extra=extra)
    print(table(outcomes))
    counts = {s: sum(o.status == s for o in outcomes) for s in STATUSES}
    print(f"\n{len(outcomes)} cells: " + ", ".join(f"{n} {s}" for s, n in counts.items()) +
          f" ({time.perf_counter() - start:.0f} s)")
    for o in outcomes:
        if o.status != "works":
            print(f"- {o.model} / {o.technique}: {o.status}: {_short(o.message, 400)}")
    return 1 if counts["FAILED"] else 0


if __name__ == "__main__":
    sys.exit(main())
