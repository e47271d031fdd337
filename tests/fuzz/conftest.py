"""Fuzz tests: hostile and careless input, bounded (issue 19).

``make test`` runs each property with its base number of cases (about 90 s together);
``make fuzz`` sets ``TORCHSLIM_FUZZ_SCALE=10`` for ten times as many. Every property is
seeded (derandomized), so a failure reproduces.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

SCALE = max(1, int(os.environ.get("TORCHSLIM_FUZZ_SCALE", "1")))  # each test module reads the same variable


def cases(base: int) -> int:
    """How many examples a property runs: ``base`` times the fuzz scale."""
    return base * SCALE


settings.register_profile(
    "torchslim-fuzz",
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
settings.load_profile("torchslim-fuzz")


@pytest.fixture(scope="session")
def fuzz_scale() -> int:
    return SCALE
