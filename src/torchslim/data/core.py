"""Core data types: splits, normalisation, the seeded loader and the registry."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import torch

from torchslim.data.batches import BatchLoader, move
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


class Features(dict):  # type: ignore[type-arg]
    """Named input tensors with one sample dimension (a tokenizer's output): a dict that indexes like a tensor.

    A name gives that tensor; anything else (a slice, an index tensor) selects samples
    of every tensor, so a :class:`Split` of text holds its inputs as one ``Features``
    and :class:`TensorLoader` batches it as it batches an image tensor. A model is
    called with it as keyword arguments (``model(**features)``).

    Example:
        >>> f = Features(input_ids=torch.arange(6).view(3, 2), attention_mask=torch.ones(3, 2))
        >>> f[1:]["input_ids"].tolist(), f.shape
        ([[2, 3], [4, 5]], torch.Size([3, 2]))
    """

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return dict.__getitem__(self, key)
        return Features({k: v[key] for k, v in self.items()})

    def clone(self) -> Features:
        return Features({k: v.clone() for k, v in self.items()})

    def to(self, *args: Any, **kwargs: Any) -> Features:
        return Features({k: v.to(*args, **kwargs) for k, v in self.items()})

    @property
    def shape(self) -> torch.Size:
        """The shape of the first tensor (``input_ids``: samples x tokens)."""
        return next(iter(self.values())).shape


@dataclass
class Split:
    """One split of a data set: inputs ``x`` (N, ...) float32 (or :class:`Features`) and labels ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


class LoaderSplit(Split):
    """A split served by a loader: any re-iterable of batches (a torch ``DataLoader``, a list...).

    Its batches are what the loader yields (see :mod:`torchslim.data.batches`): batch size
    and shuffling are the loader's own. ``len()`` counts its samples (one pass, once);
    ``x`` and ``y`` are the inputs and labels of its first batch (a sample of the split).

    Example:
        >>> split = LoaderSplit([(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))] * 2)
        >>> len(split), tuple(split.x.shape)
        (8, (4, 3))
    """

    def __init__(self, source: Iterable[Any]) -> None:  # no dataclass fields: x and y are read from the loader
        self.loader = BatchLoader(source)

    def __len__(self) -> int:
        return self.loader.num_samples

    def _first(self) -> tuple[Any, Any]:
        for inputs, labels in self.loader:
            return (Features(inputs) if isinstance(inputs, Mapping) else inputs), labels
        raise TorchslimError("this split's loader yields no batch")

    @property
    def x(self) -> torch.Tensor:
        return cast(torch.Tensor, self._first()[0])

    @x.setter
    def x(self, value: torch.Tensor) -> None:
        raise TorchslimError("a loader split's inputs are its loader's batches; they cannot be set")

    @property
    def y(self) -> torch.Tensor:
        labels = self._first()[1]
        if labels is None:
            raise TorchslimError("this split's batches carry no labels")
        return cast(torch.Tensor, labels)

    @y.setter
    def y(self, value: torch.Tensor) -> None:
        raise TorchslimError("a loader split's labels are its loader's batches; they cannot be set")

    def __repr__(self) -> str:
        return f"LoaderSplit({type(self.loader.source).__name__})"


def first_sample(inputs: Any) -> Any:
    """The first sample of a batch's inputs, batch dimension kept (tensors, dicts and tuples of tensors).

    Example:
        >>> first_sample({"input_ids": torch.zeros(4, 7)})["input_ids"].shape
        torch.Size([1, 7])
    """
    if isinstance(inputs, torch.Tensor):
        return inputs[:1].clone()
    if isinstance(inputs, Mapping):
        return Features({k: first_sample(v) for k, v in inputs.items()})
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(first_sample(v) for v in inputs)
    return inputs


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
    #: where calibration batches and the example input are put (``None``: where they are, the CPU)
    device: torch.device | None = None
    #: a split of its own for calibration (an entry point's ``calibration`` loader); see :meth:`calibration_loader`
    calibration: Split | None = None
    #: class names, indexed by label, when the source has them
    classes: tuple[str, ...] | None = None

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise TorchslimError(f"unknown split {name!r}; allowed: {', '.join(SPLITS)}")
        return cast(Split, getattr(self, name))

    def loader(
        self, split: str, batch_size: int = 128, *, shuffle: bool = False, seed: int = 0, drop_last: bool = False
    ) -> TensorLoader | BatchLoader:
        """A :class:`TensorLoader` over one split (``train``, ``val`` or ``test``).

        A shuffled ``train`` loader applies :attr:`train_transform` (augmentation) when set.
        A split served by a loader (:class:`LoaderSplit`) gives that loader's batches as
        ``(inputs, labels)`` pairs: its own batch size and order (the arguments are not used).
        """
        found = self.split(split)
        if isinstance(found, LoaderSplit):
            return found.loader
        transform = self.train_transform if split == "train" and shuffle else None
        return TensorLoader(found, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, transform=transform)

    def calibration_loader(self, cal: CalibrationSource) -> TensorLoader | BatchLoader:
        """The shuffled, seeded batches a :class:`~torchslim.config.CalibrationConfig` names.

        A bundle with a :attr:`calibration` split draws from it when the config names the
        ``train`` split (the default). With a :attr:`device`, the batches are moved there.

        Example:
            >>> from torchslim.config import CalibrationConfig
            >>> loader = ts.load_data("digits").calibration_loader(CalibrationConfig(batch_size=16, seed=3))
            >>> next(iter(loader))[0].shape
            torch.Size([16, 1, 8, 8])
        """
        if self.calibration is not None and cal.split == "train":
            own = self.calibration
            loader: TensorLoader | BatchLoader = (
                own.loader if isinstance(own, LoaderSplit) else TensorLoader(own, cal.batch_size, shuffle=True, seed=cal.seed)
            )
        else:
            loader = self.loader(cal.split, cal.batch_size, shuffle=True, seed=cal.seed)
        if self.device is not None and self.device.type != "cpu":
            return BatchLoader(loader, device=self.device)
        return loader

    def example_input(self) -> torch.Tensor:
        """One test sample (a training sample when the test split is empty) with a batch dimension, for MACs and latency."""
        split = self.test if isinstance(self.test, LoaderSplit) or len(self.test) else self.train
        x = first_sample(split.x)
        return cast(torch.Tensor, x if self.device is None or self.device.type == "cpu" else move(x, self.device))


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
