"""Names every docstring example may use without importing them.

``python -m pytest`` collects the ``>>>`` examples in ``src/torchslim`` as
doctests (``--doctest-modules`` in ``pyproject.toml``). Each example runs with
``ts`` (``import torchslim as ts``), ``torch``, ``nn`` (``torch.nn``) and ``np``
(``numpy``) already defined; anything else, a model included, the example
builds itself so that a reader can copy it as it stands.
"""

import numpy as np
import pytest
import torch
from torch import nn

import torchslim as ts


@pytest.fixture(autouse=True, scope="session")
def _doctest_names(doctest_namespace):
    doctest_namespace["ts"] = ts
    doctest_namespace["torch"] = torch
    doctest_namespace["nn"] = nn
    doctest_namespace["np"] = np
