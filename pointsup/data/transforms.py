"""Augmentations that move the image, boxes, masks and labelled points together.

Shape letters: M instances, P points per instance, H x W the image before, H' x W' after.

Every transform is a callable `(image (3, H, W) float32, targets) -> (image, targets)`.
All geometry is done in the continuous image frame of `pointsup.structures` (pixel (i, j)
covers [j, j+1) x [i, i+1)), so a point keeps lying in the same pixel content:
    resize  x' = x * W' / W        (image: bilinear, "torch" or "pil" backend, both with
                                    pixel-centre alignment; masks: nearest, the same alignment,
                                    `resize_masks`)
    flip    x' = W - x             (boxes: x0' = W - x1, x1' = W - x0)
    crop    x' = x - left          (points leaving the crop get label -1 = ignore)
Randomness comes from torch's global RNG, so each DataLoader worker (seeded differently by
PyTorch) draws different augmentations.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from pointsup.config import DataConfig
from pointsup.structures import IGNORE_LABEL, InstanceTargets
from pointsup.supervision import augment_points

Transform = Callable[[Tensor, InstanceTargets], tuple[Tensor, InstanceTargets]]


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, targets: InstanceTargets) -> tuple[Tensor, InstanceTargets]:
        for t in self.transforms:
            image, targets = t(image, targets)
        return image, targets

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


# How `resize_image` resamples the image (config `data.resize_backend`).
RESIZE_BACKENDS = ("torch", "pil", "torch_uint8")


def resized_shape(H: int, W: int, short_size: int, max_size: int) -> tuple[int, int]:
    """(H', W') with the short side `short_size`, long side capped at `max_size`.

    detectron2's rule with its float arithmetic (`ResizeShortestEdge.get_output_shape`): the
    short side is set first, then both sides are rescaled if the long one is too long, so a
    side that lands on exactly .5 rounds the same way as in detectron2.
    """
    scale = short_size / min(H, W)
    new_h, new_w = (float(short_size), scale * W) if H < W else (scale * H, float(short_size))
    if max(new_h, new_w) > max_size:
        cap = max_size / max(new_h, new_w)
        new_h, new_w = new_h * cap, new_w * cap
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


def resize_image(image: Tensor, size: tuple[int, int], backend: str = "torch") -> Tensor:
    """Bilinear resize of image (3, H, W) in [0, 255], uint8 or float, to size (H', W').

    All backends put pixel (i', j')'s centre at ((j' + 0.5) * W / W', (i' + 0.5) * H / H')
    and widen the filter when shrinking (antialiasing), so the boxes, masks and points moved
    by `resize` stay on the same content with any of them. They differ in the arithmetic:
      "torch":       `F.interpolate(..., antialias=True)` on the float image; float result.
      "pil":         PIL's bilinear resize of the image as 8 bits, 8-bit result: what
                     detectron2's `ResizeTransform` does to the uint8 image it reads, pixel for
                     pixel (its checkpoints were trained and evaluated on such pixels).
      "torch_uint8": `F.interpolate(..., antialias=True)` on the 8-bit image (torch's SIMD
                     uint8 kernel, ~3x faster than the float one on CPU); 8-bit result, within
                     one gray level of "torch" (the rounding to 8 bits).
    A float input to an 8-bit backend is rounded first (an image read from a file holds
    integers already). The caller converts the result with `.float()` when it needs floats
    (`CocoInstanceDataset`, `Predictor`): flips and crops after an 8-bit resize stay 8-bit.
    """
    H2, W2 = size
    if backend == "torch":
        image = F.interpolate(image[None].float(), size=(H2, W2), mode="bilinear", align_corners=False, antialias=True)[0]
        return image.clamp_(0.0, 255.0)  # in place: a second COCO-sized float image costs ~5% of a sample
    if backend not in RESIZE_BACKENDS:
        raise ValueError(f"resize backend must be one of {RESIZE_BACKENDS}, got {backend!r}")
    if image.dtype != torch.uint8:
        image = image.round().clamp(0, 255).to(torch.uint8)
    if backend == "torch_uint8":
        return F.interpolate(image[None], size=(H2, W2), mode="bilinear", align_corners=False, antialias=True)[0]
    pixels_hwc = image.permute(1, 2, 0).contiguous().numpy()  # (H, W, 3); no copy for a decoded image
    resized = Image.fromarray(pixels_hwc).resize((W2, H2), Image.BILINEAR)  # PIL takes (width, height)
    return torch.from_numpy(np.array(resized)).permute(2, 0, 1)  # (3, H', W') uint8


def nearest_source_index(size_in: int, size_out: int) -> Tensor:
    """(size_out,) int64: the source pixel that "nearest-exact" resizing reads for each output pixel.

    The source pixel is the one containing the output pixel's centre, floor((j' + 0.5) * W / W'),
    the continuous-frame mapping used for points. The indices come from `F.interpolate` itself
    (on a column of pixel numbers), so they match its float rounding exactly.
    """
    # float32 as the float masks were: the kernel's index arithmetic depends on the dtype (float64
    # picks a different pixel for a few size pairs, e.g. 336 -> 981).
    numbers = torch.arange(size_in, dtype=torch.float32).view(1, 1, size_in, 1)
    return F.interpolate(numbers, size=(size_out, 1), mode="nearest-exact").view(size_out).long()


def resize_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-exact resize of bool masks (M, H, W) -> (M, H', W') bool.

    The same pixels as `F.interpolate(masks[None].float(), size, mode="nearest-exact") > 0.5`,
    gathered as bytes instead: at COCO size (7 masks to ~720 x 960) that float round trip cost
    ~8 ms per image, the gather ~2.5 ms. Columns first: the per-byte gather then touches the
    shorter source rows, and the row gather copies whole rows.
    """
    M, H, W = masks.shape
    H2, W2 = size
    if M == 0:
        return torch.zeros(0, H2, W2, dtype=torch.bool)
    rows, cols = nearest_source_index(H, H2).numpy(), nearest_source_index(W, W2).numpy()
    return torch.from_numpy(masks.numpy().take(cols, axis=2).take(rows, axis=1))  # (M, H', W')


def resize(
    image: Tensor, targets: InstanceTargets, size: tuple[int, int], backend: str = "torch"
) -> tuple[Tensor, InstanceTargets]:
    """Resize image (3, H, W) and targets to size (H', W'); backend as in `resize_image`."""
    H, W = image.shape[-2:]
    H2, W2 = size
    if (H2, W2) == (H, W):
        return image, targets
    image = resize_image(image, (H2, W2), backend)
    sx, sy = W2 / W, H2 / H
    scale_xy = torch.tensor([sx, sy], dtype=torch.float32)
    masks = targets.masks
    if masks is not None:
        masks = resize_masks(masks, (H2, W2))
    return image, replace(
        targets,
        boxes=targets.boxes * scale_xy.repeat(2),
        masks=masks,
        point_coords=None if targets.point_coords is None else targets.point_coords * scale_xy,
        image_size=(H2, W2),
    )


class ResizeShortestEdge:
    """Resize so the short side is a random choice of `short_sizes`, long side <= `max_size`.

    backend: "torch", "pil" or "torch_uint8" (`resize_image`); "pil" with sizes [800] / 1333
    is detectron2's test-time resize exactly.
    """

    def __init__(self, short_sizes: Sequence[int], max_size: int, backend: str = "torch") -> None:
        if len(short_sizes) == 0:
            raise ValueError("short_sizes must not be empty")
        if backend not in RESIZE_BACKENDS:
            raise ValueError(f"resize backend must be one of {RESIZE_BACKENDS}, got {backend!r}")
        self.short_sizes = [int(s) for s in short_sizes]
        self.max_size = int(max_size)
        self.backend = backend

    def __call__(self, image: Tensor, targets: InstanceTargets) -> tuple[Tensor, InstanceTargets]:
        short = self.short_sizes[int(torch.randint(len(self.short_sizes), ()))]
        H, W = image.shape[-2:]
        return resize(image, targets, resized_shape(H, W, short, self.max_size), self.backend)

    def __repr__(self) -> str:
        return f"ResizeShortestEdge(short_sizes={self.short_sizes}, max_size={self.max_size}, backend={self.backend!r})"


def hflip(image: Tensor, targets: InstanceTargets) -> tuple[Tensor, InstanceTargets]:
    """Mirror image (3, H, W) and targets left-right: x' = W - x."""
    W = image.shape[-1]
    boxes = targets.boxes.clone()
    boxes[:, 0], boxes[:, 2] = W - targets.boxes[:, 2], W - targets.boxes[:, 0]
    point_coords = targets.point_coords
    if point_coords is not None:
        point_coords = point_coords.clone()
        point_coords[..., 0] = W - point_coords[..., 0]
    return image.flip(-1), replace(
        targets,
        boxes=boxes,
        masks=None if targets.masks is None else targets.masks.flip(-1),
        point_coords=point_coords,
    )


class RandomHorizontalFlip:
    """Flip left-right with probability p."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def __call__(self, image: Tensor, targets: InstanceTargets) -> tuple[Tensor, InstanceTargets]:
        if float(torch.rand(())) < self.p:
            return hflip(image, targets)
        return image, targets

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def crop(image: Tensor, targets: InstanceTargets, top: int, left: int, height: int, width: int) -> tuple[Tensor, InstanceTargets]:
    """Crop image (3, H, W) to rows [top, top+height), cols [left, left+width).

    Boxes are shifted and clipped to the crop; boxes that become empty are dropped together
    with their masks and points. Points outside the crop get label -1 (ignore), since the
    annotator's label refers to image content that is no longer there.
    """
    image = image[:, top : top + height, left : left + width]
    offset_xy = torch.tensor([left, top], dtype=torch.float32)
    boxes = targets.boxes - offset_xy.repeat(2)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # (M,)

    masks = targets.masks
    if masks is not None:
        masks = masks[:, top : top + height, left : left + width]
    point_coords, point_labels = targets.point_coords, targets.point_labels
    if point_coords is not None:
        point_coords = point_coords - offset_xy  # (M, P, 2)
        inside = (
            (point_coords[..., 0] >= 0) & (point_coords[..., 0] <= width)
            & (point_coords[..., 1] >= 0) & (point_coords[..., 1] <= height)
        )  # (M, P)
        point_labels = torch.where(inside, point_labels, torch.full_like(point_labels, IGNORE_LABEL))
    cropped = InstanceTargets(
        boxes=boxes,
        classes=targets.classes,
        image_size=(height, width),
        masks=masks,
        point_coords=point_coords,
        point_labels=point_labels,
    )
    return image, cropped[keep]


class RandomCrop:
    """Crop a random window of relative size (h, w) (fractions of the image side)."""

    def __init__(self, relative_size: Sequence[float]) -> None:
        rh, rw = (float(v) for v in relative_size)
        if not (0 < rh <= 1 and 0 < rw <= 1):
            raise ValueError(f"relative crop size must be in (0, 1], got {relative_size}")
        self.relative_size = (rh, rw)

    def __call__(self, image: Tensor, targets: InstanceTargets) -> tuple[Tensor, InstanceTargets]:
        H, W = image.shape[-2:]
        ch = max(1, int(H * self.relative_size[0] + 0.5))
        cw = max(1, int(W * self.relative_size[1] + 0.5))
        top = int(torch.randint(H - ch + 1, ()))
        left = int(torch.randint(W - cw + 1, ()))
        return crop(image, targets, top, left, ch, cw)

    def __repr__(self) -> str:
        return f"RandomCrop(relative_size={self.relative_size})"


class PointAugmentation:
    """Paper sec. 3.2: every iteration each box keeps a random K of its N points (default N // 2);
    the sampling is `pointsup.supervision.augment_points`."""

    def __init__(self, num_keep: int | None = None) -> None:
        if num_keep is not None and num_keep < 1:
            raise ValueError(f"num_keep must be >= 1 or None, got {num_keep}")
        self.num_keep = num_keep

    def __call__(self, image: Tensor, targets: InstanceTargets) -> tuple[Tensor, InstanceTargets]:
        if targets.point_coords is None:
            return image, targets
        coords, labels = augment_points(targets.point_coords, targets.point_labels, self.num_keep)
        return image, replace(targets, point_coords=coords, point_labels=labels)

    def __repr__(self) -> str:
        return f"PointAugmentation(num_keep={self.num_keep})"


def build_train_transforms(data_cfg: DataConfig) -> Compose:
    """Crop (optional) -> multi-scale resize -> flip (optional) -> point subsampling (optional)."""
    transforms: list[Transform] = []
    if data_cfg.random_crop:
        transforms.append(RandomCrop(data_cfg.crop_size))
    transforms.append(ResizeShortestEdge(data_cfg.min_size_train, data_cfg.max_size_train, data_cfg.resize_backend))
    if data_cfg.random_flip:
        transforms.append(RandomHorizontalFlip(0.5))
    if data_cfg.point_aug:
        transforms.append(PointAugmentation(data_cfg.point_aug_num or None))
    return Compose(transforms)


def build_test_transforms(data_cfg: DataConfig) -> Compose:
    """A single deterministic resize (used by evaluation, `predict` and self-training alike)."""
    return Compose([ResizeShortestEdge([data_cfg.min_size_test], data_cfg.max_size_test, data_cfg.resize_backend)])
