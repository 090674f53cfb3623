import pytest

from pointsup.data.synthetic import generate_synthetic_dataset


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """The data tests use tiny tensors: all of them run with one intra-op thread."""
    yield


@pytest.fixture(scope="session")
def synthetic_paths(tmp_path_factory):
    """A tiny synthetic set (shared by the tests of this folder; read-only)."""
    out_dir = tmp_path_factory.mktemp("synthetic")
    return generate_synthetic_dataset(str(out_dir), num_train=16, num_val=4, image_size=64, seed=0)


@pytest.fixture(scope="session")
def synthetic_points_json(synthetic_paths, tmp_path_factory):
    """The tiny synthetic train split with 10 simulated points per object and its masks."""
    from pointsup.data.coco import load_coco_json
    from pointsup.data.simulate_points import simulate_points
    from pointsup.utils.io import atomic_write_json

    coco = simulate_points(load_coco_json(synthetic_paths["train_json"]), num_points=10, seed=0, keep_masks=True)
    path = str(tmp_path_factory.mktemp("points") / "train_points.json")
    atomic_write_json(path, coco)
    return path
