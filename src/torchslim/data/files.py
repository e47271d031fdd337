"""Reading a recipe's own files: CSV/JSONL tables of text and labels, and image folders ``DIR/CLASS/xxx.png``.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
    >>> _ = path.write_text("text,label\\nhello,1\\nbye,0\\n")
    >>> read_table(path, "csv", "text", "label")
    (['hello', 'bye'], ['1', '0'])
"""

from __future__ import annotations

import csv
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchslim.errors import DataNotFoundError, TorchslimError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _columns_problem(path: Path, row: int, found: Sequence[str], wanted: Sequence[str]) -> str | None:
    missing = [c for c in wanted if c not in found]
    if not missing:
        return None
    return f"{path}: row {row} has no column {missing[0]!r}; its columns: {', '.join(map(str, found)) or '(none)'} (set data 'text'/'label')"


def read_table(path: Path, kind: str, text: str, label: str) -> tuple[list[str], list[Any]]:
    """``(texts, labels)`` of a CSV file (a header row) or a JSONL file (one JSON object per line).

    Raises:
        TorchslimError: the file cannot be read, a row lacks a column (named, with the
            columns it has), a text is not a string, or the file holds no row.
    """
    texts: list[str] = []
    labels: list[Any] = []
    try:
        with path.open(encoding="utf-8", newline="") as f:
            rows: Any = csv.DictReader(f) if kind == "csv" else (line for line in f if line.strip())
            for i, row in enumerate(rows, start=1):
                if kind == "jsonl":
                    try:
                        row = json.loads(row)
                    except json.JSONDecodeError as exc:
                        raise TorchslimError(f"{path}: line {i} is not JSON: {exc}") from None
                    if not isinstance(row, dict):
                        raise TorchslimError(f"{path}: line {i} is a {type(row).__name__}, not a JSON object")
                problem = _columns_problem(path, i, list(row), (text, label))
                if problem is not None:
                    raise TorchslimError(problem)
                if not isinstance(row[text], str):
                    raise TorchslimError(f"{path}: row {i}: column {text!r} must be text, got {type(row[text]).__name__}")
                texts.append(row[text])
                labels.append(row[label])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TorchslimError(f"cannot read {kind} file {path}: {exc}") from None
    if not texts:
        raise TorchslimError(f"{kind} file {path} holds no row")
    return texts, labels


def _pil() -> Any:
    if importlib.util.find_spec("PIL") is None:
        raise DataNotFoundError("data: {images: DIR} reads images with Pillow, which is not installed (pip install pillow)")
    from PIL import Image

    return Image


def read_image_folder(
    root: Path, size: int | tuple[int, ...] | None, *, grayscale: bool = False, classes: Sequence[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``(images uint8 (N, C, H, W), labels, classes)`` of ``root/CLASS/xxx.png`` (classes: sorted folder names).

    ``size``: resize every image to ``size x size`` (or ``(H, W)``); ``None``: every image must
    have the size of the first. ``classes``: the class list to use (a test folder's must be among them).

    Raises:
        TorchslimError: no class folder or no image, an unreadable image, sizes that differ
            (without ``size``), or a test class that training does not have.
    """
    image_mod = _pil()
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise TorchslimError(f"image folder {root} has no class folder (expected {root}/CLASS/xxx.png)")
    names = list(classes) if classes is not None else found
    extra = [c for c in found if c not in names]
    if extra:
        raise TorchslimError(f"image folder {root} has class {extra[0]!r}, which the training folder does not; classes: {', '.join(names)}")
    target = (size, size) if isinstance(size, int) else tuple(size) if size is not None else None
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        for file in sorted((root / name).iterdir()) if (root / name).is_dir() else []:
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with image_mod.open(file) as img:
                    img = img.convert("L" if grayscale else "RGB")
                    if target is not None:
                        img = img.resize((target[1], target[0]))
                    arr = np.asarray(img, dtype=np.uint8)
            except (OSError, ValueError) as exc:
                raise TorchslimError(f"cannot read image {file}: {exc}") from None
            arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            if arrays and arr.shape != arrays[0].shape:
                raise TorchslimError(
                    f"image {file} is {arr.shape[2]}x{arr.shape[1]}, the first image {arrays[0].shape[2]}x{arrays[0].shape[1]}: "
                    "set data 'image_size' to resize every image"
                )
            arrays.append(arr)
            labels.append(label)
    if not arrays:
        raise TorchslimError(f"image folder {root} holds no image ({', '.join(IMAGE_SUFFIXES)}) under its class folders")
    return torch.from_numpy(np.stack(arrays)), torch.tensor(labels, dtype=torch.long), names
