"""Where a mask head's supervision comes from (paper sec. 3): one module that every head calls.

`model.mask_head.supervision` picks one of two sources; the architecture never changes
(sec. 3.2: "such supervision does not require any changes to the model"):

  masks   full instance masks (COCO `segmentation`): dense S x S targets (Mask R-CNN, the
          coarse PointRend head), mask values at sampled points (the point heads), or
          image-level masks (CondInst).
  points  P_N point labels (COCO `point_coords` / `point_labels`, 1 object / 0 background):
          labels exist only at the annotated points. For R-CNN heads the points live in
          each RoI's box frame and a point outside its proposal box is ignored (sec. 3.2).

(BoxInst, `model.condinst.boxinst`, trains from the boxes alone.)

In the order the data meets them:
  `dataset_labels`            what the data set loads for a supervision, and must contain;
  `augment_points`            point augmentation (sec. 3.2): each iteration a random K of N;
  `stack_points`              the points of several images' instances in one padded tensor;
  `roi_point_targets`         R-CNN + points: each RoI's GT points in its box frame;
  `roi_mask_point_labels`     R-CNN + masks: each RoI's GT mask read at box-frame points;
  `roi_mask_grid_targets`     R-CNN + masks: each RoI's GT mask on an S x S grid.
The losses are pure functions in `pointsup.losses`. The point loss has one normalisation per
model family, on purpose:
  * R-CNN heads (`point_bce_loss`): sum over valid points / all R * P points, as detectron2's
    PointSup (`roi_mask_point_loss`). A proposal that covers few of its instance's points
    (the others are ignored as outside) then weighs less than one that covers them all.
  * CondInst (`condinst_losses.point_loss`): mean over the valid points. Its masks cover the
    whole image, so no point is ever outside; only padding is ignored, and with the same N
    for every instance (P_N) both definitions give the same number.

Shape letters: M GT instances, R RoIs (proposals matched to a GT, all images), P points per
instance (P' of them kept by point augmentation), S side of a mask grid.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from pointsup.ops.point_features import coords_box_to_img, coords_img_to_box, inside_unit_square, sample_mask_labels
from pointsup.structures import IGNORE_LABEL, InstanceTargets

SUPERVISIONS = ("masks", "points")


def check_supervision(supervision: str) -> str:
    if supervision not in SUPERVISIONS:
        raise ValueError(f"supervision must be one of {SUPERVISIONS}, got {supervision!r}")
    return supervision


# ---------------------------------------------------------------------------------------
# The data set's side of the pairing
# ---------------------------------------------------------------------------------------


class DatasetLabels(NamedTuple):
    """What a training set loads (`use_*`) and must contain (`require_*`) for a supervision."""

    use_masks: bool
    use_points: bool
    require_masks: bool
    require_points: bool


def dataset_labels(supervision: str, boxinst: bool = False) -> DatasetLabels:
    """masks -> masks (required); points -> points (required), never masks, so a point run
    cannot see a mask by accident; BoxInst -> boxes only."""
    if boxinst:
        return DatasetLabels(False, False, False, False)
    if check_supervision(supervision) == "masks":
        return DatasetLabels(True, False, True, False)
    return DatasetLabels(False, True, False, True)


# ---------------------------------------------------------------------------------------
# Point augmentation (a training transform calls it once per image)
# ---------------------------------------------------------------------------------------


def augment_points(point_coords: Tensor, point_labels: Tensor, num_keep: int | None) -> tuple[Tensor, Tensor]:
    """Keep a random subset of each instance's valid (label >= 0) points (paper sec. 3.2).

    point_coords (M, P, 2), point_labels (M, P) -> (M, P', 2), (M, P').
    num_keep=None: instance m keeps K_m = max(1, N_m // 2) of its N_m valid points (half the
    points, 5 of P_10), P' = max K_m. Otherwise P' = num_keep and each instance keeps
    min(num_keep, N_m). Unused slots are padded with label -1.
    """
    M, P = point_labels.shape
    valid = point_labels >= 0  # (M, P)
    num_valid = valid.sum(dim=1)  # (M,)
    if num_keep is None:
        keep_per_instance = torch.where(num_valid > 0, (num_valid // 2).clamp(min=1), num_valid)
        K = int(keep_per_instance.max()) if M > 0 else 0
    else:
        K = int(num_keep)
        keep_per_instance = num_valid.clamp(max=K)
    # A random permutation of the valid points first: random keys, invalid points last.
    keys = torch.rand(M, P) + (~valid).float() * 2.0
    order = keys.argsort(dim=1)[:, :K]  # (M, K') with K' = min(K, P)
    coords = torch.gather(point_coords, 1, order[..., None].expand(-1, -1, 2))
    labels = torch.gather(point_labels, 1, order)
    slot = torch.arange(order.shape[1])[None, :]  # (1, K')
    labels = torch.where(slot < keep_per_instance[:, None], labels, torch.full_like(labels, IGNORE_LABEL))
    if order.shape[1] < K:  # fewer columns than asked for: pad to K
        pad = K - order.shape[1]
        coords = torch.cat([coords, coords.new_zeros(M, pad, 2)], dim=1)
        labels = torch.cat([labels, labels.new_full((M, pad), IGNORE_LABEL)], dim=1)
    return coords, labels


# ---------------------------------------------------------------------------------------
# Targets of the heads
# ---------------------------------------------------------------------------------------


def stack_points(targets: list[InstanceTargets], instance_idxs: list[Tensor] | None = None,
                 pad_coord: float = 0.0) -> tuple[Tensor, Tensor]:
    """The points of the chosen instances of every image, concatenated over images.

    instance_idxs: per image (R_i,) indices into its instances (default: all of them).
    returns coords_img (R, P, 2) and labels (R, P), P the largest point count of any image
    (also when R == 0); shorter lists are padded with ignored (-1) points at `pad_coord`.
    """
    if instance_idxs is None:
        instance_idxs = [torch.arange(len(t), device=t.boxes.device) for t in targets]
    for t, idx in zip(targets, instance_idxs):
        if len(idx) and not t.has_points:
            raise ValueError("supervision='points' needs point_coords / point_labels in every target")
    P = max([t.point_coords.shape[1] for t in targets if t.has_points], default=0)
    coords_img, labels = [], []
    for t, idx in zip(targets, instance_idxs):
        if len(idx) == 0:
            continue
        pad = P - t.point_coords.shape[1]
        coords_img.append(F.pad(t.point_coords[idx], (0, 0, 0, pad), value=pad_coord))
        labels.append(F.pad(t.point_labels[idx], (0, pad), value=IGNORE_LABEL))
    if not coords_img:
        device = targets[0].boxes.device if targets else None
        return torch.zeros(0, P, 2, device=device), torch.zeros(0, P, device=device)
    return torch.cat(coords_img), torch.cat(labels)


def roi_point_targets(boxes: list[Tensor], targets: list[InstanceTargets], matched_idxs: list[Tensor]
                      ) -> tuple[Tensor, Tensor]:
    """Each RoI's GT points in its box frame (paper sec. 3.2, Fig. 2).

    boxes: per image (R_i, 4) proposals in image pixels; matched_idxs: per image (R_i,) the
    GT instance of each. returns coords_box (R, P, 2) and labels (R, P) with 1 / 0 / -1,
    where points outside their proposal box (and padding) are -1.
    """
    coords_img, labels = stack_points(targets, matched_idxs)  # (R, P, 2), (R, P)
    if coords_img.shape[0] == 0:
        return coords_img, labels
    coords_box = coords_img_to_box(coords_img, torch.cat(boxes).to(coords_img.dtype))  # (R, P, 2)
    labels = torch.where(inside_unit_square(coords_box), labels, IGNORE_LABEL)
    return coords_box, labels


def _masks_of(targets: InstanceTargets) -> Tensor:
    if not targets.has_masks:
        raise ValueError("supervision='masks' needs masks in the targets; use supervision='points' for point-only data")
    return targets.masks


def roi_mask_point_labels(boxes: list[Tensor], targets: list[InstanceTargets], matched_idxs: list[Tensor],
                          coords_box: Tensor) -> Tensor:
    """(R, P) soft labels: each RoI's GT mask bilinearly sampled at its box-frame points
    coords_box (R, P, 2) (the point heads trained with full masks)."""
    labels = []
    for boxes_i, targets_i, idx_i, coords_i in zip(boxes, targets, matched_idxs, coords_box.split([len(b) for b in boxes])):
        if len(idx_i) == 0:
            continue
        coords_img = coords_box_to_img(coords_i, boxes_i)  # (R_i, P, 2)
        labels.append(sample_mask_labels(_masks_of(targets_i), idx_i, coords_img))
    if not labels:
        return coords_box.new_zeros(coords_box.shape[:2])
    return torch.cat(labels)


def roi_mask_grid_targets(boxes: list[Tensor], targets: list[InstanceTargets], matched_idxs: list[Tensor],
                          side: int) -> Tensor:
    """(R, S, S) bool: each RoI's GT mask cut out by RoIAlign (aligned=True, so the
    samples sit at the grid's cell centres), thresholded at 0.5 (Mask R-CNN's target)."""
    out = []
    for boxes_i, targets_i, idx_i in zip(boxes, targets, matched_idxs):
        if len(idx_i) == 0:
            continue
        # Only the matched GT masks become float, once each (not once per RoI).
        used, which = idx_i.unique(return_inverse=True)
        masks = _masks_of(targets_i)[used].unsqueeze(1).to(boxes_i.dtype)  # (M', 1, H, W)
        rois = torch.cat([which[:, None].to(boxes_i.dtype), boxes_i], dim=1)  # (R_i, 5)
        cut = roi_align(masks, rois, output_size=side, spatial_scale=1.0, sampling_ratio=0, aligned=True)
        out.append(cut[:, 0] >= 0.5)
    if not out:
        device = boxes[0].device if boxes else None
        return torch.zeros(0, side, side, dtype=torch.bool, device=device)
    return torch.cat(out)
