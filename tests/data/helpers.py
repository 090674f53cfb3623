"""Small hand-made COCO files for the data tests."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image


def rle_of(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def write_image(path: str, H: int, W: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, size=(H, W, 3), dtype=np.uint8)).save(path)


def tiny_coco(tmp_dir: str, annotations: list[dict[str, Any]], H: int = 20, W: int = 30) -> str:
    """One image (id 1, H x W, file img.png) with the given annotations; returns the JSON path."""
    write_image(os.path.join(tmp_dir, "img.png"), H, W)
    coco = {
        "images": [{"id": 1, "file_name": "img.png", "height": H, "width": W}],
        "annotations": [{"image_id": 1, "category_id": 7, "iscrowd": 0, **a} for a in annotations],
        "categories": [{"id": 7, "name": "thing"}, {"id": 3, "name": "other"}],
    }
    path = os.path.join(tmp_dir, "ann.json")
    with open(path, "w") as f:
        json.dump(coco, f)
    return path
