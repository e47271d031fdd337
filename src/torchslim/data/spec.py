"""How a recipe names its data: :class:`DataSpec` (checked without reading the data).

One source per recipe:

* ``name``: a registered image set (``digits``, ``mnist``, ``fashion-mnist``), a text set
  (``sms-spam``, ``rt-polarity``: tokenized with the model's tokenizer) or an entry point
  ``package.module:function`` (with ``args``) returning a :class:`~torchslim.data.DataBundle`
  or loaders: ``{train, test[, val][, calibration]}`` or a tuple ``(train, test[, calibration])``;
* ``csv`` / ``jsonl``: a file with a ``text`` column and a ``label`` column (defaults
  ``text`` and ``label``), tokenized with the model's tokenizer; the test split is
  ``test`` (a second file) or a seeded ``test_fraction`` of the file;
* ``images``: a folder ``DIR/CLASS/xxx.png`` (read with Pillow), resized to ``image_size``
  and normalised with ``mean``/``std``; a ``test`` folder or a ``test_fraction``;
* ``hf_dataset``: a directory written by ``datasets``' ``save_to_disk`` (needs the
  ``datasets`` package), its ``train``/``test`` splits or a ``test_fraction``.

Text is tokenized to ``max_length`` tokens (default 128, longer texts truncated) with
``padding`` ``longest`` (default: to the longest text of the split) or ``max_length``.

Example:
    >>> DataSpec.parse({"csv": "/no/such.csv"})
    Traceback (most recent call last):
        ...
    torchslim.errors.ConfigError: 1 error(s) in config
      - csv: file '/no/such.csv' not found (got '/no/such.csv')
    >>> DataSpec.parse({"name": "digits", "max_length": 64})
    Traceback (most recent call last):
        ...
    torchslim.errors.ConfigError: 1 error(s) in config
      - max_length: is read by sms-spam, rt-polarity, an entry point, csv, jsonl, hf_dataset; not by data set 'digits' (got 64)
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from torchslim.config import Config
from torchslim.data.core import DATASETS
from torchslim.data.text import TEXT_SETS
from torchslim.zoo.spec import MAX_PATH_CHARS, entry_point_problem, plain_text_problem

MAX_INT = 2**32 - 1
MAX_TOKENS = 8192
#: the seed of the held-out test split of a file or folder (the built-in text sets' own split seed)
SPLIT_SEED = 1234
SOURCES = ("name", "csv", "jsonl", "images", "hf_dataset")
_TEXT_KEYS = ("max_length", "padding")
_FILE_KEYS = ("text", "label")
_IMAGE_KEYS = ("image_size", "mean", "std", "grayscale")
_SPLIT_KEYS = ("test", "test_fraction")


def _path_problem(v: str, *, folder: bool) -> str | None:
    problem = plain_text_problem(v, MAX_PATH_CHARS)
    if problem is not None:
        return f"path {problem}"
    what = "folder" if folder else "file"
    try:
        mode = Path(v).stat().st_mode
    except FileNotFoundError:
        return f"{what} {v!r} not found"
    except OSError as exc:
        return f"{what} {v!r} cannot be read: {exc.strerror or exc}"
    ok = stat.S_ISDIR(mode) if folder else stat.S_ISREG(mode)
    return None if ok else f"{v!r} is not a {'directory' if folder else 'regular file'}"


def _source_of(data: dict[str, Any]) -> str | None:
    """The kind of source of validated fields ``data`` (see :meth:`DataSpec.source`); ``None`` unless exactly one."""
    given = [k for k in SOURCES if data.get(k) is not None]
    if len(given) != 1:
        return None
    if given[0] != "name":
        return given[0]
    name = data["name"]
    return "images-set" if name in DATASETS else "text-set" if name in TEXT_SETS else "entry"


#: the fields each kind of source reads (besides the source itself)
ALLOWED: dict[str, tuple[str, ...]] = {
    "images-set": ("val_size", "jitter"),
    "text-set": ("val_size", *_TEXT_KEYS),
    "entry": ("args", "val_size", "jitter", *_TEXT_KEYS),
    "csv": ("val_size", *_TEXT_KEYS, *_FILE_KEYS, *_SPLIT_KEYS),
    "jsonl": ("val_size", *_TEXT_KEYS, *_FILE_KEYS, *_SPLIT_KEYS),
    "images": ("val_size", "jitter", *_IMAGE_KEYS, *_SPLIT_KEYS),
    "hf_dataset": ("val_size", *_TEXT_KEYS, *_FILE_KEYS, "test_fraction"),
}


class DataSpec(Config):
    """Where the data comes from (one of ``name``, ``csv``, ``jsonl``, ``images``, ``hf_dataset``) and how it is read.

    ``val_size`` samples are held out of the training split for validation (a registered
    image set's own default; 0 for the other sources); ``jitter`` shifts training images by
    up to that many pixels. A field the source does not read is refused, naming the sources
    that read it.
    """

    name: str | None = None
    csv: str | None = None
    jsonl: str | None = None
    images: str | None = None
    hf_dataset: str | None = None
    val_size: int | None = Field(default=None, ge=0, le=MAX_INT)
    jitter: int = Field(default=0, ge=0, le=8)  # training-time random shifts of images, in pixels (0: none)
    args: dict[str, Any] = Field(default_factory=dict)
    text: str | None = Field(default=None, min_length=1, max_length=200)
    label: str | None = Field(default=None, min_length=1, max_length=200)
    test: str | None = None
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    max_length: int = Field(default=128, ge=2, le=MAX_TOKENS)
    padding: Literal["longest", "max_length"] = "longest"
    image_size: int | None = Field(default=None, ge=1, le=4096)
    grayscale: bool = False
    mean: list[float] | None = Field(default=None, min_length=1, max_length=4)
    std: list[float] | None = Field(default=None, min_length=1, max_length=4)

    #: fields added after the first release: left out of :meth:`to_data` while at their defaults
    LATER_FIELDS: ClassVar[tuple[str, ...]] = (
        "args", "csv", "jsonl", "images", "hf_dataset", "text", "label", "test", "test_fraction", "max_length", "padding",
        "image_size", "grayscale", "mean", "std",
    )

    @field_validator(
        "val_size", "jitter", "args", "text", "label", "test", "test_fraction", "max_length", "padding", "image_size",
        "grayscale", "mean", "std",
    )
    @classmethod
    def _read_by_source(cls, v: Any, info: ValidationInfo) -> Any:
        source, key = _source_of(info.data), str(info.field_name)
        if source is None or key in ALLOWED[source]:
            return v
        kinds = [k for k, keys in ALLOWED.items() if key in keys]
        names = {"images-set": "digits, mnist, fashion-mnist", "text-set": "sms-spam, rt-polarity", "entry": "an entry point"}
        readers = ", ".join(names.get(k, k) for k in kinds)
        what = f"data set {info.data['name']!r}" if source in ("images-set", "text-set") else f"a {source} source"
        if source == "entry":
            what = f"entry point {info.data['name']!r}"
        raise ValueError(f"is read by {readers}; not by {what}")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str | None) -> str | None:
        if v is None or v in DATASETS or v in TEXT_SETS:
            return v
        if ":" not in v:
            known = ", ".join([*DATASETS.names(), *TEXT_SETS.names()])
            raise ValueError(f"unknown data set {v!r}; registered: {known}; or an entry point 'package.module:function'")
        problem = entry_point_problem(v)
        if problem is not None:
            raise ValueError(problem.replace("not a model builder", "not a data source").replace("torchslim's models as 'zoo:NAME'", "torchslim's data sets by name"))
        return v

    @field_validator("csv", "jsonl", "test")
    @classmethod
    def _check_file(cls, v: str | None, info: ValidationInfo) -> str | None:
        folder = info.field_name == "test" and info.data.get("images") is not None
        if v is not None:
            problem = _path_problem(v, folder=folder)
            if problem is not None:
                raise ValueError(problem)
        return v

    @field_validator("images", "hf_dataset")
    @classmethod
    def _check_folder(cls, v: str | None) -> str | None:
        if v is not None:
            problem = _path_problem(v, folder=True)
            if problem is not None:
                raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        given = [k for k in SOURCES if getattr(self, k) is not None]
        if len(given) != 1:
            what = "none" if not given else ", ".join(given)
            raise ValueError(f"give exactly one data source of {', '.join(SOURCES)} (got {what})")
        return self

    def source(self) -> str:
        """The kind of source: ``images-set`` (a registered image set), ``text-set``, ``entry``, ``csv``, ``jsonl``,
        ``images`` or ``hf_dataset``."""
        if self.name is None:
            return next(k for k in SOURCES[1:] if getattr(self, k) is not None)
        if self.name in DATASETS:
            return "images-set"
        return "text-set" if self.name in TEXT_SETS else "entry"

    @property
    def label_text(self) -> str:
        """How the report names the data (the set's name, the entry point, or the file/folder)."""
        return str(next(getattr(self, k) for k in SOURCES if getattr(self, k) is not None))

    def to_data(self) -> dict[str, Any]:
        """The spec as recipe data; fields added later are left out while at their defaults."""
        defaults = {k: f.get_default(call_default_factory=True) for k, f in type(self).model_fields.items()}
        return self.model_dump(exclude={"version", *(k for k in self.LATER_FIELDS if getattr(self, k) == defaults[k])})
