"""Mask losses of R-CNN mask heads: the dense Mask R-CNN loss and the paper's point loss.

Shape letters: R foreground RoIs (all images concatenated), S side of the predicted mask
grid (28 for Mask R-CNN), P points per RoI, M GT instances, H x W image.

A RoI's S x S logits cover its box exactly (see `pointsup.ops.point_features`): cell
(i, j) has its centre at coords_box = ((j + 0.5) / S, (i + 0.5) / S).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from ..ops.point_features import coords_img_to_box, inside_unit_square, point_sample
from ..structures import IGNORE_LABEL
from .point_losses import point_bce_loss


def crop_masks_to_boxes(gt_masks: Tensor, boxes_xyxy: Tensor, matched_idxs: Tensor, side: int) -> Tensor:
    """Cut the dense S x S training targets of Mask R-CNN from full-image GT masks.

    gt_masks (M, H, W) bool, boxes_xyxy (R, 4) img, matched_idxs (R,) index into M.
    returns (R, S, S) float in {0, 1}: RoIAlign (aligned=True, so samples sit at the grid's
    cell centres in the `*_img` frame) of the float mask, thresholded at 0.5.
    """
    R = boxes_xyxy.shape[0]
    if R == 0:
        return boxes_xyxy.new_zeros(0, side, side)
    rois = torch.cat([matched_idxs.to(boxes_xyxy)[:, None], boxes_xyxy], dim=1)  # (R, 5), batch idx = GT idx
    masks = gt_masks[:, None].to(boxes_xyxy.dtype)  # (M, 1, H, W)
    cropped = roi_align(masks, rois, (side, side), spatial_scale=1.0, sampling_ratio=0, aligned=True)
    return (cropped[:, 0] >= 0.5).to(boxes_xyxy.dtype)


def mask_rcnn_dense_loss(mask_logits: Tensor, gt_masks_box: Tensor) -> Tensor:
    """Full-mask supervision: per-cell BCE, averaged over all R * S * S cells.

    mask_logits (R, S, S) of each RoI's GT class; gt_masks_box (R, S, S) in {0, 1} from
    `crop_masks_to_boxes`. No foreground RoI in the batch gives an exact zero that keeps
    every mask-head parameter in the graph (DDP).
    """
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0  # keep graph for DDP
    return F.binary_cross_entropy_with_logits(mask_logits, gt_masks_box.to(mask_logits.dtype), reduction="mean")


def point_mask_loss(mask_logits: Tensor, boxes_xyxy: Tensor, gt_point_coords_img: Tensor, gt_point_labels: Tensor) -> Tensor:
    """Point supervision (paper sec. 3.2, Fig. 2): BCE on the logits interpolated at GT points.

    mask_logits (R, S, S) of each RoI's GT class, boxes_xyxy (R, 4) the RoIs (proposals) in
    image pixels, gt_point_coords_img (R, P, 2) the points of each RoI's matched GT instance
    in image pixels, gt_point_labels (R, P) with 1 / 0 / -1 (object / background / ignore).

    The logits are read at the points by bilinear interpolation of the S x S grid
    (grid_sample, align_corners=False: the box edges are the grid's outer cell edges), so
    the gradient flows back to the 4 neighbouring cells of every point.

    Normalisation follows detectron2's PointSup (`roi_mask_point_loss`: BCE with a 0/1
    weight, reduction "mean"): the sum over valid points is divided by *all* R * P points,
    including ignored ones and points outside the box. With the points on the S x S cell
    centres this equals `mask_rcnn_dense_loss`.
    """
    R, P = gt_point_labels.shape
    if R == 0 or P == 0:
        return mask_logits.sum() * 0  # keep graph for DDP
    coords_box = coords_img_to_box(gt_point_coords_img.to(boxes_xyxy.dtype), boxes_xyxy)  # (R, P, 2)
    # Sec. 3.2: GT points outside the proposal box are ignored, like padded (-1) points.
    labels = torch.where(inside_unit_square(coords_box), gt_point_labels, IGNORE_LABEL)  # (R, P)
    point_logits = point_sample(mask_logits[:, None], coords_box)[:, 0]  # (R, P)
    return point_bce_loss(point_logits, labels)
