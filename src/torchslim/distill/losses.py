"""Distillation losses: soft targets, feature hints, attention transfer, embeddings.

All functions are pure: tensors in, a scalar loss out. The teacher's tensors
should come from a forward under ``no_grad`` (the trainer does this).

Example:
    >>> s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    >>> loss = hinton_loss(s, t, y, temperature=4.0, alpha=0.9)
    >>> loss.shape, loss.requires_grad
    (torch.Size([]), False)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.errors import TorchslimError

FeatureLoss = Literal["mse", "cosine", "attention"]
EmbeddingLoss = Literal["cosine", "mse"]


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015) soft-target loss: ``KL(p_teacher^T || p_student^T) · T²``, mean over the batch.

    ``p^T = softmax(logits / T)``; the ``T²`` factor keeps the gradient scale of
    the soft term independent of the temperature.

    Example:
        >>> soft_target_loss(torch.zeros(1, 2), torch.zeros(1, 2), 2.0)
        tensor(0.)
    """
    if student_logits.shape != teacher_logits.shape:
        raise TorchslimError(f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ in shape")
    if temperature <= 0:
        raise TorchslimError(f"temperature must be > 0, got {temperature}")
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    return kl.mean() * (t * t)


def hinton_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    """``alpha · soft_target_loss + (1 − alpha) · cross_entropy(student, labels)``.

    Example:
        >>> hinton_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1]), 2.0, 1.0)
        tensor(0.)
    """
    if not 0.0 <= alpha <= 1.0:
        raise TorchslimError(f"alpha must be in [0, 1], got {alpha}")
    loss = student_logits.new_zeros(())
    if alpha > 0:
        loss = loss + alpha * soft_target_loss(student_logits, teacher_logits, temperature)
    if alpha < 1:
        loss = loss + (1 - alpha) * F.cross_entropy(student_logits, labels)
    return loss


def feature_loss(student: torch.Tensor, teacher: torch.Tensor, kind: Literal["mse", "cosine"] = "mse") -> torch.Tensor:
    """Hint loss between two feature tensors of the same shape (after the adapter).

    ``mse``: mean squared error; ``cosine``: mean over samples of ``1 − cos``
    between the flattened per-sample features.

    Example:
        >>> x = torch.randn(4, 16)
        >>> float(feature_loss(x, x, "cosine")) < 1e-6
        True
    """
    if student.shape != teacher.shape:
        raise TorchslimError(f"hint features differ in shape: student {tuple(student.shape)}, teacher {tuple(teacher.shape)}")
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind == "cosine":
        return (1 - F.cosine_similarity(student.flatten(1), teacher.flatten(1), dim=1, eps=1e-8)).mean()
    raise TorchslimError(f"unknown feature loss {kind!r}; allowed: mse, cosine")


def attention_map(features: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Zagoruyko & Komodakis (2017) spatial attention: ``normalize(mean_c |F|^p)``, flattened to ``(N, H·W)``.

    Example:
        >>> attention_map(torch.randn(2, 8, 4, 4)).shape
        torch.Size([2, 16])
    """
    if features.dim() != 4:
        raise TorchslimError(f"attention transfer needs conv feature maps (N, C, H, W), got shape {tuple(features.shape)}")
    return F.normalize(features.abs().pow(p).mean(1).flatten(1), dim=1)


def attention_transfer_loss(student: torch.Tensor, teacher: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Attention transfer: mean squared difference of the normalised attention maps.

    Channel counts may differ (maps are averaged over channels); when the
    spatial sizes differ the larger map is average-pooled to the smaller one.

    Example:
        >>> x = torch.randn(2, 8, 4, 4)
        >>> float(attention_transfer_loss(x, torch.cat([x, x], 1))) < 1e-12   # same map, twice the channels
        True
    """
    if student.dim() != 4 or teacher.dim() != 4:
        raise TorchslimError(
            f"attention transfer needs conv feature maps (N, C, H, W): student {tuple(student.shape)}, teacher {tuple(teacher.shape)}"
        )
    hs, ws = student.shape[-2:]
    ht, wt = teacher.shape[-2:]
    if (hs, ws) != (ht, wt):
        size = (min(hs, ht), min(ws, wt))
        student = F.adaptive_avg_pool2d(student, size) if (hs, ws) != size else student
        teacher = F.adaptive_avg_pool2d(teacher, size) if (ht, wt) != size else teacher
    return (attention_map(student, p) - attention_map(teacher, p)).pow(2).mean()


def pooled(output: Any) -> torch.Tensor:
    """A ``(N, D)`` embedding from an encoder output.

    A 2-D tensor is returned as is; a 3-D ``(N, L, D)`` tensor or an object with
    ``last_hidden_state`` is averaged over its tokens (unmasked: wrap Hugging
    Face encoders in :class:`torchslim.zoo.minilm.SentenceEncoder` for masked
    mean pooling).

    Example:
        >>> pooled(torch.ones(2, 5, 3)).shape
        torch.Size([2, 3])
    """
    if isinstance(output, torch.Tensor):
        x = output
    elif isinstance(getattr(output, "last_hidden_state", None), torch.Tensor):
        x = output.last_hidden_state
    elif isinstance(output, Mapping) and isinstance(output.get("last_hidden_state"), torch.Tensor):
        x = output["last_hidden_state"]
    elif isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        x = output[0]
    else:
        raise TorchslimError(f"cannot find an embedding in a model output of type {type(output).__name__}")
    if x.dim() == 3:
        return x.mean(1)
    if x.dim() != 2:
        raise TorchslimError(f"an embedding must be (N, D) or (N, L, D), got shape {tuple(x.shape)}")
    return x


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor, kind: EmbeddingLoss = "cosine") -> torch.Tensor:
    """Loss between pooled ``(N, D)`` embeddings: ``cosine`` (mean ``1 − cos``) or ``mse``.

    Example:
        >>> e = torch.randn(4, 384)
        >>> float(embedding_loss(e, 2 * e, "cosine")) < 1e-6
        True
    """
    if student.shape != teacher.shape:
        raise TorchslimError(f"student embeddings {tuple(student.shape)} and teacher embeddings {tuple(teacher.shape)} differ in shape")
    if kind == "cosine":
        return (1 - F.cosine_similarity(student, teacher, dim=-1, eps=1e-8)).mean()
    if kind == "mse":
        return F.mse_loss(student, teacher)
    raise TorchslimError(f"unknown embedding loss {kind!r}; allowed: cosine, mse")


def make_adapter(
    student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], kind: Literal["auto", "linear", "conv1x1", "none"] = "auto"
) -> nn.Module | None:
    """The learned map from student features to the teacher's width, or ``None`` when shapes already match.

    ``auto`` picks a 1×1 convolution for conv maps ``(N, C, H, W)`` whose
    channels differ and a linear layer on the last dimension otherwise.

    Raises:
        TorchslimError: the shapes cannot be matched by such an adapter.

    Example:
        >>> make_adapter((2, 8, 4, 4), (2, 16, 4, 4))
        Conv2d(8, 16, kernel_size=(1, 1), stride=(1, 1), bias=False)
    """
    s, t = tuple(student_shape), tuple(teacher_shape)
    if kind == "none" or (kind == "auto" and s == t):
        if s != t:
            raise TorchslimError(f"features differ in shape (student {s}, teacher {t}) and adapter is 'none'")
        return None
    conv_ok = len(s) == 4 and len(t) == 4 and s[0] == t[0] and s[2:] == t[2:]
    linear_ok = len(s) == len(t) and len(s) >= 2 and s[:-1] == t[:-1]
    if kind == "conv1x1" or (kind == "auto" and conv_ok):
        if not conv_ok:
            raise TorchslimError(f"a 1x1 conv adapter needs conv maps with equal spatial size: student {s}, teacher {t}")
        return nn.Conv2d(s[1], t[1], 1, bias=False)
    if not linear_ok:
        raise TorchslimError(f"no linear adapter maps student features {s} to teacher features {t} (only the last dimension may differ)")
    return nn.Linear(s[-1], t[-1], bias=False)
