"""Batching `Sample`s into an `ImageBatch` (images zero-padded at the bottom/right).

Shape letters: N images, H_i x W_i image i, H_pad x W_pad the padded batch size.
Padding at the bottom/right keeps every image's continuous frame unchanged, so targets
(boxes, masks, points) need no change; masks are *not* padded (they stay (M, H_i, W_i)).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from pointsup.data.coco import Sample
from pointsup.structures import ImageBatch


def pad_images(images: Sequence[Tensor], size_divisibility: int = 32) -> Tensor:
    """List of (3, H_i, W_i) -> (N, 3, H_pad, W_pad), zero at bottom/right; H_pad, W_pad % d == 0."""
    if len(images) == 0:
        raise ValueError("cannot pad an empty list of images")
    H_max = max(im.shape[-2] for im in images)
    W_max = max(im.shape[-1] for im in images)
    if size_divisibility > 1:
        H_max = int(math.ceil(H_max / size_divisibility) * size_divisibility)
        W_max = int(math.ceil(W_max / size_divisibility) * size_divisibility)
    # Only the padding is zeroed: filling the whole batch first would write every pixel twice.
    batch = images[0].new_empty(len(images), images[0].shape[0], H_max, W_max)
    for i, im in enumerate(images):
        H_i, W_i = im.shape[-2:]
        batch[i, :, :H_i, :W_i] = im
        batch[i, :, :H_i, W_i:] = 0
        batch[i, :, H_i:, :] = 0
    return batch


def collate(samples: Sequence[Sample], size_divisibility: int = 32) -> ImageBatch:
    """`DataLoader(collate_fn=collate)`: list of Sample -> ImageBatch (targets kept per image)."""
    images = [s.image for s in samples]
    return ImageBatch(
        images=pad_images(images, size_divisibility),
        image_sizes=[(int(im.shape[-2]), int(im.shape[-1])) for im in images],
        targets=[s.targets for s in samples],
        image_ids=[int(s.image_id) for s in samples],
        orig_sizes=[tuple(s.orig_size) for s in samples],
    )
