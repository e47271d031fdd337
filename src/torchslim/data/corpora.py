"""Public-domain English text for language models: evaluation, calibration and held-out tokens.

Two texts installed by Debian packages, read offline:

* *The Devil's Dictionary* (Ambrose Bierce, 1911), package ``dict-devil``:
  ``/usr/share/dictd/devil.dict.dz``, a dictzip file (gzip-readable), about 384 kB of
  ASCII, about 95 k SmolLM2 tokens. The text is the whole decompressed file, decoded as
  UTF-8, with nothing stripped (its first lines are dictd's ``00-database-*`` headers).
* *The Jargon File* 4.4.7, package ``jargon-text``: ``/usr/share/doc/jargon-text/jargon.txt.gz``
  (the package's ``jargon.html`` is only an index of web links; the text is this file),
  about 1.7 MB of UTF-8, about 407 k SmolLM2 tokens.

Every text is tokenised whole, without special tokens (no BOS), with the model's tokenizer.
The token streams are split without overlap:

* **evaluation**: the first :data:`EVAL_TOKENS` (20,480) tokens of the Devil's Dictionary
  (:func:`evaluation_tokens`);
* **held-out**: the last :data:`HELDOUT_TOKENS` (20,480) tokens of each calibration source,
  for choosing hyper-parameters (:func:`heldout_tokens`), never on the evaluation tokens;
* **calibration**: windows drawn from what is left: the rest of the Devil's Dictionary
  (``devil-rest``) and/or the Jargon File (``jargon``, ``both``) (:func:`calibration_tokens`).
  A window's start is drawn uniformly among every start where a whole window fits inside
  one source's calibration part (windows may overlap each other), with a
  ``torch.Generator`` seeded by ``seed``: the same seed and tokenizer give the same windows.

Example:
    >>> tok = CharTokenizer()
    >>> ev = evaluation_tokens(tok, n=100)
    >>> ev.shape, ev.dtype
    (torch.Size([100]), torch.int64)
    >>> bytes(ev[:10].tolist()).decode()
    '00-databas'
    >>> calib = calibration_tokens(tok, n_sequences=4, seq_len=16, seed=0, source="both")
    >>> calib.shape, torch.equal(calib, calibration_tokens(tok, 4, 16, seed=0, source="both"))
    (torch.Size([4, 16]), True)
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any, Literal

import torch

from torchslim.errors import DataNotFoundError, TorchslimError

__all__ = [
    "CORPORA",
    "EVAL_TOKENS",
    "HELDOUT_TOKENS",
    "CharTokenizer",
    "Corpus",
    "calibration_tokens",
    "corpus_tokens",
    "evaluation_tokens",
    "heldout_tokens",
    "read_corpus",
]

#: tokens of the Devil's Dictionary's start that are the evaluation set
EVAL_TOKENS = 20_480
#: tokens at the end of each calibration source kept out of calibration, for choosing hyper-parameters
HELDOUT_TOKENS = 20_480
#: the largest decompressed text read (both files are far smaller: a cap, not a limit in use)
MAX_TEXT_BYTES = 16 * 2**20
#: the largest compressed file read
MAX_FILE_BYTES = 8 * 2**20

Source = Literal["jargon", "devil-rest", "both"]
SOURCES: dict[str, tuple[str, ...]] = {"jargon": ("jargon",), "devil-rest": ("devil",), "both": ("devil", "jargon")}


class Corpus:
    """One installed text: its name, file, Debian package and title."""

    def __init__(self, name: str, path: str, package: str, title: str) -> None:
        self.name, self.path, self.package, self.title = name, Path(path), package, title

    def __repr__(self) -> str:
        return f"Corpus({self.name!r}, {str(self.path)!r}, package={self.package!r})"


#: the texts by name
CORPORA: dict[str, Corpus] = {
    "devil": Corpus("devil", "/usr/share/dictd/devil.dict.dz", "dict-devil", "The Devil's Dictionary"),
    "jargon": Corpus("jargon", "/usr/share/doc/jargon-text/jargon.txt.gz", "jargon-text", "The Jargon File"),
}


def _corpus(name: str) -> Corpus:
    if name not in CORPORA:
        raise TorchslimError(f"unknown corpus {name!r}; known: {', '.join(CORPORA)}")
    return CORPORA[name]


def _read_gzip(path: Path, what: str) -> bytes:
    """The decompressed bytes of ``path`` (gzip or dictzip), refusing files over the size caps."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise TorchslimError(f"{what}: {path} is {size} bytes; at most {MAX_FILE_BYTES} are read")
    try:
        with gzip.open(path, "rb") as f:
            data = f.read(MAX_TEXT_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise TorchslimError(f"{what}: {path} is not a readable gzip/dictzip file: {exc}") from None
    if len(data) > MAX_TEXT_BYTES:
        raise TorchslimError(f"{what}: {path} decompresses to more than {MAX_TEXT_BYTES} bytes; refused")
    return data


_TEXT_CACHE: dict[str, str] = {}


def read_corpus(name: str) -> str:
    """The whole text of corpus ``name`` (``devil`` or ``jargon``), decoded as UTF-8.

    Raises:
        DataNotFoundError: the file is missing (the message names the Debian package to install).
        TorchslimError: the file is too large, not gzip, or not UTF-8.

    Example:
        >>> read_corpus("devil").splitlines()[3]
        "     The Devil's Dictionary (1881-1906)"
    """
    corpus = _corpus(name)
    if name in _TEXT_CACHE:
        return _TEXT_CACHE[name]
    if not corpus.path.is_file():
        raise DataNotFoundError(
            f"{corpus.title} is not installed: {corpus.path} not found. "
            f"Install the Debian package: sudo apt-get install {corpus.package}"
        )
    data = _read_gzip(corpus.path, corpus.title)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TorchslimError(f"{corpus.title}: {corpus.path} is not UTF-8 text: {exc}") from None
    _TEXT_CACHE[name] = text
    return text


def _tokenizer_key(tokenizer: Any) -> tuple[Any, ...]:
    """What identifies a tokenizer's output for the token cache (its class, files and vocabulary size)."""
    return (type(tokenizer).__qualname__, getattr(tokenizer, "name_or_path", None), len(tokenizer), id(tokenizer))


_TOKEN_CACHE: dict[tuple[Any, ...], torch.Tensor] = {}


def tokenize_text(tokenizer: Any, text: str) -> torch.Tensor:
    """``text`` tokenised whole, without special tokens: a 1-D int64 tensor.

    ``tokenizer`` is a Hugging Face tokenizer (called as ``tokenizer(text,
    add_special_tokens=False)``) or any object with an ``encode(text)`` returning ids.

    Example:
        >>> tokenize_text(CharTokenizer(), "ab").tolist()
        [97, 98]
    """
    if callable(tokenizer) and hasattr(tokenizer, "convert_ids_to_tokens"):
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    elif callable(getattr(tokenizer, "encode", None)):
        ids = tokenizer.encode(text)
    else:
        raise TorchslimError(f"tokenizer {type(tokenizer).__name__} is neither a Hugging Face tokenizer nor has encode(text)")
    return torch.as_tensor(list(ids), dtype=torch.int64)


def corpus_tokens(tokenizer: Any, name: str) -> torch.Tensor:
    """The whole corpus ``name`` tokenised (see :func:`tokenize_text`); cached per tokenizer object.

    Example:
        >>> int(corpus_tokens(CharTokenizer(), "devil").numel()) > 300_000
        True
    """
    key = (name, *_tokenizer_key(tokenizer))
    if key not in _TOKEN_CACHE:
        if len(_TOKEN_CACHE) >= 8:
            _TOKEN_CACHE.clear()
        _TOKEN_CACHE[key] = tokenize_text(tokenizer, read_corpus(name))
    return _TOKEN_CACHE[key].clone()


def evaluation_tokens(tokenizer: Any, n: int = EVAL_TOKENS) -> torch.Tensor:
    """The first ``n`` tokens of the Devil's Dictionary (at most :data:`EVAL_TOKENS`): the evaluation set.

    Example:
        >>> evaluation_tokens(CharTokenizer(), n=5).tolist()
        [48, 48, 45, 100, 97]
    """
    if not 1 <= n <= EVAL_TOKENS:
        raise TorchslimError(f"evaluation tokens n must be in 1..{EVAL_TOKENS} (the evaluation slice), got {n}")
    return corpus_tokens(tokenizer, "devil")[:n].clone()


def _sources(source: str) -> tuple[str, ...]:
    if source not in SOURCES:
        raise TorchslimError(f"calibration source must be one of {', '.join(SOURCES)}, got {source!r}")
    return SOURCES[source]


def _split(tokenizer: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibration part, held-out part) of corpus ``name``'s tokens, the evaluation slice removed."""
    tokens = corpus_tokens(tokenizer, name)
    if name == "devil":
        tokens = tokens[EVAL_TOKENS:]
    if tokens.numel() <= 2 * HELDOUT_TOKENS:
        raise TorchslimError(f"corpus {name!r} has {tokens.numel()} tokens after evaluation; too few to hold out {HELDOUT_TOKENS}")
    return tokens[:-HELDOUT_TOKENS], tokens[-HELDOUT_TOKENS:]


def calibration_tokens(tokenizer: Any, n_sequences: int, seq_len: int, seed: int = 0, source: Source = "jargon") -> torch.Tensor:
    """``n_sequences`` windows of ``seq_len`` tokens from the calibration text: an int64 ``[n_sequences, seq_len]``.

    Args:
        tokenizer: the model's tokenizer (see :func:`tokenize_text`).
        n_sequences: windows to draw (1 to 65,536).
        seq_len: tokens per window (1 to the shortest source's calibration part).
        seed: the draw's seed: the same seed gives the same windows.
        source: ``jargon`` (the Jargon File), ``devil-rest`` (the Devil's Dictionary after
            the evaluation tokens) or ``both``; held-out tokens are never drawn.

    Example:
        >>> a = calibration_tokens(CharTokenizer(), 2, 8, seed=1, source="devil-rest")
        >>> b = calibration_tokens(CharTokenizer(), 2, 8, seed=2, source="devil-rest")
        >>> a.shape, torch.equal(a, b)
        (torch.Size([2, 8]), False)
    """
    if not 1 <= n_sequences <= 65_536:
        raise TorchslimError(f"n_sequences must be in 1..65536, got {n_sequences}")
    parts = [_split(tokenizer, name)[0] for name in _sources(source)]
    shortest = min(p.numel() for p in parts)
    if not 1 <= seq_len <= shortest:
        raise TorchslimError(f"seq_len must be in 1..{shortest} (the calibration text of source {source!r}), got {seq_len}")
    starts = torch.tensor([p.numel() - seq_len + 1 for p in parts])
    offsets = torch.cumsum(starts, 0)
    gen = torch.Generator().manual_seed(int(seed))
    draws = torch.randint(int(offsets[-1]), (n_sequences,), generator=gen)
    out = torch.empty(n_sequences, seq_len, dtype=torch.int64)
    for i, r in enumerate(draws.tolist()):
        k = int(torch.searchsorted(offsets, r, right=True))
        start = r - (int(offsets[k - 1]) if k else 0)
        out[i] = parts[k][start : start + seq_len]
    return out


def heldout_tokens(tokenizer: Any, n: int = HELDOUT_TOKENS, source: Source = "jargon") -> torch.Tensor:
    """The first ``n`` held-out tokens of ``source``: the last :data:`HELDOUT_TOKENS` of each of its texts, joined.

    For choosing hyper-parameters (damping, calibration size, method) without looking at
    the evaluation tokens; no calibration window contains them.

    Example:
        >>> tok = CharTokenizer()
        >>> held = heldout_tokens(tok, n=HELDOUT_TOKENS, source="devil-rest")
        >>> torch.equal(held, corpus_tokens(tok, "devil")[-HELDOUT_TOKENS:])
        True
    """
    parts = [_split(tokenizer, name)[1] for name in _sources(source)]
    total = sum(p.numel() for p in parts)
    if not 1 <= n <= total:
        raise TorchslimError(f"held-out tokens n must be in 1..{total} for source {source!r}, got {n}")
    return torch.cat(parts)[:n].clone()


class CharTokenizer:
    """A byte-level tokenizer (one token per UTF-8 byte, vocabulary 256): for tests and examples.

    Example:
        >>> CharTokenizer().encode("hé")
        [104, 195, 169]
    """

    def __len__(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))
