"""A data set over any COCO-format instances JSON with masks, points (paper sec. 3.1), or both.

Shape letters: M instances in an image, P points per instance, H x W the image.

What becomes a target (per image, in the continuous image frame of `pointsup.structures`):
    boxes         COCO [x, y, w, h] -> xyxy, clipped to the image. Boxes with w or h <= 0
                  (before or after clipping) are skipped with a warning.
    classes       contiguous ids: the sorted category ids mapped to 0..K-1
                  (`contiguous_to_category_id[k]` maps back for evaluation).
    masks         (M, H, W) bool, decoded with pycocotools from polygons, RLE or
                  uncompressed RLE. If `use_masks` but *any* kept annotation of the image has
                  no segmentation, the image gets masks=None: a data set with only points
                  trains without masks.
    point_coords  (M, P, 2) / point_labels (M, P): see `pointsup.data.points` for the JSON
                  convention; padded with label -1. None when no annotation of the image has
                  points (or `use_points` is False).

Crowd annotations (iscrowd=1) never become targets. Bad input raises `ValueError` or
`FileNotFoundError` naming the JSON/image file and the annotation id. Documented skips:
annotations with a zero-area box are dropped (one warning per data set listing the ids);
points outside the image are dropped (one warning per annotation).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from pointsup.data.points import pad_points, parse_annotation_points
from pointsup.structures import InstanceTargets

Transform = Callable[[Tensor, InstanceTargets], tuple[Tensor, InstanceTargets]]


@dataclass
class Sample:
    """One data set item.

    image:     (3, H, W) float32 RGB in [0, 255], after transforms.
    targets:   InstanceTargets in the frame of `image`.
    image_id:  id of the image in the JSON.
    orig_size: (H, W) of the image file on disk.
    """

    image: Tensor
    targets: InstanceTargets
    image_id: int
    orig_size: tuple[int, int]


@dataclass
class _Instance:
    """A validated, non-crowd annotation (kept compact so the data set pickles fast to workers)."""

    ann_id: int
    box_xyxy: tuple[float, float, float, float]
    contiguous_class: int
    segmentation: Any  # raw COCO segmentation, or None
    points: tuple[np.ndarray, np.ndarray] | None  # (coords (P, 2), labels (P,)) or None


def load_coco_json(json_path: str) -> dict[str, Any]:
    """Read a COCO JSON with clear errors for a missing file, bad JSON or missing sections."""
    if not os.path.isfile(json_path):
        raise FileNotFoundError(f"COCO JSON not found: {json_path}")
    try:
        with open(json_path) as f:
            coco = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{json_path}: malformed JSON ({e})") from None
    if not isinstance(coco, dict):
        raise ValueError(f"{json_path}: expected a JSON object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise ValueError(f"{json_path}: missing or non-list '{key}' section")
    return coco


def decode_segmentation(segmentation: Any, image_size: tuple[int, int], source: str = "<json>", ann_id: Any = "?") -> np.ndarray:
    """COCO segmentation (polygons, RLE or uncompressed RLE) -> (H, W) bool mask."""
    H, W = image_size
    try:
        if isinstance(segmentation, list):  # polygons: [[x0, y0, x1, y1, ...], ...]
            polygons = [p for p in segmentation if len(p) >= 6]  # >= 3 vertices
            if not polygons:
                raise ValueError("no polygon with at least 3 vertices")
            rle = mask_util.merge(mask_util.frPyObjects(polygons, H, W))
        elif isinstance(segmentation, dict) and "counts" in segmentation:
            if list(segmentation.get("size", [])) != [H, W]:
                raise ValueError(f"RLE size {segmentation.get('size')} != image size [{H}, {W}]")
            if isinstance(segmentation["counts"], list):  # uncompressed RLE
                rle = mask_util.frPyObjects(segmentation, H, W)
            else:
                rle = segmentation
        else:
            raise ValueError(f"unknown segmentation format {type(segmentation).__name__}")
        with warnings.catch_warnings():
            # pycocotools < 2.0.9 triggers a numpy 2 DeprecationWarning inside decode.
            warnings.simplefilter("ignore", DeprecationWarning)
            return mask_util.decode(rle).astype(bool)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{source}: annotation id {ann_id}: bad segmentation ({e})") from None


def load_image_rgb(path: str, image_id: Any = "?") -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB, with clear errors for missing/corrupt files."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path} (image id {image_id})")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"corrupt or unreadable image file: {path} (image id {image_id}): {e}") from None


class CocoInstanceDataset(torch.utils.data.Dataset):
    """COCO-format instances JSON + image folder -> `Sample`s.

    json_path:   instances JSON (annotations with segmentation and/or point_coords/labels).
    image_dir:   folder that `images[i]["file_name"]` is relative to.
    transforms:  callable (image, targets) -> (image, targets), e.g. `build_train_transforms`.
    use_masks:   decode masks when every annotation of the image has a segmentation.
    use_points:  read point_coords / point_labels.
    skip_empty:  drop images without non-crowd objects at construction (for training).
    """

    def __init__(
        self,
        json_path: str,
        image_dir: str,
        transforms: Transform | None = None,
        use_masks: bool = True,
        use_points: bool = True,
        skip_empty: bool = False,
    ) -> None:
        self.json_path = json_path
        self.image_dir = image_dir
        self.transforms = transforms
        self.use_masks = use_masks
        self.use_points = use_points

        coco = load_coco_json(json_path)
        categories = sorted(coco["categories"], key=lambda c: c["id"])
        self.contiguous_to_category_id: list[int] = [int(c["id"]) for c in categories]
        self.class_names: list[str] = [str(c.get("name", c["id"])) for c in categories]
        self.num_classes = len(categories)
        category_to_contiguous = {cid: k for k, cid in enumerate(self.contiguous_to_category_id)}

        self._images: dict[int, dict[str, Any]] = {}
        for img in coco["images"]:
            for key in ("id", "file_name", "height", "width"):
                if key not in img:
                    raise ValueError(f"{json_path}: image entry {img.get('id', '?')} has no '{key}'")
            self._images[int(img["id"])] = img

        self._instances: dict[int, list[_Instance]] = {image_id: [] for image_id in self._images}
        skipped_boxes: list[Any] = []
        for ann in coco["annotations"]:
            inst = self._parse_annotation(ann, category_to_contiguous, skipped_boxes)
            if inst is not None:
                self._instances[int(ann["image_id"])].append(inst)
        if skipped_boxes:
            warnings.warn(
                f"{json_path}: skipped {len(skipped_boxes)} annotations with a zero-area box "
                f"(w or h <= 0 inside the image), ids {skipped_boxes[:10]}"
                + (" ..." if len(skipped_boxes) > 10 else ""),
                stacklevel=2,
            )

        self.image_ids: list[int] = [
            image_id
            for image_id in sorted(self._images)
            if not (skip_empty and len(self._instances[image_id]) == 0)
        ]

    def _parse_annotation(
        self, ann: dict[str, Any], category_to_contiguous: dict[int, int], skipped_boxes: list[Any]
    ) -> _Instance | None:
        """Validate one annotation; None for crowd and (recorded) zero-area annotations."""
        src, ann_id = self.json_path, ann.get("id", "?")
        if ann.get("image_id") not in self._images:
            raise ValueError(f"{src}: annotation id {ann_id} refers to unknown image_id {ann.get('image_id')!r}")
        if ann.get("iscrowd", 0):
            return None  # crowd regions are never trained on
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise ValueError(f"{src}: annotation id {ann_id} has no valid bbox [x, y, w, h] (got {bbox!r})")
        if ann.get("category_id") not in category_to_contiguous:
            raise ValueError(f"{src}: annotation id {ann_id} has unknown category_id {ann.get('category_id')!r}")
        img = self._images[ann["image_id"]]
        H, W = int(img["height"]), int(img["width"])
        x, y, w, h = (float(v) for v in bbox)
        x0, y0 = min(max(x, 0.0), W), min(max(y, 0.0), H)
        x1, y1 = min(max(x + w, 0.0), W), min(max(y + h, 0.0), H)
        if not (w > 0 and h > 0 and x1 > x0 and y1 > y0):
            skipped_boxes.append(ann_id)
            return None

        segmentation = ann.get("segmentation") if self.use_masks else None
        if segmentation is not None and len(segmentation) == 0:
            segmentation = None  # an empty polygon list means "no mask" in some exporters
        points = parse_annotation_points(ann, (H, W), src) if self.use_points else None
        return _Instance(
            ann_id=ann_id,
            box_xyxy=(x0, y0, x1, y1),
            contiguous_class=category_to_contiguous[ann["category_id"]],
            segmentation=segmentation,
            points=points,
        )

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_info(self, index: int) -> dict[str, Any]:
        """The JSON `images` entry of item `index`."""
        return self._images[self.image_ids[index]]

    def load_targets(self, index: int) -> InstanceTargets:
        """Targets of item `index` in the frame of the image on disk (no transforms)."""
        image_id = self.image_ids[index]
        img = self._images[image_id]
        H, W = int(img["height"]), int(img["width"])
        instances = self._instances[image_id]
        M = len(instances)

        boxes = torch.tensor([inst.box_xyxy for inst in instances], dtype=torch.float32).reshape(M, 4)
        classes = torch.tensor([inst.contiguous_class for inst in instances], dtype=torch.int64)

        masks = None
        if self.use_masks and all(inst.segmentation is not None for inst in instances):
            masks_np = np.zeros((M, H, W), dtype=bool)
            for m, inst in enumerate(instances):
                masks_np[m] = decode_segmentation(inst.segmentation, (H, W), self.json_path, inst.ann_id)
            masks = torch.from_numpy(masks_np)

        points = pad_points([inst.points for inst in instances]) if self.use_points else None
        return InstanceTargets(
            boxes=boxes,
            classes=classes,
            image_size=(H, W),
            masks=masks,
            point_coords=None if points is None else points[0],
            point_labels=None if points is None else points[1],
        )

    def __getitem__(self, index: int) -> Sample:
        image_id = self.image_ids[index]
        img = self._images[image_id]
        path = os.path.join(self.image_dir, img["file_name"])
        image_np = load_image_rgb(path, image_id)  # (H, W, 3) uint8
        H, W = int(img["height"]), int(img["width"])
        if image_np.shape[:2] != (H, W):
            raise ValueError(
                f"{path} (image id {image_id}) is {image_np.shape[1]}x{image_np.shape[0]} but "
                f"{self.json_path} says {W}x{H}"
            )
        image = torch.from_numpy(image_np.copy()).permute(2, 0, 1).float()  # (3, H, W)
        targets = self.load_targets(index)
        if self.transforms is not None:
            image, targets = self.transforms(image, targets)
        return Sample(image=image, targets=targets, image_id=image_id, orig_size=(H, W))
