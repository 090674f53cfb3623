"""Mask losses of CondInst: full masks (dice), points (paper sec. 3.2) and boxes (BoxInst).

CondInst predicts one image-level mask per instance at stride 4 of the padded input. All
losses here compare such maps with targets on the same grid, or at continuous points.

Shape letters: S sampled positive locations (one mask each), P points per instance,
H4 x W4 the stride-4 mask grid of the padded image, A the neighbours of a pixel in the
pairwise term (kernel_size**2 - 1).

Frames: a stride-4 cell (i, j) covers image pixels [4j, 4j + 4) x [4i, 4i + 4), so its
centre is at (4j + 2, 4i + 2) in the continuous `*_img` frame of `pointsup.structures`.
Every loss is a pure function and returns a scalar that stays in the autograd graph
even when there is nothing to supervise (`sum() * 0`), so DDP sees every parameter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pointsup.ops.point_features import point_sample
from pointsup.structures import IGNORE_LABEL


def dice_loss(mask_probs: Tensor, gt_masks: Tensor, eps: float = 1e-5) -> Tensor:
    """CondInst's dice loss, 1 - 2|X.Y| / (|X|^2 + |Y|^2), averaged over instances.

    mask_probs: (S, ...) probabilities after the sigmoid.
    gt_masks:   (S, ...) same shape, in [0, 1] (soft targets from average pooling are fine).
    returns a scalar. Dice is insensitive to the foreground/background imbalance of a
    whole-image mask, which is why CondInst uses it instead of per-pixel BCE.
    """
    if mask_probs.shape != gt_masks.shape:
        raise ValueError(f"shape mismatch {tuple(mask_probs.shape)} vs {tuple(gt_masks.shape)}")
    S = mask_probs.shape[0]
    if S == 0:
        return mask_probs.sum() * 0.0  # keep graph for DDP
    x = mask_probs.reshape(S, -1)
    y = gt_masks.reshape(S, -1).to(x.dtype)
    intersection = (x * y).sum(dim=1)
    union = (x * x).sum(dim=1) + (y * y).sum(dim=1) + eps
    return (1.0 - 2.0 * intersection / union).mean()


def point_loss(mask_logits: Tensor, point_coords_img: Tensor, point_labels: Tensor, mask_stride: int) -> Tensor:
    """Per-point BCE at the GT points of each instance (paper sec. 3.2, Fig. 2).

    mask_logits:      (S, 1, H4, W4) logits over the padded image at stride `mask_stride`.
    point_coords_img: (S, P, 2) (x, y) in continuous image pixels.
    point_labels:     (S, P) 1 / 0 / -1 (object / background / ignore).
    returns the mean BCE over the valid (label != -1) points of all S instances: every
    annotated point weighs the same. CondInst's masks cover the whole image, so no point is
    ever "outside"; only padding is ignored, and with P_N (the same N for every instance)
    this equals the R-CNN heads' mean over all points (`point_bce_loss`, detectron2's
    PointSup). Why the two differ otherwise: `pointsup.supervision`.

    The logit grid covers [0, W4 * stride) x [0, H4 * stride) with cell centres at
    stride * (j + 0.5), so image pixels map to the map's [0, 1] extent by dividing by
    (W4 * stride, H4 * stride) and are read with grid_sample(align_corners=False).
    """
    S, _, H4, W4 = mask_logits.shape
    valid = point_labels != IGNORE_LABEL  # (S, P)
    if S == 0 or not bool(valid.any()):
        return mask_logits.sum() * 0.0  # keep graph for DDP
    extent = point_coords_img.new_tensor([W4 * mask_stride, H4 * mask_stride])
    coords_map = point_coords_img / extent  # (S, P, 2) in [0, 1] over the padded image
    point_logits = point_sample(mask_logits, coords_map).squeeze(1)  # (S, P)
    losses = F.binary_cross_entropy_with_logits(
        point_logits, point_labels.clamp(min=0.0).to(point_logits.dtype), reduction="none"
    )
    return (losses * valid).sum() / valid.sum()


def projection_loss(mask_probs: Tensor, gt_box_masks: Tensor, inside_box: bool = False) -> Tensor:
    """BoxInst's projection term: the mask's max-projections onto x and y match the box's.

    mask_probs:   (S, 1, H4, W4) probabilities.
    gt_box_masks: (S, 1, H4, W4) 1 inside each instance's GT box, 0 outside.
    inside_box:   pointsup's variant (`CondInst`'s `boxinst_inside_box`, not BoxInst's): the
                  mean of this term and the same term on the mask cropped to its GT box.
    returns a scalar: dice of the projection onto the x axis plus dice onto the y axis.
    The projection of a tight box equals the projection of the object's true mask, so
    this term is a correct (if weak) constraint from the box alone: every pixel outside
    the box lies in a row or a column the box does not span, and is pushed to background.
    It is also nearly met by masks that are not on the object at all: a strip along the
    image's top row over the box's columns plus one along the left column over its rows
    has the box's projections plus row 0 and column 0, a small dice error. Cropped to the
    box such masks project to nothing and cost the full loss; the uncropped half keeps the
    push outside the box (the background the pairwise term carves the object's shape from).
    """
    if mask_probs.shape[0] == 0:
        return mask_probs.sum() * 0.0  # keep graph for DDP
    loss = _projection_dice(mask_probs, gt_box_masks)
    if inside_box:
        loss = 0.5 * (loss + _projection_dice(mask_probs * gt_box_masks, gt_box_masks))
    return loss


def _projection_dice(mask_probs: Tensor, gt_box_masks: Tensor) -> Tensor:
    loss_x = dice_loss(mask_probs.amax(dim=2), gt_box_masks.amax(dim=2))  # project onto x
    loss_y = dice_loss(mask_probs.amax(dim=3), gt_box_masks.amax(dim=3))  # project onto y
    return loss_x + loss_y


def unfold_neighbours(x: Tensor, kernel_size: int, dilation: int) -> Tensor:
    """The kernel_size**2 - 1 dilated neighbours of every pixel (the centre left out).

    x: (N, C, H, W) -> (N, C, A, H, W), zero outside the map.
    """
    N, C, H, W = x.shape
    padding = (kernel_size + (dilation - 1) * (kernel_size - 1)) // 2
    unfolded = F.unfold(x, kernel_size=kernel_size, padding=padding, dilation=dilation)
    unfolded = unfolded.reshape(N, C, kernel_size * kernel_size, H, W)
    centre = kernel_size * kernel_size // 2
    return torch.cat([unfolded[:, :, :centre], unfolded[:, :, centre + 1 :]], dim=2)


def pairwise_loss(mask_logits: Tensor, pair_weights: Tensor, kernel_size: int, dilation: int) -> Tensor:
    """BoxInst's pairwise term: neighbours of similar colour should get the same label.

    mask_logits:  (S, 1, H4, W4) logits.
    pair_weights: (S, A, H4, W4) 1 where the edge (pixel, neighbour) is supervised: the
                  pixel lies in the GT box and the colour similarity is >= a threshold.
    returns the weighted mean of -log P(same label), P = p_i p_j + (1 - p_i)(1 - p_j),
    computed in log space for stability.
    """
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0.0  # keep graph for DDP
    log_fg = F.logsigmoid(mask_logits)  # (S, 1, H4, W4)
    log_bg = F.logsigmoid(-mask_logits)
    log_fg_nb = unfold_neighbours(log_fg, kernel_size, dilation)  # (S, 1, A, H4, W4)
    log_bg_nb = unfold_neighbours(log_bg, kernel_size, dilation)
    log_same_fg = log_fg[:, :, None] + log_fg_nb
    log_same_bg = log_bg[:, :, None] + log_bg_nb
    log_same = torch.logaddexp(log_same_fg, log_same_bg)[:, 0]  # (S, A, H4, W4)
    return -(log_same * pair_weights).sum() / pair_weights.sum().clamp(min=1.0)


def rgb_to_lab(images_rgb: Tensor) -> Tensor:
    """sRGB in [0, 255] -> CIE L*a*b* (D65), as skimage.color.rgb2lab. (N, 3, H, W) -> same."""
    rgb = (images_rgb / 255.0).clamp(0.0, 1.0)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    rgb_to_xyz = rgb.new_tensor(
        [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
    )
    xyz = torch.einsum("ij,njhw->nihw", rgb_to_xyz, linear)
    xyz = xyz / rgb.new_tensor([0.95047, 1.0, 1.08883]).view(1, 3, 1, 1)  # D65 white point
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-12) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    L = 116.0 * f[:, 1] - 16.0
    a = 500.0 * (f[:, 0] - f[:, 1])
    b = 200.0 * (f[:, 1] - f[:, 2])
    return torch.stack([L, a, b], dim=1)


def color_similarity(images_lab: Tensor, valid: Tensor, kernel_size: int, dilation: int) -> Tensor:
    """BoxInst's colour affinity exp(-||lab_i - lab_j|| / 2) to each dilated neighbour.

    images_lab: (N, 3, H4, W4); valid: (N, 1, H4, W4) 1 on real (unpadded) pixels.
    returns (N, A, H4, W4), 0 for neighbours that fall on padding.
    """
    neighbours = unfold_neighbours(images_lab, kernel_size, dilation)  # (N, 3, A, H4, W4)
    distance = torch.norm(images_lab[:, :, None] - neighbours, dim=1)  # (N, A, H4, W4)
    valid_nb = unfold_neighbours(valid, kernel_size, dilation)[:, 0]  # (N, A, H4, W4)
    return torch.exp(-0.5 * distance) * valid_nb * valid
