"""Hugging Face model directories, loaded offline from safetensors, with their tokenizer or image processor.

A recipe names one as ``model: {hf: ./tiny-bert, task: sequence-classification}``.
:func:`load_hf` loads it with ``transformers`` (``HF_HUB_OFFLINE=1``,
``local_files_only=True``, ``use_safetensors=True``: nothing is downloaded and no
pickle is read; a directory holding only ``pytorch_model.bin`` is refused) and
returns a :class:`ModelSource`: the model, plus what travels with it (tokenizer,
image processor, config, task, directory) for tokenizing a recipe's text data and for
writing the model back out. ``trust_remote_code`` is never set: the model's code is
the installed ``transformers``'.

Tasks and the ``transformers`` class each loads with:

* ``sequence-classification``: ``AutoModelForSequenceClassification`` (the default);
* ``causal-lm``: ``AutoModelForCausalLM``;
* ``feature-extraction``: ``AutoModel`` (hidden states out: no accuracy is measured);
* ``image-classification``: ``AutoModelForImageClassification``.

Example:
    >>> hf_dir_problem("/no/such/dir")
    "Hugging Face directory '/no/such/dir' not found"
    >>> sorted(HF_TASKS)
    ['causal-lm', 'feature-extraction', 'image-classification', 'sequence-classification']
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from torchslim.errors import TorchslimError

#: task -> the ``transformers`` auto class that loads it
HF_TASKS: dict[str, str] = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "causal-lm": "AutoModelForCausalLM",
    "feature-extraction": "AutoModel",
    "image-classification": "AutoModelForImageClassification",
}
DEFAULT_TASK = "sequence-classification"
#: the tasks whose model outputs class logits (top-1 accuracy is measured)
CLASSIFICATION_TASKS = frozenset({"sequence-classification", "image-classification"})
#: what ``args`` of a Hugging Face model may set (passed to ``from_pretrained``)
HF_ARGS = ("num_labels",)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model", "vocab.json")


@dataclass
class ModelSource:
    """A model and what travels with it from where it came from.

    Attributes:
        model: the ``nn.Module``.
        kind: ``zoo``, ``entry`` or ``hf``.
        name: the recipe's name of the model (``zoo:lenet5``, ``pkg.mod:fn``, ``hf:./dir``).
        path: a Hugging Face model's directory.
        task: a Hugging Face model's task (see :data:`HF_TASKS`).
        tokenizer: the directory's tokenizer (text models), else ``None``.
        processor: the directory's image processor (image models), else ``None``.
        hf_config: the model's ``transformers`` config.
        extra: anything else a source records.
    """

    model: nn.Module
    kind: str
    name: str
    path: Path | None = None
    task: str | None = None
    tokenizer: Any = None
    processor: Any = None
    hf_config: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def classifies(self) -> bool:
        """Whether the model outputs class logits (every zoo/entry-point model is taken to)."""
        return self.task is None or self.task in CLASSIFICATION_TASKS


def hf_dir_problem(path: str) -> str | None:
    """Why ``path`` is not a Hugging Face model directory torchslim loads (``None``: it is).

    It must hold ``config.json`` and safetensors weights (``model.safetensors`` or a
    sharded ``model.safetensors.index.json``); pickled weights are refused.
    """
    p = Path(path)
    try:
        if not p.exists():
            return f"Hugging Face directory {path!r} not found"
        if not p.is_dir():
            return f"{path!r} is not a directory (a Hugging Face model is a directory written by save_pretrained)"
        if not (p / "config.json").is_file():
            return f"Hugging Face directory {path!r} has no config.json"
        if (p / "model.safetensors").is_file() or (p / "model.safetensors.index.json").is_file():
            return None
        pickled = [n for n in ("pytorch_model.bin", "pytorch_model.bin.index.json") if (p / n).exists()]
    except OSError as exc:
        return f"Hugging Face directory {path!r} cannot be read: {exc.strerror or exc}"
    if pickled:
        return (
            f"Hugging Face directory {path!r} holds only pickled weights ({pickled[0]}), which torchslim does not load; "
            "write safetensors with model.save_pretrained(dir, safe_serialization=True)"
        )
    return f"Hugging Face directory {path!r} has no model.safetensors"


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def load_hf_companions(path: str | Path, task: str | None = None) -> tuple[Any, Any, Any]:
    """``(tokenizer, image processor, config)`` of a Hugging Face directory, offline (``None`` where absent).

    Light: no weights are read (what a recipe's data needs before the model is loaded).
    """
    _offline()
    import transformers

    p = Path(path)
    config = transformers.AutoConfig.from_pretrained(str(p), local_files_only=True)
    tokenizer = processor = None
    if any((p / n).exists() for n in _TOKENIZER_FILES):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise TorchslimError(f"cannot load the tokenizer of Hugging Face directory {str(p)!r}: {exc}") from None
    if (p / "preprocessor_config.json").exists() and (task or DEFAULT_TASK) == "image-classification":
        try:
            processor = transformers.AutoImageProcessor.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError, ImportError) as exc:
            raise TorchslimError(f"cannot load the image processor of Hugging Face directory {str(p)!r}: {exc}") from None
    return tokenizer, processor, config


def load_hf(path: str | Path, task: str | None = None, args: dict[str, Any] | None = None) -> ModelSource:
    """Load a Hugging Face model directory offline from safetensors, with its tokenizer or image processor.

    Args:
        path: the directory (``save_pretrained``'s output).
        task: one of :data:`HF_TASKS` (default ``sequence-classification``).
        args: ``from_pretrained`` settings among :data:`HF_ARGS` (``num_labels``: a new head).

    Raises:
        TorchslimError: the directory is not one (see :func:`hf_dir_problem`), the task or an
            argument is unknown, or ``transformers`` cannot load it (its message is kept).
    """
    task = task or DEFAULT_TASK
    if task not in HF_TASKS:
        raise TorchslimError(f"unknown Hugging Face task {task!r}; allowed: {', '.join(HF_TASKS)}")
    problem = hf_dir_problem(str(path))
    if problem is not None:
        raise TorchslimError(problem)
    extra = dict(args or {})
    unknown = sorted(set(extra) - set(HF_ARGS))
    if unknown:
        raise TorchslimError(f"a Hugging Face model takes no args {', '.join(unknown)}; allowed: {', '.join(HF_ARGS)}")
    tokenizer, processor, config = load_hf_companions(path, task)
    import transformers

    auto = getattr(transformers, HF_TASKS[task])
    try:
        model = auto.from_pretrained(str(path), local_files_only=True, use_safetensors=True, **extra)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise TorchslimError(f"cannot load Hugging Face directory {str(path)!r} as {task} ({HF_TASKS[task]}): {exc}") from None
    model.train()
    return ModelSource(
        model, "hf", f"hf:{path}", Path(path), task, tokenizer=tokenizer, processor=processor, hf_config=model.config
    )
