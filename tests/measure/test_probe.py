import numpy as np
import pytest
import torch

from torchslim.data import load_data
from torchslim.errors import TorchslimError
from torchslim.measure import linear_probe
from torchslim.measure.probe import DEFAULT_CS


def _blobs(n=300, d=16, seed=0, shift=1.5):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, d, generator=g)
    x[:, 0] += shift * (2 * y - 1)
    return x, y


def test_probe_on_real_digits_pixels():
    data = load_data("digits")
    tr, te = data.train, data.test
    r = linear_probe(tr.x.flatten(1), tr.y, te.x.flatten(1), te.y)
    assert r.accuracy > 0.93
    assert r.n_train == len(tr) and r.n_test == len(te)
    assert r.c in DEFAULT_CS and not r.at_edge and 0.9 < r.cv_accuracy <= 1.0


def test_deterministic_and_the_test_split_never_picks_the_penalty():
    x, y = _blobs()
    a = linear_probe(x[:200], y[:200], x[200:], y[200:])
    b = linear_probe(x[:200], y[:200], x[200:], y[200:])
    assert a == b
    flipped = linear_probe(x[:200], y[:200], x[200:], 1 - y[200:])
    assert (flipped.c, flipped.cv_accuracy) == (a.c, a.cv_accuracy)
    assert flipped.accuracy == pytest.approx(1 - a.accuracy)


def test_per_feature_scale_does_not_change_the_result():
    # A fixed penalty on raw features favours whichever embedding happens to have a large scale;
    # standardising on the train split removes that.
    x, y = _blobs()
    scale = torch.logspace(-3, 3, x.shape[1])
    a = linear_probe(x[:200], y[:200], x[200:], y[200:], normalize=False)
    b = linear_probe(x[:200] * scale, y[:200], x[200:] * scale, y[200:], normalize=False)
    assert (a.accuracy, a.c) == (b.accuracy, b.c)
    assert a.accuracy > 0.8


def test_penalty_chosen_by_cross_validation_beats_a_bad_fixed_one():
    x, y = _blobs(n=120, d=200, shift=1.0)  # few samples, many noise features: weak penalties overfit
    chosen = linear_probe(x[:60], y[:60], x[60:], y[60:])
    weak = linear_probe(x[:60], y[:60], x[60:], y[60:], cs=[100.0])
    assert chosen.c < 100.0 and chosen.cv_accuracy > weak.cv_accuracy


def test_a_penalty_at_the_grids_edge_extends_the_grid():
    x, y = _blobs(n=120, d=200, shift=1.0)  # needs a strong penalty
    fixed = linear_probe(x[:60], y[:60], x[60:], y[60:], cs=[10.0, 100.0], extend=0)
    assert fixed.c == 10.0 and fixed.at_edge  # the best of the two, but at the edge
    grown = linear_probe(x[:60], y[:60], x[60:], y[60:], cs=[10.0, 100.0])
    assert grown.c in (1.0, 0.1) and grown.cv_accuracy > fixed.cv_accuracy
    # well-separated blobs: the default grid's optimum is inside it, nothing extended
    x2, y2 = _blobs()
    inner = linear_probe(x2[:200], y2[:200], x2[200:], y2[200:])
    assert not inner.at_edge and inner.c in DEFAULT_CS
    # one candidate is a fixed penalty, never extended
    assert linear_probe(x[:60], y[:60], x[60:], y[60:], cs=[100.0]).c == 100.0


@pytest.mark.parametrize(
    "args,match",
    [
        ((np.zeros((10, 3)), [0] * 10, np.zeros((4, 3)), [0] * 4), "single class"),
        ((np.zeros((10, 3)), [0, 1] * 5, np.zeros((4, 2)), [0] * 4), "3 features but test_x has 2"),
        ((np.zeros((10, 3)), [0, 1] * 4, np.zeros((4, 3)), [0] * 4), "one label per sample"),
        ((np.full((10, 3), np.nan), [0, 1] * 5, np.zeros((4, 3)), [0] * 4), "NaN"),
        ((np.zeros((0, 3)), [], np.zeros((4, 3)), [0] * 4), "non-empty 2-D"),
        ((np.random.rand(10, 3), [0] * 8 + [1] * 2, np.zeros((4, 3)), [0] * 4), "smallest class's count \\(2\\)"),
    ],
)
def test_bad_input_is_named(args, match):
    with pytest.raises(TorchslimError, match=match):
        linear_probe(*args)


def test_bad_penalties_are_refused():
    x, y = _blobs(n=40)
    with pytest.raises(TorchslimError, match="cs must be"):
        linear_probe(x, y, x, y, cs=[])
    with pytest.raises(TorchslimError, match="cs must be"):
        linear_probe(x, y, x, y, cs=[0.0, 1.0])
    with pytest.raises(TorchslimError, match="extend must be >= 0, got -1"):
        linear_probe(x, y, x, y, extend=-1)
