"""Build a recipe's :class:`~torchslim.data.DataBundle` from its :class:`~torchslim.data.spec.DataSpec`.

Text (``sms-spam``, ``rt-polarity``, CSV/JSONL files, a ``datasets`` directory with a
text column) is tokenized with the model's tokenizer into :class:`~torchslim.data.core.Features`
(``input_ids``, ``attention_mask``...): every split at once, truncated to ``max_length``
tokens and padded to the split's longest text (``padding: longest``) or to
``max_length``. Labels that are all integers are used as they are; other labels are
mapped through the model's ``label2id`` when it names them all, else to their sorted order.

Example:
    >>> from torchslim.data.spec import DataSpec
    >>> load_source(DataSpec(name="digits")).input_shape
    (1, 8, 8)
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch

from torchslim.data.core import DataBundle, Features, LoaderSplit, Normalize, Split, holdout, load_data
from torchslim.data.files import read_image_folder, read_table
from torchslim.data.spec import SPLIT_SEED, DataSpec
from torchslim.data.text import load_text
from torchslim.data.transforms import Jitter
from torchslim.errors import DataNotFoundError, TorchslimError
from torchslim.zoo.spec import bind_args, load_entry_point


def tokenize_texts(tokenizer: Any, texts: Sequence[str], max_length: int = 128, padding: str = "longest") -> Features:
    """Tokenize ``texts`` with a Hugging Face tokenizer into :class:`Features` (int64 tensors, one row per text)."""
    if not texts:
        return Features({"input_ids": torch.zeros(0, 1, dtype=torch.long), "attention_mask": torch.zeros(0, 1, dtype=torch.long)})
    enc = tokenizer(list(texts), padding=padding, truncation=True, max_length=max_length, return_tensors="pt")
    return Features({k: v.long() for k, v in enc.items() if isinstance(v, torch.Tensor)})


def label_ids(values: Sequence[Any], label2id: Mapping[str, int] | None = None) -> tuple[list[int], tuple[str, ...] | None]:
    """Integer labels of ``values`` and the class names when they were names (see the module docstring).

    Example:
        >>> label_ids(["spam", "ham", "spam"])
        ([1, 0, 1], ('ham', 'spam'))
        >>> label_ids(["1", 0])
        ([1, 0], None)
    """
    ints = []
    for v in values:
        if isinstance(v, bool):
            break
        if isinstance(v, int) or (isinstance(v, str) and v.strip().lstrip("-").isdigit()):
            ints.append(int(v))
        else:
            break
    else:
        if any(i < 0 for i in ints):
            raise TorchslimError(f"labels must be 0 or more; found {min(ints)}")
        return ints, None
    names = [str(v) for v in values]
    if label2id and all(n in label2id for n in names):
        ordered = sorted(label2id, key=lambda n: label2id[n])
        return [int(label2id[n]) for n in names], tuple(ordered)
    classes = tuple(sorted(set(names)))
    index = {n: i for i, n in enumerate(classes)}
    return [index[n] for n in names], classes


def _seeded_split(n: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train indices, test indices)``: a seeded ``fraction`` of ``n`` held out (at least one each side)."""
    if n < 2:
        raise TorchslimError(f"cannot hold out a test split of a source with {n} sample(s); give a 'test' file")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    k = min(n - 1, max(1, round(n * fraction)))
    return order[k:], order[:k]


def _need_tokenizer(tokenizer: Any, what: str) -> None:
    if tokenizer is None:
        raise TorchslimError(
            f"data {what} is text: it is tokenized with the model's tokenizer, and the model carries none; "
            "name a Hugging Face directory holding a tokenizer (model: {hf: DIR}), or give a data entry point "
            "that returns tokenized batches"
        )


def text_bundle(
    name: str, train: tuple[list[str], list[int]], test: tuple[list[str], list[int]], spec: DataSpec, tokenizer: Any,
    classes: tuple[str, ...] | None, seed: int,
) -> DataBundle:
    """A bundle of tokenized texts: ``train`` and ``test`` are ``(texts, labels)``; ``val_size`` held out of train."""
    _need_tokenizer(tokenizer, repr(name))
    x_tr = tokenize_texts(tokenizer, train[0], spec.max_length, spec.padding)
    x_te = tokenize_texts(tokenizer, test[0], spec.max_length, spec.padding)
    y_tr, y_te = torch.tensor(train[1], dtype=torch.long), torch.tensor(test[1], dtype=torch.long)
    tr, val = holdout(cast(torch.Tensor, x_tr), y_tr, spec.val_size or 0, seed)
    labels = train[1] + test[1]
    num_classes = max(len(classes or ()), max(labels, default=0) + 1)
    shape = tuple(int(s) for s in x_te["input_ids"].shape[1:])
    return DataBundle(name, tr, val, Split(cast(torch.Tensor, x_te), y_te), num_classes, shape, classes=classes)


def _table_bundle(spec: DataSpec, tokenizer: Any, label2id: Mapping[str, int] | None, seed: int) -> DataBundle:
    kind = "csv" if spec.csv is not None else "jsonl"
    path = Path(cast(str, spec.csv or spec.jsonl))
    text_col, label_col = spec.text or "text", spec.label or "label"
    texts, raw = read_table(path, kind, text_col, label_col)
    if spec.test is not None:
        test_texts, test_raw = read_table(Path(spec.test), kind, text_col, label_col)
        ids, classes = label_ids([*raw, *test_raw], label2id)
        train, test = (texts, ids[: len(raw)]), (test_texts, ids[len(raw) :])
    else:
        ids, classes = label_ids(raw, label2id)
        tr, te = _seeded_split(len(texts), spec.test_fraction)
        train = ([texts[i] for i in tr.tolist()], [ids[i] for i in tr.tolist()])
        test = ([texts[i] for i in te.tolist()], [ids[i] for i in te.tolist()])
    return text_bundle(path.name, train, test, spec, tokenizer, classes, seed)


def _image_bundle(spec: DataSpec, processor: Any, seed: int) -> DataBundle:
    root = Path(cast(str, spec.images))
    size = spec.image_size or _processor_size(processor)
    x, y, classes = read_image_folder(root, size, grayscale=spec.grayscale)
    channels = int(x.shape[1])
    mean = spec.mean or list(getattr(processor, "image_mean", None) or [0.5] * channels)
    std = spec.std or list(getattr(processor, "image_std", None) or [0.5] * channels)
    if len(mean) != channels or len(std) != channels:
        raise TorchslimError(f"data mean/std: give {channels} value(s), one per channel (got {len(mean)} and {len(std)})")
    norm = Normalize(tuple(float(m) for m in mean), tuple(float(s) for s in std))
    if spec.test is not None:
        x_te, y_te, _ = read_image_folder(Path(spec.test), size or tuple(x.shape[2:]), grayscale=spec.grayscale, classes=classes)
    else:
        tr, te = _seeded_split(len(y), spec.test_fraction)
        x, x_te, y, y_te = x[tr], x[te], y[tr], y[te]
    train, val = holdout(norm(x).contiguous(), y, spec.val_size or 0, seed)
    bundle = DataBundle(root.name, train, val, Split(norm(x_te).contiguous(), y_te), len(classes), tuple(x_te.shape[1:]), norm)
    bundle.classes = tuple(classes)
    return bundle


def _processor_size(processor: Any) -> int | tuple[int, int] | None:
    size = getattr(processor, "size", None)
    if isinstance(size, Mapping) and "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    if isinstance(size, Mapping) and "shortest_edge" in size:
        return int(size["shortest_edge"])
    return None


def _hf_dataset_bundle(spec: DataSpec, tokenizer: Any, label2id: Mapping[str, int] | None, seed: int) -> DataBundle:
    if importlib.util.find_spec("datasets") is None:
        raise DataNotFoundError("data: {hf_dataset: DIR} needs the 'datasets' package, which is not installed (pip install datasets)")
    import datasets

    loaded = datasets.load_from_disk(str(spec.hf_dataset))
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise TorchslimError(f"data hf_dataset {spec.hf_dataset!r} has no 'train' split; splits: {', '.join(loaded)}")
        test_name = next((s for s in ("test", "validation") if s in loaded), None)
        train_ds = loaded["train"]
        test_ds = loaded[test_name] if test_name else None
    else:
        train_ds, test_ds = loaded, None
    if test_ds is None:
        parts = train_ds.train_test_split(test_size=spec.test_fraction, seed=SPLIT_SEED)
        train_ds, test_ds = parts["train"], parts["test"]
    text_col, label_col = spec.text or "text", spec.label or "label"
    for ds in (train_ds, test_ds):
        missing = [c for c in (text_col, label_col) if c not in ds.column_names]
        if missing:
            raise TorchslimError(f"data hf_dataset {spec.hf_dataset!r} has no column {missing[0]!r}; columns: {', '.join(ds.column_names)}")
    ids, classes = label_ids([*train_ds[label_col], *test_ds[label_col]], label2id)
    n = len(train_ds)
    names = getattr(train_ds.features.get(label_col), "names", None)
    train = (list(train_ds[text_col]), ids[:n])
    test = (list(test_ds[text_col]), ids[n:])
    return text_bundle(Path(str(spec.hf_dataset)).name, train, test, spec, tokenizer, tuple(names) if names else classes, seed)


def _shape_of(inputs: Any) -> tuple[int, ...]:
    if isinstance(inputs, torch.Tensor):
        return tuple(int(s) for s in inputs.shape[1:])
    if isinstance(inputs, Mapping) and inputs:
        first = inputs["input_ids"] if "input_ids" in inputs else next(iter(inputs.values()))
        return _shape_of(first)
    if isinstance(inputs, (tuple, list)) and inputs:
        return _shape_of(inputs[0])
    return ()


def loaders_bundle(name: str, train: Iterable[Any], test: Iterable[Any] | None = None, *, val: Iterable[Any] | None = None,
                   calibration: Iterable[Any] | None = None) -> DataBundle:
    """A bundle served by loaders (any re-iterables of batches, torch ``DataLoader`` s).

    The number of classes is the largest training label plus one (one pass over ``train``);
    the input shape is that of the first test batch (training batch without ``test``).

    Example:
        >>> x, y = torch.randn(10, 4), torch.arange(10) % 3
        >>> data = loaders_bundle("toy", [(x[:5], y[:5]), (x[5:], y[5:])], [(x, y)])
        >>> data.num_classes, data.input_shape, len(data.train)
        (3, (4,), 10)
    """
    splits = {"train": LoaderSplit(train), "test": LoaderSplit(test if test is not None else []), "val": LoaderSplit(val or [])}
    top = -1
    for i, (_, labels) in enumerate(splits["train"].loader):
        if labels is None:
            raise TorchslimError(f"data {name!r}: training batch {i} has no labels; give (inputs, labels) pairs or dicts with 'labels'")
        if labels.numel():
            top = max(top, int(labels.max()))
    if top < 0:
        raise TorchslimError(f"data {name!r}: the training loader yields no sample")
    sample = splits["test"] if test is not None else splits["train"]
    shape = _shape_of(sample.x)
    cal = LoaderSplit(calibration) if calibration is not None else None
    return DataBundle(name, splits["train"], splits["val"], splits["test"], top + 1, shape, calibration=cal)


def _entry_bundle(spec: DataSpec, tokenizer: Any) -> DataBundle:
    name = cast(str, spec.name)
    fn = load_entry_point(name, what="data")
    kwargs = dict(spec.args)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    if "tokenizer" in params and "tokenizer" not in kwargs:
        kwargs["tokenizer"] = tokenizer
    bind_args(fn, name, kwargs, what="data")
    out = fn(**kwargs)
    if isinstance(out, DataBundle):
        return out
    if isinstance(out, Mapping) and "train" in out:
        unknown = sorted(set(out) - {"train", "test", "val", "calibration"})
        if unknown:
            raise TorchslimError(f"data entry point {name!r} returned loaders named {', '.join(map(str, unknown))}; allowed: train, test, val, calibration")
        return loaders_bundle(name, out["train"], out.get("test"), val=out.get("val"), calibration=out.get("calibration"))
    if isinstance(out, (tuple, list)) and 1 <= len(out) <= 3 and not isinstance(out[0], torch.Tensor):
        parts = list(out) + [None] * (3 - len(out))
        return loaders_bundle(name, parts[0], parts[1], calibration=parts[2])
    raise TorchslimError(
        f"data entry point {name!r} returned {type(out).__name__}; it must return a DataBundle, a dict of loaders "
        "{train, test[, val][, calibration]} or a tuple (train, test[, calibration]) of loaders"
    )


def load_source(spec: DataSpec, *, tokenizer: Any = None, processor: Any = None, label2id: Mapping[str, int] | None = None,
                seed: int = 0) -> DataBundle:
    """The data a :class:`DataSpec` names; text tokenized with ``tokenizer``, images sized by ``processor`` when given.

    Raises:
        TorchslimError: the data cannot be read as the spec says (the message names the file, column or folder).
    """
    source = spec.source()
    if source == "images-set":
        data = load_data(cast(str, spec.name), val_size=spec.val_size, seed=seed)
    elif source == "text-set":
        t = load_text(cast(str, spec.name))
        return text_bundle(t.name, (t.train_texts, t.train_labels), (t.test_texts, t.test_labels), spec, tokenizer, t.classes, seed)
    elif source in ("csv", "jsonl"):
        return _table_bundle(spec, tokenizer, label2id, seed)
    elif source == "images":
        data = _image_bundle(spec, processor, seed)
    elif source == "hf_dataset":
        return _hf_dataset_bundle(spec, tokenizer, label2id, seed)
    else:
        data = _entry_bundle(spec, tokenizer)
    if spec.jitter:
        data.train_transform = Jitter(spec.jitter)
    return data


__all__ = ["label_ids", "load_source", "loaders_bundle", "text_bundle", "tokenize_texts"]
