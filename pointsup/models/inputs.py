"""Input preparation shared by every meta-architecture (R-CNN family and CondInst).

Shape letters: N images, H x W the padded batch size (see `pointsup.data.collate`).

Images always reach a model as RGB values in 0..255, padded below and to the right. The
backbone's weights fix what it must see instead:

  input_format         "RGB" (torchvision, pointsup) or "BGR" (detectron2's MSRA weights);
                       a BGR model flips the channels first, and its pixel_mean / pixel_std
                       are given in BGR order too, as detectron2 writes them.
  pixel_mean / std     subtracted / divided per channel.
  pad_after_normalize  the padding is 0 *after* normalisation (torchvision, detectron2)
                       instead of 0 before it (pointsup's original convention, which leaves
                       -mean / std there).

A model keeps pixel_mean / pixel_std as non-persistent buffers (they follow `.to(device)`
but are not in its checkpoints, so changing them never breaks loading) and calls
`normalize_images` on them.
"""

from __future__ import annotations

import torch
from torch import Tensor

INPUT_FORMATS = ("RGB", "BGR")


def check_input_format(input_format: str) -> str:
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format must be 'RGB' or 'BGR', got {input_format!r}")
    return input_format


def pixel_stat(values: list[float]) -> Tensor:
    """Three per-channel values -> a (1, 3, 1, 1) float tensor that broadcasts over a batch."""
    if len(values) != 3:
        raise ValueError(f"expected one value per channel (3), got {values}")
    return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1)


def normalize_images(
    images: Tensor,
    image_sizes: list[tuple[int, int]],
    pixel_mean: Tensor,
    pixel_std: Tensor,
    input_format: str = "RGB",
    pad_after_normalize: bool = False,
) -> Tensor:
    """RGB 0..255 images (N, 3, H, W) -> the normalised input (N, 3, H, W) the weights expect.

    image_sizes: per image (h, w) before padding (only read with pad_after_normalize).
    pixel_mean, pixel_std: (1, 3, 1, 1) in `input_format` channel order.
    """
    if check_input_format(input_format) == "BGR":
        images = images.flip(1)  # channel order of the weights (pixel_mean/std are BGR too)
    x = (images - pixel_mean) / pixel_std
    if pad_after_normalize:  # torchvision / detectron2 pad the normalised image with 0
        x = x.clone()
        for i, (h, w) in enumerate(image_sizes):
            x[i, :, h:, :] = 0
            x[i, :, :, w:] = 0
    return x
