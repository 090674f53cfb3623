"""Simulate point annotations P_N from instance masks (paper sec. 3.1 and 3.3.1).

For every annotation with a mask: sample N points uniformly (continuous coordinates) in its
box (clipped to the image) and label each point with the mask value of the pixel containing
it (object = 1, background = 0). The output is the same COCO JSON with `point_coords` /
`point_labels` added (written as floats, see `pointsup.data.points`) and `segmentation`
removed unless `keep_masks`.

Label noise (sec. 3.3.1), over all points of the file:
    random    flip the labels of round(fraction * total) points chosen uniformly;
    boundary  flip the round(fraction * total) points nearest to a mask boundary.

    python -m pointsup.data.simulate_points --input instances.json --output points.json \\
        --num-points 10 --seed 0 [--keep-masks] [--noise-fraction 0.05 --noise-mode boundary]
"""

from __future__ import annotations

import argparse
import copy
import math
import warnings
from typing import Any

import numpy as np
from tqdm import tqdm

from pointsup.data.coco import decode_segmentation, load_coco_json
from pointsup.data.points import WRITE_DECIMALS, label_points_from_mask, points_to_json
from pointsup.utils.io import atomic_write_json

NOISE_MODES = ("random", "boundary")


def boundary_pixel_centres(mask: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """Centres (U, 2) (x, y) of the pixels in `window` = (x0, y0, x1, y1) whose 4-neighbour differs.

    Both sides of the object contour are included. The image border is not a boundary
    (pixels outside the image are treated as copies of the border pixels).
    """
    x0, y0, x1, y1 = window
    H, W = mask.shape
    # Window plus one pixel of context, replicated at the image border.
    rows = np.clip(np.arange(y0 - 1, y1 + 1), 0, H - 1)
    cols = np.clip(np.arange(x0 - 1, x1 + 1), 0, W - 1)
    m = mask[np.ix_(rows, cols)]
    centre = m[1:-1, 1:-1]
    differs = (centre != m[:-2, 1:-1]) | (centre != m[2:, 1:-1]) | (centre != m[1:-1, :-2]) | (centre != m[1:-1, 2:])
    ys, xs = np.nonzero(differs)
    return np.stack([xs + x0 + 0.5, ys + y0 + 0.5], axis=1).astype(np.float64)


def distance_to_boundary(coords_img: np.ndarray, mask: np.ndarray, box_xyxy: tuple[float, float, float, float]) -> np.ndarray:
    """Distance (P,) in pixels from each point (P, 2) to the nearest mask-boundary pixel centre.

    Only the box (plus 2 pixels) is searched: the mask of a box annotation lies inside it.
    A box without any boundary (all object or all background) gives +inf.
    """
    H, W = mask.shape
    bx0, by0, bx1, by1 = box_xyxy
    window = (
        max(int(math.floor(bx0)) - 2, 0),
        max(int(math.floor(by0)) - 2, 0),
        min(int(math.ceil(bx1)) + 2, W),
        min(int(math.ceil(by1)) + 2, H),
    )
    boundary = boundary_pixel_centres(mask, window)  # (U, 2) U boundary pixels
    if len(boundary) == 0 or len(coords_img) == 0:
        return np.full(len(coords_img), np.inf)
    sq_dists = ((coords_img[:, None, :] - boundary[None, :, :]) ** 2).sum(axis=-1)  # (P, U)
    return np.sqrt(sq_dists.min(axis=1))


def sample_points_in_box(
    rng: np.random.Generator, box_xyxy: tuple[float, float, float, float], num_points: int
) -> np.ndarray:
    """(num_points, 2) continuous (x, y), uniform in the box, rounded as they will be written."""
    x0, y0, x1, y1 = box_xyxy
    coords = rng.uniform(low=(x0, y0), high=(x1, y1), size=(num_points, 2))
    # Round first, then label: the written file and its labels then agree exactly.
    coords = np.round(coords, WRITE_DECIMALS)
    return np.clip(coords, (x0, y0), (x1, y1))


def box_and_mask(ann: dict[str, Any], image_sizes: dict[Any, tuple[int, int]], source: str,
                  skipped: dict[str, list]) -> tuple[tuple[float, float, float, float] | None, np.ndarray | None]:
    """An annotation's box clipped to its image (x0, y0, x1, y1) and its (H, W) bool mask; (None,
    None), with the id recorded in `skipped`, when it has no mask or an empty box; ValueError
    naming the annotation for a malformed bbox or an unknown image."""
    ann_id = ann.get("id", "?")
    bbox = ann.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise ValueError(f"{source}: annotation id {ann_id} has no valid bbox [x, y, w, h] (got {bbox!r})")
    if ann.get("image_id") not in image_sizes:
        raise ValueError(f"{source}: annotation id {ann_id} refers to unknown image_id {ann.get('image_id')!r}")
    H, W = image_sizes[ann["image_id"]]
    segmentation = ann.get("segmentation")
    if segmentation is None or (isinstance(segmentation, list) and len(segmentation) == 0):
        skipped["have no segmentation"].append(ann_id)
        return None, None
    x, y, w, h = (float(v) for v in bbox)
    box_xyxy = (min(max(x, 0.0), W), min(max(y, 0.0), H), min(max(x + w, 0.0), W), min(max(y + h, 0.0), H))
    if not (box_xyxy[2] > box_xyxy[0] and box_xyxy[3] > box_xyxy[1]):
        skipped["have a zero-area box"].append(ann_id)
        return None, None
    return box_xyxy, decode_segmentation(segmentation, (H, W), source, ann_id)


def simulate_points(
    coco: dict[str, Any],
    num_points: int,
    seed: int,
    noise_fraction: float = 0.0,
    noise_mode: str = "random",
    keep_masks: bool = False,
    source: str = "<coco>",
    progress: bool | None = None,
) -> dict[str, Any]:
    """Return a copy of `coco` whose annotations carry simulated `point_coords`/`point_labels`.

    coco:           COCO instances dict (images with height/width, annotations with bbox).
    num_points:     N points per annotation (P_N).
    seed:           seed of np.random.default_rng; the same seed gives the same output.
    noise_fraction: fraction of all points whose label is flipped (exactly round(f * total)).
    noise_mode:     "random" or "boundary" (flip the points nearest to the mask boundary).
    keep_masks:     keep `segmentation` in the output.
    source:         name used in error messages; progress: tqdm bar (None = auto).
    """
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    if not 0.0 <= noise_fraction <= 1.0:
        raise ValueError(f"noise_fraction must be in [0, 1], got {noise_fraction}")
    if noise_mode not in NOISE_MODES:
        raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
    rng = np.random.default_rng(seed)
    image_sizes = {img["id"]: (int(img["height"]), int(img["width"])) for img in coco["images"]}

    out = {k: v for k, v in coco.items() if k != "annotations"}
    out["annotations"] = []
    # Per point, for the noise step: (output annotation index, point index, boundary distance).
    point_ann, point_idx, point_dist = [], [], []
    skipped: dict[str, list] = {"have no segmentation": [], "have a zero-area box": []}
    annotations = coco["annotations"]
    if progress is None:
        progress = len(annotations) >= 1000
    for ann in tqdm(annotations, desc="simulating points", disable=not progress, unit="ann"):
        new_ann = {k: copy.deepcopy(v) for k, v in ann.items() if k not in ("segmentation", "point_coords", "point_labels")}
        if keep_masks and "segmentation" in ann:
            new_ann["segmentation"] = copy.deepcopy(ann["segmentation"])
        out["annotations"].append(new_ann)

        box_xyxy, mask = box_and_mask(ann, image_sizes, source, skipped)
        if mask is None:
            continue
        coords_img = sample_points_in_box(rng, box_xyxy, num_points)  # (N, 2)
        labels = label_points_from_mask(coords_img, mask)  # (N,)
        new_ann.update(points_to_json(coords_img, labels))
        if noise_fraction > 0:
            dist = distance_to_boundary(coords_img, mask, box_xyxy) if noise_mode == "boundary" else np.zeros(num_points)
            point_ann.extend([len(out["annotations"]) - 1] * num_points)
            point_idx.extend(range(num_points))
            point_dist.extend(dist.tolist())

    for why, ids in skipped.items():
        if ids:
            warnings.warn(f"{source}: {len(ids)} annotations {why} and were kept without points, ids {ids[:10]}"
                          + (" ..." if len(ids) > 10 else ""), stacklevel=2)
    if noise_fraction > 0:
        _flip_labels(out["annotations"], point_ann, point_idx, np.asarray(point_dist), noise_fraction, noise_mode, rng)
    return out


def _flip_labels(
    annotations: list[dict[str, Any]],
    point_ann: list[int],
    point_idx: list[int],
    point_dist: np.ndarray,
    noise_fraction: float,
    noise_mode: str,
    rng: np.random.Generator,
) -> None:
    """Flip exactly round(noise_fraction * total) labels in place (sec. 3.3.1)."""
    total = len(point_ann)
    num_flip = int(math.floor(noise_fraction * total + 0.5))
    if num_flip == 0:
        return
    if noise_mode == "random":
        chosen = rng.choice(total, size=num_flip, replace=False)
    else:
        # Nearest to the boundary first; a random permutation breaks ties without bias.
        perm = rng.permutation(total)
        chosen = perm[np.argsort(point_dist[perm], kind="stable")[:num_flip]]
    for j in chosen:
        labels = annotations[point_ann[j]]["point_labels"]
        labels[point_idx[j]] = 1 - labels[point_idx[j]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pointsup.data.simulate_points", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     description="Simulate P_N point annotations from COCO masks (paper sec. 3.1).")
    parser.add_argument("--input", required=True, default=argparse.SUPPRESS, help="COCO instances JSON with masks")
    parser.add_argument("--output", required=True, default=argparse.SUPPRESS, help="output JSON (written atomically)")
    parser.add_argument("--num-points", type=int, default=10, help="points per object (P_N), sampled uniformly in its box")
    parser.add_argument("--seed", type=int, default=0, help="seed of the point sampler")
    parser.add_argument("--keep-masks", action="store_true", help="keep segmentation in the output")
    parser.add_argument("--noise-fraction", type=float, default=0.0, help="fraction of labels to flip")
    parser.add_argument("--noise-mode", choices=NOISE_MODES, default="random",
                        help="random: flip labels chosen at random; boundary: flip those nearest the mask boundary (paper sec. 3.3.1)")
    args = parser.parse_args(argv)

    coco = load_coco_json(args.input)
    out = simulate_points(
        coco,
        num_points=args.num_points,
        seed=args.seed,
        noise_fraction=args.noise_fraction,
        noise_mode=args.noise_mode,
        keep_masks=args.keep_masks,
        source=args.input,
    )
    atomic_write_json(args.output, out)
    num_with_points = sum("point_coords" in a for a in out["annotations"])
    print(f"wrote {args.output}: {num_with_points}/{len(out['annotations'])} annotations with {args.num_points} points")


if __name__ == "__main__":
    main()
