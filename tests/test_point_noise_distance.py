"""scripts/point_noise_distance.py: finds the flipped labels of a noisy point file and measures
their distance to the mask boundary against a brute-force oracle."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import sys

import numpy as np
import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "point_noise_distance.py")


def _load():
    spec = importlib.util.spec_from_file_location("point_noise_distance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files():
    # One 20 x 20 image, one object: the square [4, 16) x [4, 16) (pixels 4..15 are object).
    gt = {"images": [{"id": 1, "height": 20, "width": 20, "file_name": "a.png"}],
          "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [4, 4, 12, 12], "area": 144, "iscrowd": 0,
                           "segmentation": [[4, 4, 16, 4, 16, 16, 4, 16]]}],
          "categories": [{"id": 1, "name": "square"}]}
    clean = copy.deepcopy(gt)
    clean["annotations"][0]["point_coords"] = [[10.0, 10.0], [4.6, 10.0], [12.0, 6.0]]
    clean["annotations"][0]["point_labels"] = [1, 1, 1]
    noisy = copy.deepcopy(clean)
    noisy["annotations"][0]["point_labels"] = [0, 0, 1]  # the centre and a point by the left edge flipped
    return gt, clean, noisy


def test_distances_of_the_flipped_points_only():
    module = _load()
    gt, clean, noisy = _files()
    pixels, cells = module.flipped_distances(gt, clean, noisy, "noisy.json")
    assert len(pixels) == 2  # the unflipped third point is not measured
    # Oracle: distance to the nearest boundary pixel centre, from the mask's pixels directly.
    from pointsup.data.coco import decode_segmentation

    mask = decode_segmentation(gt["annotations"][0]["segmentation"], (20, 20), "gt", 7)
    ys, xs = np.nonzero(mask)
    inner = [(x, y) for x, y in zip(xs, ys) if mask[y - 1:y + 2, x - 1:x + 2].sum() < 9]
    outer = [(x, y) for y in range(20) for x in range(20) if not mask[y, x]
             and mask[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].any()]
    centres = np.array(inner + outer, dtype=np.float64) + 0.5
    for (x, y), d in zip([(10.0, 10.0), (4.6, 10.0)], pixels):
        assert d == pytest.approx(np.sqrt(((centres - [x, y]) ** 2).sum(1)).min(), abs=1e-6)
    assert pixels[1] < 1.0 < 4.0 < pixels[0]
    np.testing.assert_allclose(cells, pixels / (12 / 28))


def test_points_that_are_not_the_clean_files_are_refused(tmp_path, capsys):
    module = _load()
    gt, clean, noisy = _files()
    noisy["annotations"][0]["point_coords"][0] = [9.0, 9.0]
    with pytest.raises(ValueError, match="noisy.json: annotation id 7 has other points"):
        module.flipped_distances(gt, clean, noisy, "noisy.json")
    gt, clean, noisy = _files()
    del gt["annotations"][0]["segmentation"]
    with pytest.raises(ValueError, match="noisy.json: annotation id 7 has flipped labels but no mask"):
        module.flipped_distances(gt, clean, noisy, "noisy.json")
    paths = {}
    for name, data in zip(("gt", "clean", "noisy"), _files()):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(data))
    module.main(["--gt", str(paths["gt"]), "--clean", str(paths["clean"]), "--noisy", str(paths["noisy"])])
    assert "noisy.json: 2 flipped; pixels" in capsys.readouterr().out
