import json
import math

import numpy as np
import pytest
from pycocotools.coco import COCO

from pointsup.data.coco import decode_segmentation, load_coco_json
from pointsup.data.simulate_points import boundary_pixel_centres, distance_to_boundary, main, simulate_points


def _load(paths):
    return load_coco_json(paths["train_json"])


def _masks_by_id(coco):
    sizes = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
    return {a["id"]: decode_segmentation(a["segmentation"], sizes[a["image_id"]]) for a in coco["annotations"]}


def _all_labels(coco):
    return np.array([l for a in coco["annotations"] for l in a["point_labels"]])


def test_points_inside_boxes_and_labels_match_mask(synthetic_paths):
    coco = _load(synthetic_paths)
    out = simulate_points(coco, num_points=10, seed=0)
    masks = _masks_by_id(coco)
    assert len(out["annotations"]) == len(coco["annotations"]) > 10
    for ann in out["annotations"]:
        assert "segmentation" not in ann
        coords = np.asarray(ann["point_coords"], dtype=np.float64)
        assert coords.shape == (10, 2) and all(isinstance(v, float) for v in coords.ravel().tolist())
        x, y, w, h = ann["bbox"]
        assert (coords[:, 0] >= x).all() and (coords[:, 0] <= x + w).all()
        assert (coords[:, 1] >= y).all() and (coords[:, 1] <= y + h).all()
        mask = masks[ann["id"]]
        rows = np.minimum(np.floor(coords[:, 1]).astype(int), mask.shape[0] - 1)
        cols = np.minimum(np.floor(coords[:, 0]).astype(int), mask.shape[1] - 1)
        assert ann["point_labels"] == mask[rows, cols].astype(int).tolist()
    labels = _all_labels(out)
    assert 0 < labels.mean() < 1  # both object and background points occur


def test_deterministic_per_seed_and_keep_masks(synthetic_paths):
    coco = _load(synthetic_paths)
    a = simulate_points(coco, 10, seed=0)
    b = simulate_points(coco, 10, seed=0)
    c = simulate_points(coco, 10, seed=1)
    assert json.dumps(a) == json.dumps(b)
    assert json.dumps(a) != json.dumps(c)
    kept = simulate_points(coco, 3, seed=0, keep_masks=True)
    assert all(ann["segmentation"] == orig["segmentation"] for ann, orig in zip(kept["annotations"], coco["annotations"]))
    assert "segmentation" in coco["annotations"][0]  # the input is not modified


@pytest.mark.parametrize("mode", ["random", "boundary"])
def test_noise_flips_exact_fraction(synthetic_paths, mode):
    coco = _load(synthetic_paths)
    clean = simulate_points(coco, 10, seed=3)
    noisy = simulate_points(coco, 10, seed=3, noise_fraction=0.05, noise_mode=mode)
    # Same seed: same point locations, only labels differ.
    assert [a["point_coords"] for a in clean["annotations"]] == [a["point_coords"] for a in noisy["annotations"]]
    clean_labels, noisy_labels = _all_labels(clean), _all_labels(noisy)
    expected = math.floor(0.05 * len(clean_labels) + 0.5)
    assert expected > 0
    assert int((clean_labels != noisy_labels).sum()) == expected


def test_boundary_noise_flips_points_nearest_to_boundary(synthetic_paths):
    coco = _load(synthetic_paths)
    clean = simulate_points(coco, 10, seed=0)
    noisy = simulate_points(coco, 10, seed=0, noise_fraction=0.1, noise_mode="boundary")
    random_noisy = simulate_points(coco, 10, seed=0, noise_fraction=0.1, noise_mode="random")
    masks = _masks_by_id(coco)
    dists, flipped, flipped_random = [], [], []
    for c, n, r in zip(clean["annotations"], noisy["annotations"], random_noisy["annotations"]):
        x, y, w, h = c["bbox"]
        d = distance_to_boundary(np.asarray(c["point_coords"]), masks[c["id"]], (x, y, x + w, y + h))
        dists.extend(d.tolist())
        flipped.extend(np.asarray(c["point_labels"]) != np.asarray(n["point_labels"]))
        flipped_random.extend(np.asarray(c["point_labels"]) != np.asarray(r["point_labels"]))
    dists, flipped, flipped_random = np.asarray(dists), np.asarray(flipped), np.asarray(flipped_random)
    assert dists[flipped].max() <= dists[~flipped].min()
    # Boundary noise is much closer to the boundary than random noise.
    assert dists[flipped].mean() < 0.5 * dists[flipped_random].mean()


def test_distance_to_boundary_matches_brute_force():
    yy, xx = np.mgrid[0:24, 0:24]
    mask = (xx - 11.3) ** 2 + (yy - 12.1) ** 2 <= 36  # a disc
    boundary = []
    for i in range(24):
        for j in range(24):
            nbrs = [(i + di, j + dj) for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1))]
            if any(0 <= a < 24 and 0 <= b < 24 and mask[a, b] != mask[i, j] for a, b in nbrs):
                boundary.append((j + 0.5, i + 0.5))
    boundary = np.asarray(boundary)
    assert len(boundary_pixel_centres(mask, (0, 0, 24, 24))) == len(boundary)
    pts = np.random.default_rng(0).uniform(3, 20, size=(50, 2))
    expected = np.sqrt(((pts[:, None] - boundary[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(distance_to_boundary(pts, mask, (4.0, 5.0, 19.0, 19.0)), expected, rtol=1e-6)


def test_cli_output_loads_in_pycocotools(synthetic_paths, tmp_path, capsys):
    out_path = tmp_path / "points.json"
    main(["--input", synthetic_paths["train_json"], "--output", str(out_path), "--num-points", "5", "--seed", "2",
          "--noise-fraction", "0.05", "--noise-mode", "boundary"])
    api = COCO(str(out_path))
    anns = api.loadAnns(api.getAnnIds())
    assert len(anns) > 0 and all(len(a["point_coords"]) == 5 for a in anns)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_annotation_without_mask_kept_without_points(synthetic_paths):
    coco = _load(synthetic_paths)
    del coco["annotations"][0]["segmentation"]
    with pytest.warns(UserWarning, match=f"ids \\[{coco['annotations'][0]['id']}"):
        out = simulate_points(coco, 4, seed=0)
    assert "point_coords" not in out["annotations"][0] and "point_coords" in out["annotations"][1]


def test_cli_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        main(["--input", str(tmp_path / "missing.json"), "--output", str(tmp_path / "o.json")])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        main(["--input", str(bad), "--output", str(tmp_path / "o.json")])
    assert not (tmp_path / "o.json").exists()


def test_annotation_without_bbox_names_id(synthetic_paths):
    coco = _load(synthetic_paths)
    ann_id = coco["annotations"][2]["id"]
    del coco["annotations"][2]["bbox"]
    with pytest.raises(ValueError, match=f"annotation id {ann_id}"):
        simulate_points(coco, 4, seed=0, source="x.json")


def test_module_runs_as_a_command(synthetic_paths, tmp_path):
    """`python -m pointsup.data.simulate_points` end to end, as users run it (a helper defined
    below the main guard once broke the command while in-process calls of main() passed)."""
    import subprocess
    import sys

    out_path = tmp_path / "points.json"
    result = subprocess.run([sys.executable, "-m", "pointsup.data.simulate_points", "--input", synthetic_paths["train_json"],
                             "--output", str(out_path), "--num-points", "3"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    anns = json.load(open(out_path))["annotations"]
    assert anns and all(len(a["point_coords"]) == 3 for a in anns if "point_coords" in a)
