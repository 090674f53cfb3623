"""Adaptive subdivision: PointRend's mask rendering at inference (paper sec. 4, Fig. 7).

Shape letters: R RoIs (detections), P points per RoI, S the side of a square grid.

Both PointRend and Implicit PointRend render their masks the same way; only the function
that predicts a logit at a point differs. So the algorithm takes that function:

    predict_fn(coords_box (R, P, 2)) -> logits (R, P)   (the detected class's logit)

1. Predict on the S0 x S0 grid of cell centres (S0 = 28 by default).
2. Repeat `steps` times: upsample the logits 2x bilinearly (align_corners=False, so the
   grid still covers the box exactly), take the `num_points` most uncertain cells
   (|logit| smallest: the interpolated boundary) and replace them by predictions at
   those cell centres. Elsewhere the interpolation is trusted: far from the boundary it
   cannot flip the sign.

With 28 -> 56 -> 112 -> 224 and 784 points per step, the point head is evaluated on
784 * 4 = 3,136 points per RoI instead of 224^2 = 50,176.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.point_features import get_uncertain_point_coords_on_grid, grid_coords, uncertainty

PredictFn = Callable[[Tensor], Tensor]


def output_resolution(init_resolution: int, steps: int) -> int:
    """Side of the rendered mask: each step doubles the grid."""
    return init_resolution * 2**steps


def square_side(num_points: int) -> int:
    """28 for 784: subdivision starts from a grid with as many cells as points per step."""
    side = int(round(num_points**0.5))
    if side * side != num_points:
        raise ValueError(f"subdivision_num_points must be a square, got {num_points}")
    return side


def subdivision_inference(
    predict_fn: PredictFn,
    num_rois: int,
    init_resolution: int = 28,
    steps: int = 3,
    num_points: int = 28 * 28,
    device: torch.device | str | None = None,
) -> Tensor:
    """Render (R, S, S) mask logits, S = init_resolution * 2**steps, by adaptive subdivision.

    predict_fn: coords_box (R, P, 2) -> logits (R, P) at those box-relative points.
    num_rois:   R; with R == 0 the result is an empty (0, S, S) tensor (predict_fn unused).
    """
    S_out = output_resolution(init_resolution, steps)
    if num_rois == 0:
        return torch.zeros(0, S_out, S_out, device=device)

    S = init_resolution
    coords_box = grid_coords(num_rois, S, device=device)  # (R, S*S, 2) row-major cell centres
    mask_logits = predict_fn(coords_box).reshape(num_rois, 1, S, S)
    for _ in range(steps):
        mask_logits = F.interpolate(mask_logits, scale_factor=2, mode="bilinear", align_corners=False)
        S *= 2
        point_indices, coords_box = get_uncertain_point_coords_on_grid(uncertainty(mask_logits), num_points)
        point_logits = predict_fn(coords_box).to(mask_logits.dtype)  # (R, P)
        mask_logits = mask_logits.reshape(num_rois, S * S).scatter(1, point_indices, point_logits)
        mask_logits = mask_logits.reshape(num_rois, 1, S, S)
    return mask_logits[:, 0]  # (R, S_out, S_out)
