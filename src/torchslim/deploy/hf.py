"""Hugging Face directories out: :func:`save_pretrained` writes one that loads without torchslim.

* A float Hugging Face model (pruned or not) is written as ``transformers`` writes it
  (``config.json``, ``model.safetensors``) plus its tokenizer or image processor, when
  a stock config built again gives every weight its shape: uniformly pruned FFNs do
  (:func:`torchslim.graph.blocks.sync_config` writes ``intermediate_size``), and so do heads
  pruned uniformly in models whose config has a ``head_dim`` (Llama, ViT). Anything else
  (different FFN widths per layer; BERT/GPT-2 heads, whose size transformers 5 derives as
  ``hidden_size / num_attention_heads`` and whose ``config.pruned_heads`` it no longer
  applies) is refused by :func:`stock_config_problem`, naming the first weight and what to do
  instead.
* A quantized model is written as an ONNX directory: ``model.onnx`` (the int8 QDQ graph run
  through :func:`~torchslim.deploy.ort_optimize`, outputs named as the model's output fields:
  ``logits``...), ``config.json`` and the tokenizer files: what ONNX Runtime and optimum's
  ``ORTModelFor*`` load.

The directory is written in a temporary sibling and renamed into place; an existing one is
replaced only when torchslim wrote it (it holds :data:`MARKER`), else refused.

Example:
    >>> import tempfile, transformers
    >>> config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
    ...                                  num_attention_heads=2, intermediate_size=32, num_labels=2)
    >>> model = transformers.BertForSequenceClassification(config).eval()
    >>> out = save_pretrained(model, f"{tempfile.mkdtemp()}/bert")
    >>> out.kind, sorted(out.files)
    ('safetensors', ['config.json', 'model.safetensors', 'torchslim_export.json'])
    >>> loaded = transformers.BertForSequenceClassification.from_pretrained(out.path).eval()
    >>> ids = torch.tensor([[1, 5, 7, 2]])
    >>> torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)   # same weights
    True
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import onnx
import torch
from torch import nn

from torchslim.deploy.check import (
    ExportResult,
    check_onnx,
    is_quantized,
    onnx_artefact,
    require_agreement,
)
from torchslim.errors import TorchslimError
from torchslim.io.atomic import atomic_write_bytes, atomic_write_text, current_umask
from torchslim.measure.macs import ExampleInput, call_model, eval_mode

__all__ = ["MARKER", "atomic_directory", "example_from", "rename_outputs", "save_pretrained", "stock_config_problem"]

#: the file torchslim writes into every directory it exports (what was written, from what)
MARKER = "torchslim_export.json"


def _transformers_version() -> str:
    import transformers  # the package is optional for torchslim as a whole

    return str(transformers.__version__)


def stock_config_problem(model: nn.Module) -> str | None:
    """Why ``model``'s own config, built again by ``transformers``, would not give its weights their shapes.

    ``None``: ``type(model)(model.config)`` has the same weights with the same shapes, so
    ``from_pretrained`` of the saved directory rebuilds ``model`` exactly. The model is built
    on the meta device (no memory is allocated).

    Example:
        >>> stock_config_problem(nn.Linear(2, 2))
        'Linear is not a Hugging Face model (no config and save_pretrained): export it with ts.export(model, "model.onnx", example_input=...)'
    """
    config = getattr(model, "config", None)
    if config is None or not callable(getattr(model, "save_pretrained", None)):
        return (
            f"{type(model).__name__} is not a Hugging Face model (no config and save_pretrained): "
            'export it with ts.export(model, "model.onnx", example_input=...)'
        )
    with torch.device("meta"):
        fresh = type(model)(copy.deepcopy(config))
    ours = model.state_dict()
    for key, value in fresh.state_dict().items():
        have = ours.get(key)
        if have is not None and tuple(have.shape) == tuple(value.shape):
            continue
        shown = "absent" if have is None else str(tuple(have.shape))
        instead = (
            "export it as ONNX instead (ts.export(model, 'model.onnx', example_input=...) or a recipe's "
            "{type: export, format: onnx}), or save it with model.save_pretrained(dir) and reload it with "
            f"torchslim.prune.hf.from_pretrained(transformers.{type(model).__name__}, dir)"
        )
        pruned = getattr(config, "pruned_heads", None)
        if pruned:
            return (
                f"{type(model).__name__} has attention heads removed (config.pruned_heads = {dict(pruned)}), which no stock "
                f"config can say: transformers {_transformers_version()} sizes each head hidden_size / num_attention_heads "
                f"(attention_head_size = int(config.hidden_size / config.num_attention_heads)) and does not apply "
                f"config.pruned_heads, so {key} would be built {tuple(value.shape)} where the model has {shown}; {instead}"
            )
        return (
            f"{type(model).__name__}'s config does not say its shapes: built from its config, {key} is "
            f"{tuple(value.shape)}, the model has {shown} (layers pruned to different widths?); prune with "
            f"uniform: true for a stock config, or {instead}"
        )
    return None


@contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of ``target`` to fill; on success it replaces ``target`` (a rename), else it is removed.

    An existing ``target`` is replaced only when it is empty or holds :data:`MARKER` (torchslim wrote it).

    Raises:
        TorchslimError: ``target`` is a file, or a non-empty directory torchslim did not write.
    """
    path = Path(target)
    if path.exists() or path.is_symlink():
        if not path.is_dir() or path.is_symlink():
            raise TorchslimError(f"{path} exists and is not a directory; choose another path")
        if any(path.iterdir()) and not (path / MARKER).is_file():
            raise TorchslimError(
                f"{path} is a non-empty directory torchslim did not write (no {MARKER}); "
                "torchslim will not overwrite it: move it away or choose another path"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        tmp.chmod(0o777 & ~current_umask())
        yield tmp
        for p in tmp.rglob("*"):  # files respect the umask, as open() would make them
            if p.is_file() and not p.is_symlink():
                p.chmod(0o666 & ~current_umask())
        if path.exists():
            old = path.with_name(f".{path.name}.{secrets.token_hex(4)}.old")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def example_from(source: Any, example_input: ExampleInput | None) -> ExampleInput:
    """``example_input``, or one tokenized from ``source``'s tokenizer (a :class:`~torchslim.zoo.hf.ModelSource`).

    Raises:
        TorchslimError: neither is there.
    """
    if example_input is not None:
        return example_input
    tokenizer = getattr(source, "tokenizer", None)
    if tokenizer is not None:
        return {k: v for k, v in tokenizer(["torchslim export"], return_tensors="pt").items() if isinstance(v, torch.Tensor)}
    raise TorchslimError("exporting to ONNX needs example_input (one batch the model takes), or a source with a tokenizer")


def output_names(model: nn.Module, example_input: ExampleInput) -> list[str] | None:
    """The names of the tensors a model's output holds, in export order (``None``: a bare tensor or a tuple)."""
    with eval_mode(model), torch.no_grad():
        out = call_model(model, example_input)
    if isinstance(out, Mapping):
        return [str(k) for k, v in out.items() if isinstance(v, torch.Tensor)]
    return None


def rename_outputs(proto: onnx.ModelProto, names: Iterable[str]) -> None:
    """Rename the graph's outputs, in order, to ``names`` (every node reading or writing them follows), in place.

    Example:
        >>> from torchslim.deploy import export_fp32
        >>> proto = export_fp32(nn.Linear(4, 2), torch.randn(1, 4))
        >>> rename_outputs(proto, ["logits"])
        >>> [o.name for o in proto.graph.output]
        ['logits']
    """
    mapping = {o.name: n for o, n in zip(proto.graph.output, names) if o.name != n}
    if not mapping:
        return
    for node in proto.graph.node:
        for i, name in enumerate(node.output):
            node.output[i] = mapping.get(name, name)
        for i, name in enumerate(node.input):
            node.input[i] = mapping.get(name, name)
    for info in [*proto.graph.output, *proto.graph.value_info]:
        info.name = mapping.get(info.name, info.name)


def _companions(source: Any, model: nn.Module, into: Path) -> list[str]:
    """Write the config, tokenizer and image processor that travel with the model; notes on what is missing."""
    notes = []
    config = getattr(model, "config", None) or getattr(source, "hf_config", None)
    if config is not None and not (into / "config.json").exists():
        config.save_pretrained(str(into))
    for what in ("tokenizer", "processor"):
        companion = getattr(source, what, None)
        if companion is not None:
            companion.save_pretrained(str(into))
    if getattr(source, "tokenizer", None) is None and getattr(source, "processor", None) is None:
        notes.append("no tokenizer or image processor was saved (pass source=, the run's ModelSource)")
    return notes


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    source: Any = None,
    example_input: ExampleInput | None = None,
    check: Iterable[Any] | None = None,
    threads: int | None = None,
    optimize: bool = True,
    opset: int = 17,
    min_agreement: float = 0.99,
    min_cosine: float = 0.99,
) -> ExportResult:
    """Write ``model`` as a directory that loads without torchslim (see the module docstring).

    Args:
        model: a Hugging Face model (float: a ``transformers`` directory; quantized: an ONNX directory).
        directory: where to write it (replaced only when torchslim wrote it).
        source: the :class:`~torchslim.zoo.hf.ModelSource` the model came from (``RunResult.source``):
            its tokenizer or image processor is saved alongside.
        example_input: one batch, for the ONNX export (default: tokenized by the source's tokenizer).
        check: batches to check the ONNX graph on in ONNX Runtime (quantized models); below
            ``min_agreement`` top-1 agreement or ``min_cosine`` mean cosine, nothing is written.
        threads: ONNX Runtime threads of the check.
        optimize: run :func:`~torchslim.deploy.ort_optimize` on the int8 graph.
        opset: ONNX opset of the export.

    Returns:
        An :class:`~torchslim.deploy.check.ExportResult` (``kind`` ``safetensors`` or ``int8``).

    Raises:
        TorchslimError: a float model no stock config can describe (:func:`stock_config_problem`),
            a model that is not a Hugging Face one, a failed check, or a target torchslim may not replace.
    """
    path = Path(directory)
    quantized = is_quantized(model)
    if not quantized:
        problem = stock_config_problem(model)
        if problem is not None:
            raise TorchslimError(f"save_pretrained {path}: {problem}")
    elif getattr(model, "config", None) is None:
        raise TorchslimError(
            f"save_pretrained {path}: {type(model).__name__} is not a Hugging Face model (no config); "
            "write the quantized model with ts.export(model, 'model.onnx', example_input=...)"
        )
    result = None
    if quantized:
        example = example_from(source, example_input)
        data, kind = onnx_artefact(model, example, optimize=optimize, opset=opset)
        proto = onnx.load_from_string(data)
        names = output_names(model, example)
        if names:
            rename_outputs(proto, names)
            data = proto.SerializeToString()
        result = check_onnx(model, data, check, threads=threads, what="check batches") if check is not None else None
        if result is not None:
            require_agreement(result, min_agreement=min_agreement, min_cosine=min_cosine, what=f"{path}/model.onnx")
    with atomic_directory(path) as tmp:
        if quantized:
            atomic_write_bytes(tmp / "model.onnx", data)
        else:
            cast(Any, model).save_pretrained(str(tmp), state_dict=_stock_state(model))  # a transformers model
        notes = _companions(source, model, tmp)
        written = [*_files(tmp), MARKER]
        meta = {"format": "hf", "kind": "int8" if quantized else "safetensors", "files": written,
                "source": getattr(source, "name", None)}
        atomic_write_text(tmp / MARKER, json.dumps(meta, indent=2))
    model_file = path / ("model.onnx" if quantized else "model.safetensors")
    size = sum((path / f).stat().st_size for f in written)
    return ExportResult(path, "hf", "int8" if quantized else "safetensors", model_file, written, size, result, notes)


def _stock_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors a stock model built from its config has (a pruning mask or other extra buffer is left out)."""
    with torch.device("meta"):
        keys = set(type(model)(copy.deepcopy(model.config)).state_dict())  # type: ignore[operator]
    return {k: v for k, v in model.state_dict().items() if k in keys}
