import os
import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same RNG state, so failures reproduce."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """Run a test with one intra-op thread, then restore the previous count.

    Tests on tiny tensors gain nothing from a second thread, and on a busy 2-core machine
    OpenMP's spinning threads make small convs 20-100x slower. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pytest_configure(config):
    # Keep CPU tests predictable on small CI machines.
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
