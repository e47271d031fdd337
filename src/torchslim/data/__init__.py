"""Data registry: named data sets with fixed train/validation/test splits.

Every data set is held in memory as float tensors, normalised by a documented
:class:`Normalize` transform, and served by :class:`TensorLoader`, a fast,
seeded batch iterator.

Example:
    >>> import torchslim as ts
    >>> data = ts.load_data("digits")
    >>> for x, y in data.loader("train", batch_size=64, shuffle=True, seed=0):
    ...     pass
"""

from torchslim.data import sets as _sets  # noqa: F401  (registers the built-in data sets)
from torchslim.data.core import DATASETS, DataBundle, Normalize, Split, TensorLoader, cache_dir, load_data
from torchslim.data.text import TEXT_SETS, TextSplits, load_text
from torchslim.data.transforms import Jitter

__all__ = [
    "DATASETS",
    "TEXT_SETS",
    "DataBundle",
    "Jitter",
    "Normalize",
    "Split",
    "TensorLoader",
    "TextSplits",
    "cache_dir",
    "load_data",
    "load_text",
]
