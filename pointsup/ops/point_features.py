"""Sampling features and logits at continuous points (paper Fig. 2, PointRend).

Shape letters: R RoIs (or images), C channels, P points, H x W a feature map or grid.

Frames (see `pointsup.structures`):
    coords_box  (R, P, 2) (x, y) in [0, 1] relative to each RoI box.
    coords_img  (R, P, 2) (x, y) in continuous image pixels.

A grid of logits predicted for a box (e.g. Mask R-CNN's 28 x 28) is treated as covering
the box exactly: its outer cell edges are the box edges, so cell (i, j) has its centre at
coords_box = ((j + 0.5) / W, (i + 0.5) / H). This is `grid_sample(align_corners=False)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def point_sample(inputs: Tensor, coords: Tensor, align_corners: bool = False) -> Tensor:
    """Bilinearly sample `inputs` at normalised [0, 1] coordinates.

    inputs: (R, C, H, W) one map per RoI (or per image).
    coords: (R, P, 2) (x, y) in [0, 1] over the map's extent (box-relative when the map is
            a RoI prediction, image-relative when it is an image-level map).
    returns (R, C, P). Points outside [0, 1] read zero padding.
    """
    if coords.dim() != 3 or coords.shape[-1] != 2:
        raise ValueError(f"coords must be (R, P, 2), got {tuple(coords.shape)}")
    grid = 2.0 * coords.unsqueeze(2) - 1.0  # (R, P, 1, 2) in grid_sample's [-1, 1] frame
    out = F.grid_sample(inputs, grid.to(inputs.dtype), mode="bilinear", padding_mode="zeros", align_corners=align_corners)
    return out.squeeze(3)  # (R, C, P)


def coords_img_to_box(coords_img: Tensor, boxes_xyxy: Tensor) -> Tensor:
    """(R, P, 2) image pixels -> (R, P, 2) box-relative [0, 1] coords of each RoI's box (R, 4)."""
    x0y0 = boxes_xyxy[:, None, :2]
    wh = (boxes_xyxy[:, None, 2:] - boxes_xyxy[:, None, :2]).clamp(min=1e-6)
    return (coords_img - x0y0) / wh


def coords_box_to_img(coords_box: Tensor, boxes_xyxy: Tensor) -> Tensor:
    """(R, P, 2) box-relative [0, 1] coords -> (R, P, 2) image pixels, given boxes (R, 4)."""
    x0y0 = boxes_xyxy[:, None, :2]
    wh = boxes_xyxy[:, None, 2:] - boxes_xyxy[:, None, :2]
    return coords_box * wh + x0y0


def inside_unit_square(coords_box: Tensor) -> Tensor:
    """(R, P, 2) -> (R, P) bool: the point lies inside its box (edges included)."""
    return ((coords_box >= 0.0) & (coords_box <= 1.0)).all(dim=-1)


def grid_coords(R: int, side: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Cell centres of a side x side grid over a box: (R, side*side, 2) box-relative, row-major."""
    centres = (torch.arange(side, device=device, dtype=dtype) + 0.5) / side
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    coords = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)  # (side*side, 2)
    return coords.unsqueeze(0).expand(R, -1, -1)


def uncertainty(logits: Tensor) -> Tensor:
    """PointRend's uncertainty: -|logit|, highest (0) on the decision boundary. Any shape."""
    return -logits.abs()
