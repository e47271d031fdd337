"""Core data types: splits, normalisation, the seeded loader and the registry."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from torchslim.errors import TorchslimError
from torchslim.registry import Registry

SPLITS = ("train", "val", "test")

#: ``(x, generator) -> x``: a per-batch input transform (augmentation), see :mod:`torchslim.data.transforms`
BatchTransform = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


class CalibrationSource(Protocol):
    """What :meth:`DataBundle.calibration_loader` reads of a calibration config."""

    @property
    def split(self) -> str: ...

    @property
    def batch_size(self) -> int: ...

    @property
    def seed(self) -> int: ...


@dataclass(frozen=True)
class Normalize:
    """Per-channel affine normalisation ``x' = (x / scale - mean) / std``.

    Raw pixels are divided by ``scale`` (255 for 8-bit images) to land in [0, 1],
    then standardised. MNIST uses mean 0.1307, std 0.3081 (the training-set
    statistics used throughout the literature).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 255.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32) / self.scale
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32).view(shape)
        return (x - mean) / std


@dataclass
class Split:
    """One split of a data set: inputs ``x`` (N, ...) float32 and labels ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


class TensorLoader:
    """Batches of ``(x, y)`` from in-memory tensors.

    Shuffling is seeded: epoch ``e`` of a loader with seed ``s`` always yields
    the same order, whatever happened before (the permutation is drawn from a
    generator seeded with ``s`` and ``e``). Each ``iter()`` advances the epoch
    unless :meth:`set_epoch` is called first. An optional per-batch
    ``transform(x, generator) -> x`` (e.g. :class:`~torchslim.data.transforms.Jitter`)
    is applied to each input batch with a generator seeded by ``seed`` and the epoch.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        transform: BatchTransform | None = None,
    ) -> None:
        if batch_size < 1:
            raise TorchslimError(f"batch_size must be >= 1, got {batch_size}")
        self.split, self.batch_size, self.shuffle = split, batch_size, shuffle
        self.seed, self.drop_last = seed, drop_last
        self.epoch = 0
        self.transform = transform

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch used by the next iteration (for exact resumption)."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.split)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.split)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = None
        aug = None if self.transform is None else torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + 7_919)
        self.epoch += 1
        stop = n - n % self.batch_size if self.drop_last else n
        for start in range(0, stop, self.batch_size):
            if order is None:
                x, y = self.split.x[start : start + self.batch_size], self.split.y[start : start + self.batch_size]
            else:
                idx = order[start : start + self.batch_size]
                x, y = self.split.x[idx], self.split.y[idx]
            yield (x if self.transform is None else self.transform(x, aug)), y


@dataclass
class DataBundle:
    """A data set with train/val/test splits and what a model needs to know of it."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]
    normalize: Normalize | None = None
    #: per-batch augmentation applied to shuffled ``train`` loaders only (what training uses)
    train_transform: BatchTransform | None = None

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise TorchslimError(f"unknown split {name!r}; allowed: {', '.join(SPLITS)}")
        return getattr(self, name)

    def loader(
        self, split: str, batch_size: int = 128, *, shuffle: bool = False, seed: int = 0, drop_last: bool = False
    ) -> TensorLoader:
        """A :class:`TensorLoader` over one split (``train``, ``val`` or ``test``).

        A shuffled ``train`` loader applies :attr:`train_transform` (augmentation) when set.
        """
        transform = self.train_transform if split == "train" and shuffle else None
        return TensorLoader(self.split(split), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, transform=transform)

    def calibration_loader(self, cal: CalibrationSource) -> TensorLoader:
        """The shuffled, seeded batches a :class:`~torchslim.config.CalibrationConfig` names.

        Example:
            >>> from torchslim.config import CalibrationConfig
            >>> loader = ts.load_data("digits").calibration_loader(CalibrationConfig(batch_size=16, seed=3))
            >>> next(iter(loader))[0].shape
            torch.Size([16, 1, 8, 8])
        """
        return self.loader(cal.split, cal.batch_size, shuffle=True, seed=cal.seed)

    def example_input(self) -> torch.Tensor:
        """One test sample with a batch dimension, for MACs and latency."""
        return self.test.x[:1].clone()


DataFactory = Callable[..., DataBundle]
DATASETS: Registry[DataFactory] = Registry("data set")


def cache_dir() -> Path:
    """Where converted data is cached: ``$TORCHSLIM_CACHE`` or ``~/.cache/torchslim``."""
    root = os.environ.get("TORCHSLIM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torchslim"
    )
    return Path(root)


def load_data(name: str, *, val_size: int | None = None, seed: int = 0) -> DataBundle:
    """Load a registered data set by name.

    Args:
        name: a registered name (``mnist``, ``fashion-mnist``, ``digits``...).
        val_size: samples held out of the training split for validation
            (default: the data set's own default, e.g. 5000 for MNIST).
        seed: seed of the validation hold-out draw.

    Example:
        >>> data = load_data("mnist")
        >>> len(data.train), len(data.val), len(data.test)
        (55000, 5000, 10000)
    """
    factory = DATASETS.get(name)
    return factory(val_size=val_size, seed=seed)


def holdout(x: torch.Tensor, y: torch.Tensor, val_size: int, seed: int) -> tuple[Split, Split]:
    """Split ``(x, y)`` into train and a seeded random validation hold-out of ``val_size``."""
    n = int(y.shape[0])
    if not 0 <= val_size < n:
        raise TorchslimError(f"val_size must be in [0, {n}), got {val_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:val_size].sort().values, order[val_size:].sort().values
    return Split(x[train_idx], y[train_idx]), Split(x[val_idx], y[val_idx])
