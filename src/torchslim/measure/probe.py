"""Linear-probe accuracy: how well frozen embeddings serve a downstream task.

An encoder without a classifier (a sentence embedder such as MiniLM) is judged by
a logistic regression trained on its embeddings of a labelled train split and
scored on a test split. One protocol for every comparison, as SentEval does it:
embeddings L2-normalised (the sentence-transformers convention) and
standardised with the train split's mean and deviation, then the L2 penalty
chosen by stratified k-fold cross-validation on the train split only. A fixed
penalty would favour whichever model's embeddings happen to suit it; the test
split never influences the choice. The grid spans 1e-4 to 100 in half decades,
and when the best penalty sits at an end of it the grid grows a decade past that
end (up to ``extend`` times): a choice at the grid's edge means the optimum may
lie beyond it (MiniLM's RT sentence embeddings chose 0.01, the smallest of an
earlier 0.01-100 grid, where 1e-3 cross-validates better).

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(200, 8, generator=g)
    >>> y = (x[:, 0] > 0).long()
    >>> probe = linear_probe(x[:100], y[:100], x[100:], y[100:])
    >>> probe.accuracy > 0.9
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from torchslim.errors import TorchslimError

DEFAULT_CS: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


@dataclass(frozen=True)
class ProbeResult:
    """A linear probe's outcome.

    Attributes:
        accuracy: fraction of test samples classified correctly.
        c: the inverse L2 penalty chosen by cross-validation on the train split.
        cv_accuracy: mean cross-validated accuracy of that choice on the train split.
        n_train: train samples.
        n_test: test samples.
        at_edge: after every extension the chosen penalty is still the smallest
            or largest tried and strictly beats its neighbour (the optimum may
            lie beyond; widen ``cs``).
    """

    accuracy: float
    c: float
    cv_accuracy: float
    n_train: int
    n_test: int
    at_edge: bool = False


def _as_2d(name: str, x: Any) -> np.ndarray:
    a = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    if a.ndim != 2 or a.shape[0] == 0:
        raise TorchslimError(f"{name} must be a non-empty 2-D array (samples, features), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise TorchslimError(f"{name} holds NaN or infinite values")
    return a.astype(np.float64)


def _labels(name: str, y: Any, n: int) -> np.ndarray:
    a = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if a.ndim != 1 or len(a) != n:
        raise TorchslimError(f"{name} must hold one label per sample ({n}), got shape {a.shape}")
    return a


def linear_probe(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    *,
    cs: Sequence[float] = DEFAULT_CS,
    folds: int = 5,
    seed: int = 0,
    normalize: bool = True,
    extend: int = 2,
) -> ProbeResult:
    """Train a logistic regression on ``train_x`` and score it on ``test_x``.

    Args:
        train_x: train embeddings (samples, features): a tensor or an array.
        train_y: their labels.
        test_x: test embeddings, same feature count.
        test_y: their labels.
        cs: candidate inverse penalties; the one with the best mean
            cross-validated accuracy wins (the smallest on ties: the most regularised).
        extend: when the winner is the smallest (largest) candidate and strictly
            beats its neighbour, try ten times smaller (larger) as well, at most
            this many times in all; 0 keeps exactly ``cs``, and a single
            candidate is a fixed penalty.
        folds: stratified folds on the train split (shuffled with ``seed``).
        seed: fixes the folds, so a given input always gives the same result.
        normalize: L2-normalise each embedding first.

    Returns:
        A :class:`ProbeResult`.

    Raises:
        TorchslimError: on shapes that do not match, non-finite values, fewer
            than two classes, a class with fewer samples than ``folds``, an
            empty ``cs`` or a negative ``extend``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xtr, xte = _as_2d("train_x", train_x), _as_2d("test_x", test_x)
    if xtr.shape[1] != xte.shape[1]:
        raise TorchslimError(f"train_x has {xtr.shape[1]} features but test_x has {xte.shape[1]}")
    ytr, yte = _labels("train_y", train_y, len(xtr)), _labels("test_y", test_y, len(xte))
    if not cs or any(c <= 0 for c in cs):
        raise TorchslimError(f"cs must be a non-empty list of positive penalties, got {list(cs)}")
    if extend < 0:
        raise TorchslimError(f"extend must be >= 0, got {extend}")
    classes, counts = np.unique(ytr, return_counts=True)
    if len(classes) < 2:
        raise TorchslimError(f"train_y has a single class ({classes.tolist()}); a probe needs at least two")
    if folds < 2 or counts.min() < folds:
        raise TorchslimError(
            f"folds must be >= 2 and no larger than the smallest class's count ({int(counts.min())}), got {folds}"
        )
    if normalize:
        xtr = xtr / np.maximum(np.linalg.norm(xtr, axis=1, keepdims=True), 1e-12)
        xte = xte / np.maximum(np.linalg.norm(xte, axis=1, keepdims=True), 1e-12)

    def model(c: float) -> Any:
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))

    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = {c: float(cross_val_score(model(c), xtr, ytr, cv=cv).mean()) for c in sorted(set(cs))}

    def best() -> float:
        return max(scores, key=lambda c: (scores[c], -c))

    def beyond_edge() -> float | None:
        # the winner is an end of the grid and strictly beats its neighbour (a plateau needs no more)
        grid, c = sorted(scores), best()
        if len(grid) < 2 or c not in (grid[0], grid[-1]):
            return None
        neighbour = grid[1] if c == grid[0] else grid[-2]
        if scores[c] <= scores[neighbour]:
            return None
        return c / 10 if c == grid[0] else c * 10

    for _ in range(extend):
        new = beyond_edge()
        if new is None:
            break
        scores[new] = float(cross_val_score(model(new), xtr, ytr, cv=cv).mean())
    best_c = best()
    clf = model(best_c).fit(xtr, ytr)
    acc = float((clf.predict(xte) == yte).mean())
    return ProbeResult(accuracy=acc, c=best_c, cv_accuracy=scores[best_c], n_train=len(xtr), n_test=len(xte),
                       at_edge=beyond_edge() is not None)
