"""Per-batch data transforms (augmentation) for :class:`~torchslim.data.TensorLoader`.

A transform is a callable ``(x, generator) -> x`` applied to each input batch
of a loader; the generator is seeded from the loader's seed and epoch, so an
augmented epoch is reproducible. :class:`DataBundle` applies its
``train_transform`` to shuffled training loaders only (what the training loop
uses); evaluation and calibration loaders see the clean data.

Example:
    >>> data = ts.load_data("digits")
    >>> data.train_transform = Jitter(1)          # random ±1 pixel shifts while training
    >>> model = ts.create_model("lenet300", in_features=64)
    >>> report = ts.finetune(model, data, {"epochs": 2})
    >>> x, _ = next(iter(data.loader("train", 4, shuffle=True)))
    >>> x.shape                                   # shifted, same size
    torch.Size([4, 1, 8, 8])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from torchslim.errors import TorchslimError


@dataclass(frozen=True)
class Jitter:
    """Shift every image by a random whole number of pixels in ``[-max_shift, max_shift]`` on each axis.

    The image is padded by replicating its border (the background of MNIST-like
    images stays the background) and cropped back to its size, so shapes are
    unchanged. Shifts are drawn independently per sample from the generator.

    Attributes:
        max_shift: largest shift in pixels (2 in Hinton et al. 2015).

    Example:
        >>> x = torch.randn(8, 1, 28, 28)
        >>> Jitter(2)(x, torch.Generator().manual_seed(0)).shape
        torch.Size([8, 1, 28, 28])
    """

    max_shift: int = 2

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dim() != 4:
            raise TorchslimError(f"Jitter expects images (N, C, H, W), got shape {tuple(x.shape)}")
        s = int(self.max_shift)
        if s < 0:
            raise TorchslimError(f"Jitter max_shift must be >= 0, got {s}")
        if s == 0 or x.shape[0] == 0:
            return x
        n, _, h, w = x.shape
        padded = F.pad(x, (s, s, s, s), mode="replicate")
        offsets = torch.randint(0, 2 * s + 1, (n, 2), generator=generator)
        out = torch.empty_like(x)
        code = offsets[:, 0] * (2 * s + 1) + offsets[:, 1]
        for c in code.unique().tolist():
            idx = (code == c).nonzero().flatten()
            dy, dx = divmod(int(c), 2 * s + 1)
            out[idx] = padded[idx, :, dy : dy + h, dx : dx + w]
        return out
