"""Point annotations in COCO JSON: the format read and written by pointsup (paper sec. 3.1).

An annotation of the point-supervised form P_N is a normal COCO instance annotation (bbox,
category_id, iscrowd, optionally segmentation) plus two lists of the same length:

    "point_coords": [[x, y], ...]   N points in image pixels (inside the box)
    "point_labels": [1, 0, ...]     1 = object, 0 = background

Coordinate convention (read side):
    * A coordinate stored as a JSON **integer** (e.g. `[12, 40]`) is a *pixel index*, as
      written by the public detectron2 PointSup tools (`prepare_coco_point_annotations_...`
      floors the sampled location). It is read as the centre of that pixel: x + 0.5.
    * A coordinate stored as a JSON **float** (e.g. `[12.0, 40.25]`) is a continuous image
      coordinate in the frame of `pointsup.structures` (pixel (row i, col j) covers
      [j, j+1) x [i, i+1)) and is read as-is.
    The decision is made per number, so `[12, 40.25]` reads as (12.5, 40.25).

Coordinate convention (write side): pointsup always writes floats (continuous frame,
rounded to 1/100 pixel), so files it writes are read back unchanged. The label of a
continuous point is the mask value of the pixel containing it: row floor(y), col floor(x),
clamped to the last row/column for a point lying exactly on the right/bottom image edge
(`pixel_index_of`).

Points outside the image are dropped with a warning; a length mismatch between coords and
labels, or a label other than 0/1, is a `ValueError` naming the file and annotation id.

Shape letters: M instances, P points per instance.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from pointsup.structures import IGNORE_LABEL

# Decimals kept when writing continuous coordinates: 1/100 pixel is far below annotation
# precision and keeps COCO-sized files small.
WRITE_DECIMALS = 2


def read_point_coords(raw_coords: Sequence[Sequence[float | int]]) -> np.ndarray:
    """JSON `point_coords` -> (P, 2) float64 continuous image coords (ints get +0.5)."""
    out = np.zeros((len(raw_coords), 2), dtype=np.float64)
    for p, xy in enumerate(raw_coords):
        if not isinstance(xy, (list, tuple)) or len(xy) != 2:
            raise ValueError(f"point {p} is not an [x, y] pair: {xy!r}")
        for k, v in enumerate(xy):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"point {p} has a non-numeric coordinate: {xy!r}")
            # JSON ints are pixel indices (detectron2 PointSup tools); read their centre.
            out[p, k] = v + 0.5 if isinstance(v, int) else v
    return out


def parse_annotation_points(
    ann: dict[str, Any], image_size: tuple[int, int], source: str = "<json>"
) -> tuple[np.ndarray, np.ndarray] | None:
    """Read and validate the points of one annotation.

    ann:        a COCO annotation dict, possibly with "point_coords" / "point_labels".
    image_size: (H, W) of its image, to drop points outside it.
    source:     file name used in error messages.
    returns (coords_img (P, 2) float32, labels (P,) float32 in {0, 1}) or None when the
    annotation has no points. Raises ValueError on malformed points.
    """
    has_coords, has_labels = "point_coords" in ann, "point_labels" in ann
    ann_id = ann.get("id", "?")
    if not has_coords and not has_labels:
        return None
    if has_coords != has_labels:
        raise ValueError(f"{source}: annotation id {ann_id} has only one of point_coords / point_labels")
    raw_coords, raw_labels = ann["point_coords"], ann["point_labels"]
    if not isinstance(raw_coords, list) or not isinstance(raw_labels, list):
        raise ValueError(f"{source}: annotation id {ann_id}: point_coords and point_labels must be lists")
    if len(raw_coords) != len(raw_labels):
        raise ValueError(
            f"{source}: annotation id {ann_id} has {len(raw_coords)} point_coords but "
            f"{len(raw_labels)} point_labels"
        )
    try:
        coords_img = read_point_coords(raw_coords)
    except ValueError as e:
        raise ValueError(f"{source}: annotation id {ann_id}: {e}") from None
    bad_labels = [v for v in raw_labels if isinstance(v, bool) or v not in (0, 1)]
    if bad_labels:
        raise ValueError(
            f"{source}: annotation id {ann_id} has point_labels {bad_labels[:5]} not in {{0, 1}}"
        )
    labels = np.asarray(raw_labels, dtype=np.float32).reshape(-1)

    H, W = image_size
    finite = np.isfinite(coords_img).all(axis=1)
    inside = finite & (coords_img[:, 0] >= 0) & (coords_img[:, 0] <= W) & (coords_img[:, 1] >= 0) & (coords_img[:, 1] <= H)
    if not inside.all():
        warnings.warn(
            f"{source}: annotation id {ann_id}: dropped {int((~inside).sum())} of {len(inside)} "
            f"points outside the {W}x{H} image",
            stacklevel=2,
        )
        coords_img, labels = coords_img[inside], labels[inside]
    return coords_img.astype(np.float32).reshape(-1, 2), labels


def pad_points(
    points_per_instance: Sequence[tuple[np.ndarray, np.ndarray] | None],
) -> tuple[Tensor, Tensor] | None:
    """Stack per-instance points into padded tensors.

    points_per_instance: M entries, each (coords (P_i, 2), labels (P_i,)) or None (no points).
    returns (point_coords (M, P, 2) float32, point_labels (M, P) float32) with P = max P_i;
    missing points have label -1 (ignore) and coords 0. Returns None when no instance has
    points (the data set is box/mask-only).
    """
    if all(p is None for p in points_per_instance):
        return None
    M = len(points_per_instance)
    P = max(len(p[1]) for p in points_per_instance if p is not None)
    point_coords = torch.zeros(M, P, 2, dtype=torch.float32)
    point_labels = torch.full((M, P), IGNORE_LABEL, dtype=torch.float32)
    for m, p in enumerate(points_per_instance):
        if p is None or len(p[1]) == 0:
            continue
        n = len(p[1])
        point_coords[m, :n] = torch.from_numpy(np.asarray(p[0], dtype=np.float32))
        point_labels[m, :n] = torch.from_numpy(np.asarray(p[1], dtype=np.float32))
    return point_coords, point_labels


def points_to_json(coords_img: np.ndarray | Tensor, labels: np.ndarray | Tensor) -> dict[str, list]:
    """(P, 2) continuous image coords and (P,) labels in {0, 1} -> the JSON fields.

    Coordinates are written as floats (rounded to WRITE_DECIMALS), so readers take them as
    continuous coordinates; ignore labels (-1) are not written.
    """
    coords_img = np.asarray(coords_img, dtype=np.float64).reshape(-1, 2)
    labels = np.asarray(labels).reshape(-1)
    keep = labels >= 0
    coords_img, labels = coords_img[keep], labels[keep]
    rounded = np.round(coords_img, WRITE_DECIMALS)
    return {
        "point_coords": [[float(x), float(y)] for x, y in rounded],
        "point_labels": [int(v) for v in labels],
    }


def pixel_index_of(coords_img: np.ndarray, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(P, 2) continuous (x, y) -> (rows (P,), cols (P,)) int64 of the pixel containing each point.

    A point exactly on the right/bottom image edge (x == W or y == H) belongs to the last
    column/row.
    """
    H, W = image_size
    cols = np.clip(np.floor(coords_img[:, 0]).astype(np.int64), 0, W - 1)
    rows = np.clip(np.floor(coords_img[:, 1]).astype(np.int64), 0, H - 1)
    return rows, cols


def label_points_from_mask(coords_img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Labels (P,) float32 in {0, 1}: the value of `mask` (H, W) at each point (P, 2)."""
    rows, cols = pixel_index_of(coords_img, mask.shape)
    return mask[rows, cols].astype(np.float32)
