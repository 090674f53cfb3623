"""How far from the mask boundary the flipped labels of a noisy point file lie.

The noise study (sec. 3.3.1) flips a fraction of the simulated P_N labels, at random or
nearest the mask boundary (`python -m pointsup.data.simulate_points --noise-mode`). This
compares each noisy file with the clean file it was made from (same points, same order),
finds the flipped points, and prints their distance to the nearest mask-boundary pixel
centre, in image pixels and in cells of a 28 x 28 grid over the box (the Mask R-CNN mask
head's resolution): a flip well under one cell from the boundary changes a label the
bilinearly interpolated mask logit there mixes from both sides anyway.

    python scripts/point_noise_distance.py --gt train.json --clean train_p10.json \
        --noisy train_p10_noise0.05_boundary.json train_p10_noise0.05_random.json

Boxes and masks come from the GT file (`pointsup.data.simulate_points.box_and_mask`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pointsup.data.simulate_points import box_and_mask, distance_to_boundary  # noqa: E402

GRID = 28  # the mask head's output side: the cell a flipped label is measured in


def flipped_distances(gt: dict, clean: dict, noisy: dict, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Distances (F,) of the F flipped points to the mask boundary: in pixels and in
    GRID-cells of their box's longer side."""
    gt_by_id = {a["id"]: a for a in gt["annotations"]}
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    noisy_by_id = {a["id"]: a for a in noisy["annotations"]}
    skipped: dict[str, list] = defaultdict(list)
    pixels, cells = [], []
    for ann in clean["annotations"]:
        if "point_labels" not in ann:
            continue
        other = noisy_by_id.get(ann["id"])
        if other is None or other.get("point_coords") != ann["point_coords"]:
            raise ValueError(f"{source}: annotation id {ann['id']} has other points than the clean file: "
                             "not made from it")
        flipped = np.nonzero(np.asarray(ann["point_labels"]) != np.asarray(other["point_labels"]))[0]
        if len(flipped) == 0:
            continue
        if ann["id"] not in gt_by_id:
            raise ValueError(f"{source}: annotation id {ann['id']} is not in the GT file")
        box_xyxy, mask = box_and_mask(gt_by_id[ann["id"]], sizes, source, skipped)
        if mask is None:
            raise ValueError(f"{source}: annotation id {ann['id']} has flipped labels but no mask or box in the GT file")
        coords_img = np.asarray(ann["point_coords"], dtype=np.float64)[flipped]  # (f, 2) x, y
        d = distance_to_boundary(coords_img, mask, box_xyxy)  # (f,)
        cell = max(box_xyxy[2] - box_xyxy[0], box_xyxy[3] - box_xyxy[1]) / GRID
        pixels.append(d)
        cells.append(d / cell)
    if not pixels:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(pixels), np.concatenate(cells)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--gt", required=True, help="COCO json with the masks the points were simulated from")
    parser.add_argument("--clean", required=True, help="point file without noise")
    parser.add_argument("--noisy", nargs="+", required=True, help="point files made from --clean with flipped labels")
    args = parser.parse_args(argv)
    gt, clean = json.load(open(args.gt)), json.load(open(args.clean))
    print(f"distance of flipped points to the mask boundary (median, 90th percentile); cell = box side / {GRID}")
    for path in args.noisy:
        pixels, cells = flipped_distances(gt, clean, json.load(open(path)), path)
        if len(pixels) == 0:
            print(f"{path}: no flipped labels")
            continue
        print(f"{path}: {len(pixels)} flipped; pixels {np.median(pixels):.2f} (p90 {np.percentile(pixels, 90):.2f}); "
              f"cells {np.median(cells):.2f} (p90 {np.percentile(cells, 90):.2f})")


if __name__ == "__main__":
    main()
