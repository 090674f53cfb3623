import pytest

from pointsup.data.synthetic import generate_synthetic_dataset


@pytest.fixture(scope="session")
def synthetic_paths(tmp_path_factory):
    """A tiny synthetic set (shared by the tests of this folder; read-only)."""
    out_dir = tmp_path_factory.mktemp("synthetic")
    return generate_synthetic_dataset(str(out_dir), num_train=16, num_val=4, image_size=64, seed=0)
