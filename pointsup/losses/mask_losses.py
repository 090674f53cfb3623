"""Mask losses of R-CNN mask heads: the dense Mask R-CNN loss and the paper's point loss.

Shape letters: R foreground RoIs (all images concatenated), S side of the predicted mask
grid (28 for Mask R-CNN), P points per RoI, M GT instances, H x W image.

A RoI's S x S logits cover its box exactly (see `pointsup.ops.point_features`): cell
(i, j) has its centre at coords_box = ((j + 0.5) / S, (i + 0.5) / S).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..ops.point_features import point_sample
from .point_losses import point_bce_loss


def mask_rcnn_dense_loss(mask_logits: Tensor, gt_masks_box: Tensor) -> Tensor:
    """Full-mask supervision: per-cell BCE, averaged over all R * S * S cells.

    mask_logits (R, S, S) of each RoI's GT class; gt_masks_box (R, S, S) in {0, 1} from
    `pointsup.supervision.roi_mask_grid_targets`. No foreground RoI in the batch gives an exact zero that keeps
    every mask-head parameter in the graph (DDP).
    """
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0  # keep graph for DDP
    return F.binary_cross_entropy_with_logits(mask_logits, gt_masks_box.to(mask_logits.dtype), reduction="mean")


def point_mask_loss(mask_logits: Tensor, coords_box: Tensor, gt_labels: Tensor) -> Tensor:
    """Point supervision (paper sec. 3.2, Fig. 2): BCE on the logits interpolated at GT points.

    mask_logits (R, S, S) of each RoI's GT class; coords_box (R, P, 2) the GT points in each
    RoI's box frame and gt_labels (R, P) 1 / 0 / -1 (object / background / ignored), as
    `pointsup.supervision.roi_point_targets` makes them (points outside the box: -1).

    The logits are read at the points by bilinear interpolation of the S x S grid
    (grid_sample, align_corners=False: the box edges are the grid's outer cell edges), so
    the gradient flows back to the 4 neighbouring cells of every point.

    Normalisation follows detectron2's PointSup (`roi_mask_point_loss`: BCE with a 0/1
    weight, reduction "mean"): the sum over valid points is divided by *all* R * P points,
    including ignored ones and points outside the box. With the points on the S x S cell
    centres this equals `mask_rcnn_dense_loss`.
    """
    R, P = gt_labels.shape
    if R == 0 or P == 0:
        return mask_logits.sum() * 0  # keep graph for DDP
    point_logits = point_sample(mask_logits[:, None], coords_box.to(mask_logits.dtype))[:, 0]  # (R, P)
    return point_bce_loss(point_logits, gt_labels)
