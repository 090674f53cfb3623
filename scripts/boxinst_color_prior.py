"""How much of BoxInst's pairwise term a data set supervises: its colour prior vs GT masks.

BoxInst learns shapes from boxes through its pairwise term (`pairwise_loss` in
pointsup/losses/condinst_losses.py): a pixel inside a GT box and each of its 8 dilated
neighbours (3 x 3, dilation 2, on the stride-4 grid) are pushed to the same label wherever
their LAB colour similarity exp(-|lab_i - lab_j| / 2) is >= tau
(`model.condinst.pairwise_color_thresh`, 0.3 as in AdelaiDet). Every other pair inside the
box is unsupervised. On data with masks this script sorts the in-box pairs by their true
labels:
  - background-background and object-object pairs: the edges the term should supervise;
    the share above tau is how much of the shape the prior can carve out of the box;
  - pairs across the object's boundary: the term must not join them; the share above tau
    is the prior's error rate.
Labels are the GT masks at stride 4 (a cell is object when >= half of it is covered);
images are read at their stored size (training resizes them a little).

    python scripts/boxinst_color_prior.py                   # the built-in data (train split)
    python scripts/boxinst_color_prior.py --json train.json --images images/ --thresh 0.1 0.2 0.3

Measured at 39fb965 (first 200 training images of each built-in variant, tau 0.3):
docs/experiments/README.md, "Known problem: BoxInst's masks collapse to strips".
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pointsup.data.coco import load_coco_json, load_image_rgb, resolve_image_path
from pointsup.data.simulate_points import box_and_mask
from pointsup.losses.condinst_losses import color_similarity, rgb_to_lab, unfold_neighbours
from pointsup.models.condinst import MASK_OUT_STRIDE, box_masks_at_stride, masks_at_stride

KINDS = ("background-background", "object-object", "across the boundary")


def pair_counts(image_rgb: Tensor, masks: Tensor, boxes_xyxy: Tensor, thresholds: list[float],
                kernel_size: int = 3, dilation: int = 2) -> dict[str, list[int]]:
    """In-box neighbour pairs of one image by kind: [total, then the count with similarity >= each tau].

    image_rgb: (3, H, W) 0..255; masks: (M, H, W) bool; boxes_xyxy: (M, 4) image pixels.
    The map is the image's stride-4 grid (H and W cut to multiples of 4), as BoxInst's.
    """
    h, w = image_rgb.shape[1] // MASK_OUT_STRIDE, image_rgb.shape[2] // MASK_OUT_STRIDE
    H, W = h * MASK_OUT_STRIDE, w * MASK_OUT_STRIDE
    small = F.avg_pool2d(image_rgb[None, :, :H, :W].float(), MASK_OUT_STRIDE)  # (1, 3, h, w)
    on_map = torch.ones(1, 1, h, w)
    similarity = color_similarity(rgb_to_lab(small), on_map, kernel_size, dilation)  # (1, A, h, w)
    neighbour_on_map = unfold_neighbours(on_map, kernel_size, dilation)[:, 0] > 0  # (1, A, h, w)

    labels = (masks_at_stride(masks[:, :H, :W], (H, W), MASK_OUT_STRIDE) >= 0.5).float()[:, None]  # (M, 1, h, w)
    neighbour_labels = unfold_neighbours(labels, kernel_size, dilation)[:, 0]  # (M, A, h, w)
    in_box = (box_masks_at_stride(boxes_xyxy.float(), (h, w), MASK_OUT_STRIDE) > 0) & neighbour_on_map  # (M, A, h, w)
    same = neighbour_labels == labels
    selections = {
        KINDS[0]: in_box & same & (labels == 0),
        KINDS[1]: in_box & same & (labels == 1),
        KINDS[2]: in_box & ~same,
    }
    return {kind: [int(sel.sum())] + [int((sel & (similarity >= tau)).sum()) for tau in thresholds]
            for kind, sel in selections.items()}


def data_set_counts(json_path: str, image_dir: str, thresholds: list[float], max_images: int) -> dict[str, list[int]]:
    """`pair_counts` summed over the first `max_images` images of a COCO file with masks.

    Boxes and masks are read as the point simulator reads them (`box_and_mask`: clear
    errors for a malformed bbox or an unknown image; zero-area boxes skipped); an annotation
    without a mask is an error, since this diagnostic needs one for every object."""
    coco = load_coco_json(json_path)
    image_sizes = {info["id"]: (int(info["height"]), int(info["width"])) for info in coco["images"]}
    by_image: dict = {}
    for ann in coco["annotations"]:
        if ann.get("iscrowd", 0) == 0:
            by_image.setdefault(ann.get("image_id"), []).append(ann)
    totals = {kind: [0] * (1 + len(thresholds)) for kind in KINDS}
    for info in coco["images"][:max_images]:
        skipped: dict[str, list] = {"have no segmentation": [], "have a zero-area box": []}
        boxes_and_masks = [box_and_mask(ann, image_sizes, json_path, skipped) for ann in by_image.get(info["id"], [])]
        if skipped["have no segmentation"]:
            raise ValueError(f"{json_path}: annotation ids {skipped['have no segmentation'][:10]} have no "
                             f"segmentation; this diagnostic needs GT masks")
        boxes_and_masks = [(box, mask) for box, mask in boxes_and_masks if mask is not None]
        if not boxes_and_masks:
            continue
        image = load_image_rgb(resolve_image_path(image_dir, info["file_name"]), info["id"])
        if image.shape[:2] != image_sizes[info["id"]]:
            raise ValueError(f"{json_path}: image id {info['id']} ({info['file_name']}) is {image.shape[1]}x"
                             f"{image.shape[0]} pixels, the JSON says {image_sizes[info['id']][1]}x"
                             f"{image_sizes[info['id']][0]}")
        boxes_xyxy = torch.tensor([box for box, _ in boxes_and_masks], dtype=torch.float32)  # (M, 4)
        masks = torch.from_numpy(np.stack([mask for _, mask in boxes_and_masks]))  # (M, H, W)
        counts = pair_counts(torch.from_numpy(image.copy()).permute(2, 0, 1), masks, boxes_xyxy, thresholds)
        for kind in KINDS:
            totals[kind] = [t + c for t, c in zip(totals[kind], counts[kind])]
    return totals


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default="", help="COCO JSON with masks (default: the built-in training set)")
    parser.add_argument("--images", default="", help="its image folder")
    parser.add_argument("--thresh", type=float, nargs="+", default=[0.1, 0.2, 0.3], help="similarity thresholds tau")
    parser.add_argument("--max-images", type=int, default=200, help="images read (the first ones of the file)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="built-in data only: config overrides, e.g. data.synthetic_background=flat")
    args = parser.parse_args(argv)
    json_path, image_dir = args.json, args.images
    if not json_path:
        from pointsup.config import load_config
        from pointsup.data.builtin import prepare_synthetic_data

        cfg = load_config(None, args.set)
        paths = prepare_synthetic_data(cfg.data)
        json_path, image_dir = paths.train_json, paths.train_images
    if not os.path.isdir(image_dir):
        sys.exit(f"image folder not found: {image_dir!r} (--images)")
    totals = data_set_counts(json_path, image_dir, args.thresh, args.max_images)
    print(f"{json_path}, first {args.max_images} images: in-box neighbour pairs (3x3, dilation 2, stride 4)")
    print("| pairs | count | " + " | ".join(f"similarity >= {tau:g}" for tau in args.thresh) + " |")
    print("|---|---|" + "---|" * len(args.thresh))
    for kind in KINDS:
        total, *above = totals[kind]
        print(f"| {kind} | {total} | " + " | ".join(f"{c / max(total, 1):.1%}" for c in above) + " |")


if __name__ == "__main__":
    main()
