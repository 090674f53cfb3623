"""Point-level losses of PointRend and Implicit PointRend (paper sec. 3.2 and 4).

Shape letters: R RoIs (foreground proposals of the whole batch), P points per RoI,
G generated parameters per RoI.

Pure functions: no logging, and every one returns a graph-connected zero when R == 0 so
that all parameters still receive (zero) gradients, as DDP requires.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..structures import IGNORE_LABEL


def point_bce_loss(point_logits: Tensor, gt_labels: Tensor) -> Tensor:
    """Binary cross-entropy at points, ignoring label -1.

    point_logits: (R, P) logits of each RoI's own class at its points.
    gt_labels:    (R, P) float, 1 object / 0 background / -1 ignore; values in between are
                  soft labels (bilinearly sampled masks).
    returns a scalar: the sum over valid points divided by R * P (all points, ignored ones
    included), as the reference's `weight=valid, reduction="mean"`. With P_N supervision
    this keeps the loss scale of a RoI independent of how many of its points fall outside
    the proposal box.
    """
    if point_logits.shape != gt_labels.shape:
        raise ValueError(f"logits {tuple(point_logits.shape)} vs labels {tuple(gt_labels.shape)}")
    if point_logits.numel() == 0:
        return point_logits.sum() * 0.0  # keep the graph for DDP
    valid = (gt_labels != IGNORE_LABEL).to(point_logits.dtype)
    return F.binary_cross_entropy_with_logits(
        point_logits, gt_labels.clamp(min=0.0).to(point_logits.dtype), weight=valid, reduction="mean"
    )


def params_l2_loss(params: Tensor, weight: float) -> Tensor:
    """Implicit PointRend's l2 on the generated point-head parameters (paper sec. 4).

    params: (R, G). The generated weights get no weight decay from the optimizer, so this
    keeps them bounded. Returns weight * mean(params ** 2), or a graph-connected 0 if R == 0.
    """
    if params.numel() == 0:
        return params.sum() * 0.0
    return weight * params.float().pow(2).mean()
