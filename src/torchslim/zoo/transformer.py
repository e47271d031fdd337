"""A small pre-LN transformer encoder classifier for images, written explicitly.

Attention uses separate ``q_proj``/``k_proj``/``v_proj``/``out_proj`` linears and
reads its head count at forward time as ``q_proj.out_features // head_dim``, so
attention heads can be removed by slicing those linears (rows of q/k/v, columns of
out_proj) with no other change.

Example:
    >>> model = transformer_encoder(in_channels=1, num_classes=10, image_size=28, patch_size=7)
    >>> model(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from torchslim.errors import TorchslimError
from torchslim.zoo.registry import MODELS


class Attention(nn.Module):
    """Multi-head self-attention with explicit projections; heads = ``q_proj.out_features // head_dim``."""

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None) -> None:
        super().__init__()
        head_dim = head_dim or dim // num_heads
        if head_dim < 1:
            raise TorchslimError(f"attention head_dim must be >= 1 (dim {dim}, num_heads {num_heads})")
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    @property
    def num_heads(self) -> int:
        """Heads currently present (follows the size of ``q_proj``)."""
        return self.q_proj.out_features // self.head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h, d = self.q_proj.out_features // self.head_dim, self.head_dim
        q = self.q_proj(x).reshape(b, n, h, d).transpose(1, 2)
        k = self.k_proj(x).reshape(b, n, h, d).transpose(1, 2)
        v = self.v_proj(x).reshape(b, n, h, d).transpose(1, 2)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * (d**-0.5), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, h * d)
        return self.out_proj(out)


class MLP(nn.Module):
    """fc1 → GELU → fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderBlock(nn.Module):
    """Pre-LN block: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, head_dim: int | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, max(1, int(round(dim * mlp_ratio))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerEncoder(nn.Module):
    """Patch embedding + learned positions (+ CLS token) → ``blocks`` → LayerNorm → pooled → ``head``."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        patch_size: int = 7,
        dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        head_dim: int | None = None,
        pool: Literal["cls", "mean"] = "cls",
    ) -> None:
        super().__init__()
        if patch_size < 1 or image_size % patch_size:
            raise TorchslimError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
        if head_dim is None and (num_heads < 1 or dim % num_heads):
            raise TorchslimError(f"dim {dim} must be divisible by num_heads {num_heads} (or give head_dim)")
        if pool not in ("cls", "mean"):
            raise TorchslimError(f"pool must be 'cls' or 'mean', got {pool!r}")
        if depth < 0:
            raise TorchslimError(f"depth must be >= 0, got {depth}")
        self.pool = pool
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + (pool == "cls"), dim) * 0.02)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, num_heads, mlp_ratio, head_dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, tokens, dim)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.norm(self.blocks(x + self.pos_embed))
        x = x[:, 0] if self.cls_token is not None else x.mean(dim=1)
        return self.head(x)


@MODELS.register("transformer_encoder")
def transformer_encoder(
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 28,
    patch_size: int = 7,
    dim: int = 64,
    depth: int = 4,
    num_heads: int = 4,
    mlp_ratio: float = 2.0,
    head_dim: int | None = None,
    pool: Literal["cls", "mean"] = "cls",
) -> nn.Module:
    """Small ViT-style encoder classifier (default 28×28 images, 7×7 patches → 16 tokens + CLS).

    Example:
        >>> transformer_encoder(image_size=8, patch_size=4)(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 10])
    """
    return TransformerEncoder(
        in_channels, num_classes, image_size, patch_size, dim, depth, num_heads, mlp_ratio, head_dim, pool
    )
