"""Parameter counts and storage sizes (dense, sparse, on disk).

Counts are over ``nn.Parameter`` elements only; buffers (BatchNorm statistics,
pruning masks) are not parameters. When a parameter is pruned the
``torch.nn.utils.prune`` way (a ``weight_orig`` parameter and a ``weight_mask``
buffer) or through ``torch.nn.utils.parametrize``, the *effective* tensor (the one
the forward uses) is what non-zeros and sparse bytes are counted on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from torchslim.errors import TorchslimError

#: Tensors up to this many elements index their non-zeros with 2-byte offsets.
SMALL_TENSOR_NUMEL = 65536


def effective_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter, torch.Tensor]]:
    """Yield ``(qualified name, parameter, effective tensor)`` for each parameter once.

    The effective tensor is the parameter itself, except for a parameter pruned with
    ``torch.nn.utils.prune`` (``<name>_orig`` with a ``<name>_mask`` buffer) or
    parametrised with ``torch.nn.utils.parametrize`` (``parametrizations.<name>.original``),
    where it is the tensor the module's forward actually uses.

    Example:
        >>> [n for n, _, _ in effective_parameters(nn.Linear(2, 3))]
        ['weight', 'bias']
    """
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        for p_name, param in module.named_parameters(recurse=False):
            if param is None or id(param) in seen:
                continue
            seen.add(id(param))
            qual = f"{mod_name}.{p_name}" if mod_name else p_name
            yield qual, param, _effective(model, mod_name, module, p_name, param)


def _effective(model: nn.Module, mod_name: str, module: nn.Module, p_name: str, param: nn.Parameter) -> torch.Tensor:
    if p_name.endswith("_orig"):
        base = p_name[: -len("_orig")]
        if f"{base}_mask" in dict(module.named_buffers(recurse=False)):
            value = getattr(module, base, None)
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                return value.detach()
    # torch.nn.utils.parametrize: <owner>.parametrizations.<name>.original
    parts = mod_name.split(".") if mod_name else []
    if p_name == "original" and len(parts) >= 2 and parts[-2] == "parametrizations":
        owner_name = ".".join(parts[:-2])
        owner = model.get_submodule(owner_name) if owner_name else model
        value = getattr(owner, parts[-1], None)
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            return value.detach()
    return param.detach()


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once, buffers excluded).

    Example:
        >>> count_params(nn.Linear(784, 300))
        235500
    """
    return sum(p.numel() for _, p, _ in effective_parameters(model))


def count_nonzeros(model: nn.Module) -> int:
    """Number of parameter elements that are not zero (masks applied, see module doc).

    Example:
        >>> layer = nn.Linear(4, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = layer.weight.zero_()
        >>> count_nonzeros(layer)
        0
    """
    return sum(int(torch.count_nonzero(t)) for _, _, t in effective_parameters(model))


def dense_bytes(model: nn.Module) -> int:
    """Bytes of every parameter stored dense at its dtype (fp32: 4 bytes per element).

    Example:
        >>> dense_bytes(nn.Linear(784, 300))
        942000
    """
    return sum(p.numel() * p.element_size() for _, p, _ in effective_parameters(model))


def tensor_sparse_bytes(t: torch.Tensor) -> int:
    """Bytes to store ``t`` sparse: ``min(dense, nnz * itemsize + index_bytes)``.

    ``index_bytes = min(ceil(numel / 8), nnz * index_width)``: a presence bitmap or a
    list of element offsets, whichever is smaller, with ``index_width = 2`` bytes
    when ``numel <= 65536`` and 4 otherwise. A tensor with few zeros is stored dense.

    Example:
        >>> t = torch.zeros(100); t[:3] = 1.0
        >>> tensor_sparse_bytes(t)  # 3 values * 4 B + min(13 B bitmap, 3 * 2 B offsets)
        18
    """
    numel = t.numel()
    item = t.element_size()
    dense = numel * item
    nnz = int(torch.count_nonzero(t.detach()))
    index_width = 2 if numel <= SMALL_TENSOR_NUMEL else 4
    index_bytes = min(math.ceil(numel / 8), nnz * index_width)
    return min(dense, nnz * item + index_bytes)


def sparse_bytes(model: nn.Module) -> int:
    """Sum of :func:`tensor_sparse_bytes` over every (effective) parameter.

    Example:
        >>> sparse_bytes(nn.Linear(784, 300)) <= dense_bytes(nn.Linear(784, 300))
        True
    """
    total = 0
    for _, p, eff in effective_parameters(model):
        # size the stored values at the parameter's dtype
        total += tensor_sparse_bytes(eff.to(p.dtype) if eff.dtype != p.dtype else eff)
    return total


def file_bytes(path: str | os.PathLike[str]) -> int:
    """Size of a file in bytes (a directory: the sum of the files under it).

    Raises:
        TorchslimError: ``path`` does not exist.

    Example:
        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> _ = Path(tmp.name, "model.tslim").write_bytes(bytes(100))
        >>> _ = Path(tmp.name, "model.json").write_bytes(bytes(20))
        >>> file_bytes(f"{tmp.name}/model.tslim"), file_bytes(tmp.name)
        (100, 120)
        >>> tmp.cleanup()
    """
    p = Path(path)
    if not p.exists():
        raise TorchslimError(f"cannot measure the size of {str(p)!r}: no such file or directory")
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size
