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


def pytest_configure(config):
    # Keep CPU tests predictable on small CI machines.
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
