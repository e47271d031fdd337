"""Suite-wide settings.

Every test runs with one intra-op thread (restored afterwards): the models here
are small, one thread is as fast as two for them, and a test's timing then does
not depend on what else the machine is running. Tests that measure threads set
them explicitly.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
