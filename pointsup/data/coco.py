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
`FileNotFoundError` naming the JSON/image file and the image or annotation id, and is
found when the data set is built, before training starts:
    * image ids and annotation ids must be unique; height / width positive integers;
    * `file_name` must resolve inside `image_dir` (an absolute path or `..` leaving it is
      refused unless `allow_paths_outside_root`), and every file must exist;
    * a bbox must be four finite numbers;
    * with `require_points` (point supervision), a data set without a single usable point
      is an error: its mask loss would be 0 for the whole run.
Documented skips and warnings (one per data set, with counts and ids): annotations with a
zero-area box are dropped; points outside the image are dropped (one warning per
annotation); annotations without points (or with empty point lists) and points outside
their box (kept: the loss uses a point where a proposal covers it) are counted.

Images are read as 8-bit RGB; 16-bit grayscale (PIL mode I;16) is scaled to 0..255
(value / 257), not clipped. 32-bit integer and float images are refused: their range is
unknown.
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


def load_image_rgb(path: str, image_id: Any = None) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB, with clear errors for missing/corrupt files.

    16-bit grayscale is scaled to 8 bits (`convert("RGB")` would clip it to near-white);
    32-bit integer / float images are refused. Other modes (palette, RGBA, CMYK, ...) go
    through PIL's conversion.
    """
    where = f"{path} (image id {image_id})" if image_id is not None else path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {where}")
    try:
        with Image.open(path) as im:
            if im.mode.startswith("I;16"):  # 16-bit grayscale: 65535 -> 255
                gray16 = np.asarray(im).astype(np.float32)  # (H, W)
                gray8 = np.clip(np.round(gray16 / 257.0), 0, 255).astype(np.uint8)
                return np.repeat(gray8[:, :, None], 3, axis=2)
            if im.mode in ("I", "F"):
                raise ValueError(f"PIL mode {im.mode} (32-bit {'integer' if im.mode == 'I' else 'float'}) has no "
                                 f"known value range; convert the image to 8-bit RGB")
            return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))  # convert would copy an RGB image
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"corrupt or unreadable image file: {where}: {e}") from None


def resolve_image_path(image_dir: str, file_name: Any, allow_outside_root: bool = False) -> str:
    """image_dir/file_name, refused (ValueError) when it would leave image_dir: an absolute
    file_name (os.path.join would drop image_dir) or `..` components climbing out of it."""
    if not isinstance(file_name, str) or not file_name:
        raise ValueError(f"file_name must be a non-empty string, got {file_name!r}")
    path = os.path.normpath(os.path.join(image_dir, file_name))
    if allow_outside_root:
        return path
    root = os.path.abspath(image_dir)
    if os.path.isabs(file_name) or os.path.commonpath([root, os.path.abspath(path)]) != root:
        raise ValueError(f"file_name {file_name!r} leaves the image folder {image_dir} "
                         f"(set data.allow_paths_outside_image_root=true if that is intended)")
    return path


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


class CocoInstanceDataset(torch.utils.data.Dataset):
    """COCO-format instances JSON + image folder -> `Sample`s.

    json_path:   instances JSON (annotations with segmentation and/or point_coords/labels).
    image_dir:   folder that `images[i]["file_name"]` is relative to.
    transforms:  callable (image, targets) -> (image, targets), e.g. `build_train_transforms`.
    use_masks:   decode masks when every annotation of the image has a segmentation.
    use_points:  read point_coords / point_labels.
    skip_empty:  drop images without non-crowd objects at construction (for training).
    require_points: point supervision: no usable point in the whole set is an error.
    require_masks: mask supervision: no segmentation in the whole set is an error.
    allow_paths_outside_root: accept file_name entries that leave image_dir.
    check_files: check up front that every image file exists.
    """

    def __init__(
        self,
        json_path: str,
        image_dir: str,
        transforms: Transform | None = None,
        use_masks: bool = True,
        use_points: bool = True,
        skip_empty: bool = False,
        require_points: bool = False,
        allow_paths_outside_root: bool = False,
        check_files: bool = True,
        require_masks: bool = False,
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
        self._paths: dict[int, str] = {}
        for img in coco["images"]:
            self._add_image(img, allow_paths_outside_root)

        self._instances: dict[int, list[_Instance]] = {image_id: [] for image_id in self._images}
        skipped_boxes: list[Any] = []
        ann_ids: set[Any] = set()
        for ann in coco["annotations"]:
            ann_id = ann.get("id")
            if ann_id is not None and ann_id in ann_ids:
                raise ValueError(f"{json_path}: annotation id {ann_id} appears twice (ids must be unique)")
            ann_ids.add(ann_id)
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
        if use_points:
            self._check_points(require_points)
        if require_masks:
            self._check_masks()
        if check_files:
            self._check_files_exist()

    def _add_image(self, img: Any, allow_outside_root: bool) -> None:
        """Validate one `images` entry and record it with its resolved path."""
        src = self.json_path
        if not isinstance(img, dict):
            raise ValueError(f"{src}: an images entry is not an object: {img!r}")
        for key in ("id", "file_name", "height", "width"):
            if key not in img:
                raise ValueError(f"{src}: image entry {img.get('id', '?')} has no '{key}'")
        image_id = img["id"]
        if isinstance(image_id, bool) or not isinstance(image_id, int):
            raise ValueError(f"{src}: image id {image_id!r} is not an integer")
        if image_id in self._images:
            raise ValueError(f"{src}: image id {image_id} appears twice ({self._images[image_id]['file_name']!r} "
                             f"and {img['file_name']!r}); ids must be unique")
        for key in ("height", "width"):
            if isinstance(img[key], bool) or not isinstance(img[key], int) or img[key] <= 0:
                raise ValueError(f"{src}: image id {image_id}: {key} must be a positive integer, got {img[key]!r}")
        try:
            self._paths[image_id] = resolve_image_path(self.image_dir, img["file_name"], allow_outside_root)
        except ValueError as e:
            raise ValueError(f"{src}: image id {image_id}: {e}") from None
        self._images[image_id] = img

    def _check_files_exist(self) -> None:
        missing = [(i, self._paths[i]) for i in self.image_ids if not os.path.isfile(self._paths[i])]
        if missing:
            shown = ", ".join(f"{path} (image id {i})" for i, path in missing[:5])
            raise FileNotFoundError(f"{self.json_path}: {len(missing)} of {len(self.image_ids)} image files not found: "
                                    f"{shown}{' ...' if len(missing) > 5 else ''}")

    def _check_masks(self) -> None:
        """Mask supervision on a file without a single segmentation would train no mask at all."""
        instances = [inst for image_id in self.image_ids for inst in self._instances[image_id]]
        if instances and all(inst.segmentation is None for inst in instances):
            raise ValueError(f"{self.json_path}: mask supervision, but none of the {len(instances)} annotations has a "
                             f"segmentation (for point labels, point_coords / point_labels, train with "
                             f"model.mask_head.supervision=points)")

    def _check_points(self, require_points: bool) -> None:
        """Count annotations without points and points outside their box; with
        `require_points`, no usable point at all is an error (the mask loss would be 0)."""
        instances = [inst for image_id in self.image_ids for inst in self._instances[image_id]]
        without = [inst.ann_id for inst in instances if inst.points is None or len(inst.points[1]) == 0]
        if require_points and instances and len(without) == len(instances):
            raise ValueError(f"{self.json_path}: point supervision, but none of the {len(instances)} annotations has "
                             f"a usable point (point_coords / point_labels missing or empty): the mask loss would be "
                             f"0 for the whole run")
        if without and len(without) < len(instances):
            warnings.warn(f"{self.json_path}: {len(without)} of {len(instances)} annotations have no points "
                          f"(missing or empty point lists), ids {without[:10]}{' ...' if len(without) > 10 else ''}; "
                          f"they give no mask loss", stacklevel=3)
        outside_ids, outside_count = [], 0
        for inst in instances:
            if inst.points is None or len(inst.points[1]) == 0:
                continue
            x, y = inst.points[0][:, 0], inst.points[0][:, 1]  # continuous image coords
            x0, y0, x1, y1 = inst.box_xyxy
            n = int(((x < x0) | (x > x1) | (y < y0) | (y > y1)).sum())
            if n:
                outside_ids.append(inst.ann_id)
                outside_count += n
        if outside_count:
            warnings.warn(f"{self.json_path}: {outside_count} points in {len(outside_ids)} annotations lie outside "
                          f"their box, ids {outside_ids[:10]}{' ...' if len(outside_ids) > 10 else ''}; they are kept "
                          f"(the loss uses a point where a proposal covers it)", stacklevel=3)

    def _parse_annotation(
        self, ann: dict[str, Any], category_to_contiguous: dict[int, int], skipped_boxes: list[Any]
    ) -> _Instance | None:
        """Validate one annotation; None for crowd and (recorded) zero-area annotations."""
        src, ann_id = self.json_path, ann.get("id", "?")
        if not isinstance(ann, dict):
            raise ValueError(f"{src}: an annotations entry is not an object: {ann!r}")
        if ann.get("image_id") not in self._images:
            raise ValueError(f"{src}: annotation id {ann_id} refers to unknown image_id {ann.get('image_id')!r}")
        if ann.get("iscrowd", 0):
            return None  # crowd regions are never trained on
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise ValueError(f"{src}: annotation id {ann_id} has no valid bbox [x, y, w, h] (got {bbox!r})")
        if not all(_is_number(v) for v in bbox):
            raise ValueError(f"{src}: annotation id {ann_id} (image id {ann['image_id']}): bbox {bbox!r} must be four "
                             f"finite numbers")
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
        path = self._paths[image_id]
        image_np = load_image_rgb(path, image_id)  # (H, W, 3) uint8
        H, W = int(img["height"]), int(img["width"])
        if image_np.shape[:2] != (H, W):
            raise ValueError(
                f"{path} (image id {image_id}) is {image_np.shape[1]}x{image_np.shape[0]} but "
                f"{self.json_path} says {W}x{H}"
            )
        image = torch.from_numpy(image_np.copy()).permute(2, 0, 1)  # (3, H, W) uint8
        targets = self.load_targets(index)
        if self.transforms is not None:  # 8-bit until a float resize (or to the end: resize_image)
            image, targets = self.transforms(image, targets)
        return Sample(image=image.float(), targets=targets, image_id=image_id, orig_size=(H, W))
