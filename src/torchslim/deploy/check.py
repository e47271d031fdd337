"""The deployed artefact: an exported model's ONNX bytes, its check in ONNX Runtime against the torch model,
and its accuracy and latency measured in ONNX Runtime.

:func:`onnx_artefact` exports fp32 ONNX for a float model and, for a quantized one, the int8 QDQ graph
(:func:`~torchslim.deploy.export_qdq`) run through :func:`~torchslim.deploy.ort_optimize`.
:func:`check_onnx` runs the exported graph and the torch model on the same batches and records
top-1 agreement (argmax over the last axis of the first output) and cosine similarity
(per sample, of the flattened first output); :func:`require_agreement` refuses a graph below the
minimums, naming the figure. :func:`measure_deployed` is what a run's "after" figures come from
when a stage exported the model.

Example:
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> x = torch.randn(16, 4)
    >>> data, kind = onnx_artefact(model, x[:1])
    >>> kind
    'fp32'
    >>> check = check_onnx(model, data, [(x, torch.zeros(16, dtype=torch.long))], threads=1)
    >>> (check.samples, check.top1_agreement, round(check.cosine, 4))
    (16, 1.0, 1.0)
    >>> require_agreement(check, min_agreement=0.99, min_cosine=0.99)
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.data.batches import move, split_batch
from torchslim.deploy.export import export_fp32, export_qdq
from torchslim.deploy.runtime import measure_ort_latency, ort_feed, ort_optimize, ort_session
from torchslim.errors import TorchslimError
from torchslim.measure.latency import LatencyResult
from torchslim.measure.macs import ExampleInput, call_model, eval_mode
from torchslim.quant.model import QUANT_MODULES

__all__ = [
    "ExportCheck",
    "ExportResult",
    "check_onnx",
    "first_tensor",
    "is_quantized",
    "measure_deployed",
    "onnx_artefact",
    "require_agreement",
]

#: how the two kinds of exported graph are described in reports
KINDS = {"fp32": "fp32 ONNX", "int8": "int8 QDQ ONNX (ort_optimize)"}


@dataclass(frozen=True)
class ExportCheck:
    """The exported graph in ONNX Runtime against the torch model on the same batches.

    Attributes:
        samples: samples compared.
        top1_agreement: fraction of predictions (argmax over the last axis of the first output,
            per sample, or per token for a sequence output) on which the two agree.
        cosine: mean over samples of the cosine similarity of the flattened first outputs.
        min_cosine: the lowest per-sample cosine.
        accuracy_torch: top-1 accuracy of the torch model (``None``: the batches had no labels).
        accuracy_onnx: top-1 accuracy of the ONNX graph.
        batches: where the batches came from (``test split``, ...), for the report.
    """

    samples: int
    top1_agreement: float
    cosine: float
    min_cosine: float
    accuracy_torch: float | None = None
    accuracy_onnx: float | None = None
    batches: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields."""
        return asdict(self)


@dataclass
class ExportResult:
    """What :func:`torchslim.export` or :func:`torchslim.save_pretrained` wrote.

    Attributes:
        path: the file (``format="onnx"``) or directory (``format="hf"``) written.
        format: ``onnx`` or ``hf``.
        kind: ``fp32`` or ``int8`` (an ONNX graph), or ``safetensors`` (a Hugging Face directory
            with the model's weights, loaded by ``transformers`` as it is).
        model_file: the file holding the model (``path`` itself, or ``model.onnx`` /
            ``model.safetensors`` in the directory).
        files: the names written (for a directory, relative to it).
        bytes: bytes written in all.
        check: the ONNX Runtime check, when batches were given.
        notes: anything the caller should know (no tokenizer saved, ...).
    """

    path: Path
    format: str
    kind: str
    model_file: Path
    files: list[str]
    bytes: int
    check: ExportCheck | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def onnx(self) -> Path | None:
        """The ONNX file, when the artefact is one (``None`` for safetensors)."""
        return self.model_file if self.model_file.suffix == ".onnx" else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings)."""
        return {
            "path": str(self.path), "format": self.format, "kind": self.kind, "model_file": self.model_file.name,
            "files": list(self.files), "bytes": self.bytes, "check": None if self.check is None else self.check.to_dict(),
            "notes": list(self.notes),
        }


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` holds torchslim quantized layers (what :func:`~torchslim.quant.quantize_` puts in).

    Example:
        >>> is_quantized(nn.Linear(2, 2))
        False
    """
    return any(isinstance(m, QUANT_MODULES) for m in model.modules())


def _on_cpu(model: nn.Module) -> nn.Module:
    """``model`` itself when it is on the CPU, else a CPU copy (the exporter runs on the CPU)."""
    devices = {t.device.type for t in [*model.parameters(), *model.buffers()]}
    return model if devices <= {"cpu"} else copy.deepcopy(model).cpu()


def onnx_artefact(model: nn.Module, example_input: ExampleInput, *, optimize: bool = True, opset: int = 17) -> tuple[bytes, str]:
    """``(serialized ONNX, kind)``: fp32 for a float model, the int8 QDQ graph (``ort_optimize``'d) for a quantized one.

    ``kind`` is ``fp32`` or ``int8``. ``optimize=False`` keeps the portable QDQ graph (standard
    operators only); the optimised one uses ONNX Runtime's ``com.microsoft`` operators. The model
    is not modified (a model on another device is exported from a CPU copy).

    Raises:
        TorchslimError: the model cannot be exported (the exporter's message is kept).
    """
    cpu = _on_cpu(model)
    example = move(example_input, torch.device("cpu"))
    if is_quantized(cpu):
        proto = export_qdq(cpu, example, opset=opset)
        if optimize:
            proto = ort_optimize(proto)
        return proto.SerializeToString(), "int8"
    return export_fp32(cpu, example, opset=opset).SerializeToString(), "fp32"


def first_tensor(output: Any) -> torch.Tensor:
    """The first tensor of a model output, as the ONNX export orders them (tensor, mapping values, tuple items).

    Example:
        >>> first_tensor({"loss": None, "logits": torch.ones(1, 2)}).shape
        torch.Size([1, 2])
    """
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if isinstance(output, Mapping) else output if isinstance(output, (tuple, list)) else ()
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
    raise TorchslimError(f"the model's output ({type(output).__name__}) holds no tensor")


def _ort_first(session: Any, inputs: Any) -> torch.Tensor:
    return torch.from_numpy(session.run(None, ort_feed(session, inputs))[0])


def check_onnx(
    model: nn.Module,
    onnx_model: bytes | str | Path,
    batches: Iterable[Any],
    *,
    threads: int | None = None,
    max_batches: int | None = None,
    what: str = "",
) -> ExportCheck:
    """Run ``onnx_model`` in ONNX Runtime and ``model`` in torch (eval mode) on ``batches`` and compare.

    Args:
        model: the torch model (on any device; its inputs are moved there).
        onnx_model: the serialized graph or its path.
        batches: batches in any form :func:`~torchslim.data.batches.split_batch` reads; labels,
            where present, give both accuracies.
        threads: ONNX Runtime intra-op threads (``None``: ``torch.get_num_threads()``).
        max_batches: compare at most this many batches.
        what: where the batches came from, recorded in the result.

    Raises:
        TorchslimError: no batch, or the two outputs differ in shape.
    """
    session = ort_session(onnx_model if isinstance(onnx_model, bytes) else str(onnx_model), threads=threads)
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    samples = agree = preds = 0
    cosines: list[torch.Tensor] = []
    right = {"torch": 0, "onnx": 0}
    labelled = 0
    with eval_mode(model), torch.no_grad():
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            inputs, labels = split_batch(batch, i, model)
            ref = first_tensor(call_model(model, move(inputs, device))).detach().float().cpu()
            got = _ort_first(session, inputs).float()
            if got.shape != ref.shape:
                raise TorchslimError(f"batch {i}: the ONNX graph's output has shape {tuple(got.shape)}, the model's {tuple(ref.shape)}")
            same = got.argmax(-1) == ref.argmax(-1)
            agree, preds = agree + int(same.sum()), preds + same.numel()
            cosines.append(torch.nn.functional.cosine_similarity(got.flatten(1).double(), ref.flatten(1).double(), dim=1, eps=1e-12))
            samples += ref.shape[0]
            if labels is not None and ref.dim() == 2:
                labels = labels.cpu()
                right["torch"] += int((ref.argmax(-1) == labels).sum())
                right["onnx"] += int((got.argmax(-1) == labels).sum())
                labelled += int(labels.numel())
    if samples == 0:
        raise TorchslimError("no batch to check the exported model on")
    cos = torch.cat(cosines)
    return ExportCheck(
        samples, agree / preds, float(cos.mean()), float(cos.min()),
        right["torch"] / labelled if labelled else None, right["onnx"] / labelled if labelled else None, what,
    )


def require_agreement(check: ExportCheck, *, min_agreement: float = 0.99, min_cosine: float = 0.99, what: str = "the exported model") -> None:
    """Refuse an exported graph whose top-1 agreement or mean cosine with the torch model is below the minimum.

    Raises:
        TorchslimError: names the figure, its value, the minimum and the samples.

    Example:
        >>> require_agreement(ExportCheck(100, 0.97, 0.999, 0.98), what="model.onnx")
        Traceback (most recent call last):
            ...
        torchslim.errors.TorchslimError: model.onnx: top-1 agreement with the torch model in ONNX Runtime is 97.00 % on 100 samples, below the minimum 99.00 %
    """
    if check.top1_agreement < min_agreement:
        raise TorchslimError(
            f"{what}: top-1 agreement with the torch model in ONNX Runtime is {100 * check.top1_agreement:.2f} % on "
            f"{check.samples} samples, below the minimum {100 * min_agreement:.2f} %"
        )
    if check.cosine < min_cosine:
        raise TorchslimError(
            f"{what}: mean cosine similarity of its outputs with the torch model's in ONNX Runtime is {check.cosine:.4f} "
            f"on {check.samples} samples (lowest {check.min_cosine:.4f}), below the minimum {min_cosine}"
        )


def onnx_accuracy(session: Any, loader: Iterable[Any]) -> float | None:
    """Top-1 accuracy of an ONNX Runtime session over labelled batches (``None``: no labels)."""
    right = total = 0
    for i, batch in enumerate(loader):
        inputs, labels = split_batch(batch, i)
        if labels is None:
            return None
        right += int((_ort_first(session, inputs).argmax(-1) == labels.cpu()).sum())
        total += int(labels.numel())
    return right / total if total else None


def measure_deployed(
    onnx_model: str | Path,
    loader: Iterable[Any] | None,
    example_input: ExampleInput,
    *,
    batch_size: int = 64,
    threads: int | None = None,
    runs: int = 20,
) -> tuple[float | None, LatencyResult]:
    """``(top-1 accuracy, latency)`` of an exported ONNX file in ONNX Runtime (CPU).

    Accuracy is over ``loader`` (``None``: not measured); latency is
    :func:`~torchslim.deploy.measure_ort_latency` of a batch of ``batch_size`` copies of the
    first sample of ``example_input`` on ``threads`` intra-op threads.
    """
    example = move(example_input, torch.device("cpu"))
    accuracy = None
    if loader is not None:
        accuracy = onnx_accuracy(ort_session(str(onnx_model), threads=threads), loader)
    latency = measure_ort_latency(str(onnx_model), example, batch_size=batch_size, threads=threads, runs=runs)
    return accuracy, latency
