"""Box arithmetic shared by the RPN and the ROI heads: delta coding, matching, sampling, NMS.

Shape letters (`pointsup.structures`): M GT boxes, R reference boxes (proposals, or the
A anchors of an image in the RPN), K classes, B candidate boxes of an NMS.
All boxes are (x0, y0, x1, y1) in continuous image pixels (`*_img` frame, see
`pointsup.structures`); width is x1 - x0 (no "+1" pixel convention).
"""

from __future__ import annotations

import math

import torch
import torchvision
from torch import Tensor

from .cpu_threads import can_split, map_on_threads

# detectron2's clamp on predicted log-scale deltas: a box can grow at most 1000/16 times.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class Box2BoxTransform:
    """Encodes a target box relative to a reference box as (dx, dy, dw, dh) and back.

    dx = wx * (x_t - x_r) / w_r, dw = ww * log(w_t / w_r) (same for y, h), where x is
    the box centre. The weights (wx, wy, ww, wh) scale deltas to unit-ish variance:
    (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the box head.
    """

    def __init__(self, weights: tuple[float, float, float, float], scale_clamp: float = DEFAULT_SCALE_CLAMP):
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def get_deltas(self, ref_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        """(R, 4) reference boxes, (R, 4) target boxes -> (R, 4) deltas."""
        ref_wh = ref_boxes[:, 2:] - ref_boxes[:, :2]
        ref_ctr = ref_boxes[:, :2] + 0.5 * ref_wh
        tgt_wh = target_boxes[:, 2:] - target_boxes[:, :2]
        tgt_ctr = target_boxes[:, :2] + 0.5 * tgt_wh
        wxy = ref_boxes.new_tensor(self.weights[:2])
        wwh = ref_boxes.new_tensor(self.weights[2:])
        d_ctr = wxy * (tgt_ctr - ref_ctr) / ref_wh
        d_wh = wwh * torch.log(tgt_wh / ref_wh)
        return torch.cat([d_ctr, d_wh], dim=1)

    def apply_deltas(self, deltas: Tensor, ref_boxes: Tensor) -> Tensor:
        """(R, 4k) deltas (k boxes per reference, e.g. one per class), (R, 4) boxes -> (R, 4k)."""
        R, k = deltas.shape[0], deltas.shape[1] // 4
        deltas = deltas.float().view(R, k, 4)  # (R, k, 4); explicit k so that R = 0 works
        ref_boxes = ref_boxes.to(deltas.dtype)
        ref_wh = (ref_boxes[:, 2:] - ref_boxes[:, :2])[:, None]  # (R, 1, 2)
        ref_ctr = ref_boxes[:, None, :2] + 0.5 * ref_wh
        wxy = deltas.new_tensor(self.weights[:2])
        wwh = deltas.new_tensor(self.weights[2:])
        d_ctr = deltas[..., :2] / wxy
        d_wh = (deltas[..., 2:] / wwh).clamp(max=self.scale_clamp)  # avoid exp overflow
        ctr = d_ctr * ref_wh + ref_ctr
        wh = torch.exp(d_wh) * ref_wh
        return torch.cat([ctr - 0.5 * wh, ctr + 0.5 * wh], dim=-1).view(R, 4 * k)


class Matcher:
    """Assigns each prediction (anchor / proposal) to its best GT box by IoU.

    thresholds [t0, ..., tn] split the IoU axis into intervals [-inf, t0), [t0, t1), ...,
    [tn, inf); labels gives one label per interval (1 = foreground, 0 = background,
    -1 = ignore). With `allow_low_quality_matches`, every GT box also claims the
    predictions it overlaps most, even below the foreground threshold, so that no GT box
    is left without a positive (Faster R-CNN sec. 3.1.2).
    """

    def __init__(self, thresholds: list[float], labels: list[int], allow_low_quality_matches: bool = False):
        if len(labels) != len(thresholds) + 1:
            raise ValueError("need one label per IoU interval: len(labels) == len(thresholds) + 1")
        if list(thresholds) != sorted(thresholds):
            raise ValueError(f"thresholds must be increasing, got {thresholds}")
        self.thresholds = [-float("inf"), *thresholds, float("inf")]
        self.labels = list(labels)
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: Tensor) -> tuple[Tensor, Tensor]:
        """iou: (M, R) GT x prediction -> matched_idxs (R,) int64 in [0, M), labels (R,) int8.

        With no GT boxes (M = 0) every prediction gets index 0 and the lowest label
        (background); callers must not read the GT at those indices.
        """
        M, R = iou.shape
        if M == 0:
            matched_idxs = iou.new_zeros(R, dtype=torch.int64)
            return matched_idxs, iou.new_full((R,), self.labels[0], dtype=torch.int8)
        matched_vals, matched_idxs = iou.max(dim=0)  # (R,)
        labels = matched_idxs.new_full((R,), 1, dtype=torch.int8)
        for label, low, high in zip(self.labels, self.thresholds[:-1], self.thresholds[1:]):
            in_interval = (matched_vals >= low) & (matched_vals < high)
            labels[in_interval] = label
        if self.allow_low_quality_matches:
            # Predictions tied for the best IoU of some GT become positive (detectron2 keeps
            # their argmax match, not the GT that claims them).
            best_per_gt = iou.max(dim=1, keepdim=True).values  # (M, 1)
            is_best = (iou == best_per_gt) & (best_per_gt > 0)
            labels[is_best.any(dim=0)] = 1
        return matched_idxs, labels


def subsample_labels(labels: Tensor, num_samples: int, positive_fraction: float, bg_label: int) -> tuple[Tensor, Tensor]:
    """Randomly pick at most `num_samples` labels, at most `positive_fraction` of them positive.

    labels: (R,) int; -1 = ignore, `bg_label` = negative, anything else = positive.
    Returns (pos_idx, neg_idx), int64 indices into labels. Negatives fill the slots the
    positives leave free.
    """
    positive = torch.nonzero((labels != -1) & (labels != bg_label)).squeeze(1)
    negative = torch.nonzero(labels == bg_label).squeeze(1)
    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)
    perm_pos = torch.randperm(positive.numel(), device=labels.device)[:num_pos]
    perm_neg = torch.randperm(negative.numel(), device=labels.device)[:num_neg]
    return positive[perm_pos], negative[perm_neg]


def box_regression_loss(pred_deltas: Tensor, gt_deltas: Tensor, smooth_l1_beta: float) -> Tensor:
    """Summed L1 (beta = 0, detectron2's default) or smooth-L1 loss over (R, 4) deltas."""
    if smooth_l1_beta < 1e-5:
        return torch.nn.functional.l1_loss(pred_deltas, gt_deltas, reduction="sum")
    return torch.nn.functional.smooth_l1_loss(pred_deltas, gt_deltas, beta=smooth_l1_beta, reduction="sum")


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """torchvision.ops.batched_nms: the same indices in the same order, faster on CPU for many groups.

    boxes: (B, 4) xyxy; scores: (B,); groups: (B,) int, NMS runs within each group (a class,
    or an FPN level in the RPN). returns (B_kept,) int64 indices, by decreasing score.

    Above 1000 CPU boxes torchvision runs `nms` per group, finding each group's boxes with a
    full `idxs == g` pass (80 passes over 80,000 boxes at a COCO box head with score
    threshold 0). Here one stable sort by group finds them all, and with T > 1 torch threads
    the groups' `nms` calls (single-threaded kernels) run on T threads
    (`pointsup.ops.cpu_threads`); the kept indices go through torchvision's own final sort,
    in torchvision's input order, so ties between equal scores resolve alike.
    """
    if boxes.device.type != "cpu" or boxes.numel() <= 4000 or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return torchvision.ops.batched_nms(boxes, scores, groups, iou_threshold)  # torchvision's other branch
    order = torch.argsort(groups, stable=True)  # (B,) each group's boxes in input order
    counts = torch.unique_consecutive(groups[order], return_counts=True)[1].tolist()
    members = order.split(counts)  # per group: (B_g,) indices into boxes
    def kept_in(idx: Tensor) -> Tensor:  # (B_g,) -> (B_g_kept,) indices into boxes
        return idx[torchvision.ops.nms(boxes[idx], scores[idx], iou_threshold)]

    kept = map_on_threads(kept_in, members) if can_split(boxes) else [kept_in(idx) for idx in members]
    keep = torch.cat(kept).sort().values  # ascending, as torchvision's torch.where(keep_mask)
    return keep[scores[keep].sort(descending=True)[1]]
