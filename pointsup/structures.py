"""Per-image targets and batches shared by the data pipeline and every model.

Shape letters used throughout pointsup (one meaning each; a module may add its own
letters, but never reuses one of these for something else):
    N  images in a batch
    M  GT instances (annotations) in one image
    R  RoIs fed to a head: proposals in training, detections at inference; all images
       concatenated, R_i of image i (R = sum_i R_i)
    D  detections kept in one image: the rows of a model's output dict
    P  points per instance / per RoI
    K  classes (foreground only; a (K + 1)-way classifier puts background at index K)
    C  feature channels
    H, W  image (or feature map) height and width in pixels
    S  side of a square grid on a box: a RoIAlign output or a predicted mask, (R, S, S)
    A  anchors of one image, all FPN levels and locations concatenated
    B  anchors per location (one per aspect ratio)
    Q  locations of one image over all FPN levels (FCOS / CondInst)
    G  generated (dynamic) parameters per instance: Implicit PointRend's point head,
       CondInst's mask FCN (`pointsup.ops.dynamic_mlp`)

Coordinate frames (the suffix of a variable name says which one it is in):
    *_img   continuous image pixels, x right, y down. Pixel (row i, col j) covers
            [j, j+1) x [i, i+1), so its centre is (j + 0.5, i + 0.5).
    *_box   [0, 1] x [0, 1] relative to a box: (0, 0) is the box's top-left corner,
            (1, 1) its bottom-right corner.
    boxes are always (x0, y0, x1, y1) ("xyxy") in the *_img frame.

Point labels: 1 = object, 0 = background, -1 = ignore (padding when instances have
different numbers of points, or points removed by a crop).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

IGNORE_LABEL = -1.0


@dataclass
class InstanceTargets:
    """Ground truth of one image, in the frame of the (transformed) input image.

    boxes:         (M, 4) float32, xyxy in image pixels.
    classes:       (M,) int64, contiguous class ids in [0, K).
    masks:         (M, H, W) bool full-image bitmasks, or None (point-only data).
    point_coords:  (M, P, 2) float32, (x, y) in image pixels (continuous frame), or None.
    point_labels:  (M, P) float32 with 1 / 0 / -1 (object / background / ignore), or None.
    image_size:    (H, W) of the image these targets belong to (before batch padding).
    """

    boxes: Tensor
    classes: Tensor
    image_size: tuple[int, int]
    masks: Tensor | None = None
    point_coords: Tensor | None = None
    point_labels: Tensor | None = None

    def __post_init__(self) -> None:
        M = self.boxes.shape[0]
        if self.boxes.shape != (M, 4):
            raise ValueError(f"boxes must be (M, 4), got {tuple(self.boxes.shape)}")
        if self.classes.shape != (M,):
            raise ValueError(f"classes must be (M,), got {tuple(self.classes.shape)}")
        if self.masks is not None and self.masks.shape[0] != M:
            raise ValueError(f"masks must have M={M} rows, got {tuple(self.masks.shape)}")
        if (self.point_coords is None) != (self.point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        if self.point_coords is not None:
            P = self.point_coords.shape[1] if self.point_coords.dim() == 3 else -1
            if self.point_coords.shape != (M, P, 2) or self.point_labels.shape != (M, P):
                raise ValueError(
                    "point_coords must be (M, P, 2) and point_labels (M, P), got "
                    f"{tuple(self.point_coords.shape)} and {tuple(self.point_labels.shape)}"
                )

    def __len__(self) -> int:
        return self.boxes.shape[0]

    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    @property
    def has_points(self) -> bool:
        return self.point_coords is not None

    def __getitem__(self, index: Tensor | slice | list[int]) -> "InstanceTargets":
        """Select instances (rows); the image size stays the same."""
        return InstanceTargets(
            boxes=self.boxes[index],
            classes=self.classes[index],
            image_size=self.image_size,
            masks=None if self.masks is None else self.masks[index],
            point_coords=None if self.point_coords is None else self.point_coords[index],
            point_labels=None if self.point_labels is None else self.point_labels[index],
        )

    def map_tensors(self, fn) -> "InstanceTargets":
        """The same targets with `fn` applied to every tensor (absent fields stay None)."""
        fields = ("boxes", "classes", "masks", "point_coords", "point_labels")
        return replace(self, **{f: None if getattr(self, f) is None else fn(getattr(self, f)) for f in fields})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "InstanceTargets":
        return self.map_tensors(lambda t: t.to(device, non_blocking=non_blocking))

    @staticmethod
    def empty(image_size: tuple[int, int], with_masks: bool = False, num_points: int | None = None) -> "InstanceTargets":
        """Targets of an image with no objects."""
        H, W = image_size
        return InstanceTargets(
            boxes=torch.zeros(0, 4),
            classes=torch.zeros(0, dtype=torch.int64),
            image_size=image_size,
            masks=torch.zeros(0, H, W, dtype=torch.bool) if with_masks else None,
            point_coords=None if num_points is None else torch.zeros(0, num_points, 2),
            point_labels=None if num_points is None else torch.zeros(0, num_points),
        )


@dataclass
class ImageBatch:
    """A padded batch of images, as produced by `pointsup.data.collate`.

    images:       (N, 3, H_pad, W_pad) float32 RGB in [0, 255] (not normalised: the model
                  subtracts its own pixel mean/std, so weights keep their conventions).
                  H_pad and W_pad are multiples of 32; padding is zero at bottom/right.
    image_sizes:  per image (H, W) before padding (the frame of targets and predictions).
    targets:      per image InstanceTargets, or None at inference.
    image_ids:    per image id in the source JSON (-1 when unknown).
    orig_sizes:   per image (H, W) of the file on disk, before resizing (for evaluation).
    """

    images: Tensor
    image_sizes: list[tuple[int, int]]
    targets: list[InstanceTargets] | None = None
    image_ids: list[int] = field(default_factory=list)
    orig_sizes: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "ImageBatch":
        return replace(
            self,
            images=self.images.to(device, non_blocking=non_blocking),
            targets=None if self.targets is None else [t.to(device, non_blocking) for t in self.targets],
        )

    def pin_memory(self) -> "ImageBatch":
        """Page-locked copies of the images and of every target tensor, so that `to(cuda,
        non_blocking=True)` overlaps with compute. Called by DataLoader(pin_memory=True)."""
        targets = None if self.targets is None else [t.map_tensors(Tensor.pin_memory) for t in self.targets]
        return replace(self, images=self.images.pin_memory(), targets=targets)
