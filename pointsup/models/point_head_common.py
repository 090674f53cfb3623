"""Pieces shared by the two point-based R-CNN mask heads: PointRend (`pointrend.py`) and
Implicit PointRend (`implicit_pointrend.py`). Each head imports them from here, never
from the other head.

Shape letters: N images, R RoIs (all images concatenated), C feature channels (p2),
P points per RoI, S x S a grid over each box.

  `ConvFCHead`              RoI features -> one vector per RoI: PointRend's coarse mask head,
                            and Implicit PointRend's parameter head (same architecture, sec. 4.3);
  `pool_roi_features`       their input: S x S p2 features per RoI, from one level;
  `render_masks_in_chunks`  inference: each image's detections rendered a chunk at a time.

Their training targets (annotated points, or GT masks read at points) come from
`pointsup.supervision`, as every head's do.

Adaptive subdivision, the rendering both heads share, is `subdivision.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.point_features import grid_coords, point_sample_fine_grained_features


class ConvFCHead(nn.Module):
    """PointRend's coarse mask head: RoI features -> one flat vector per RoI.

    (R, C, S, S) -> [1x1 conv to conv_dim + ReLU, only if C > conv_dim]
                 -> 2x2 stride-2 conv + ReLU (S -> S/2) -> num_fc x (fc + ReLU) -> fc out_dim
    PointRend reads the output as K x 7 x 7 coarse logits; Implicit PointRend as the
    flattened parameters of a point-head MLP.

    normalize_features=True scales the last fc output h to unit length before the output
    layer (Implicit PointRend's `params_feature_norm`, a pointsup deviation from the
    reference). Why: one SGD step on the output layer (W, b) moves the outputs of RoI r by
    -lr * sum_s g_s (h_s . h_r + 1), i.e. the generated parameters train at an effective LR
    of about lr * (1 + |h|^2). With raw fc features |h|^2 is 20-70 on the synthetic runs
    (measured) and grows with training, so the generated MLP -- whose output is a product
    of 4 layers of these parameters -- trains at 20-70x the base LR and eventually blows
    up (loss_params_l2 1e16 within two iterations). With |h| = 1 the factor is at most 2.
    """

    def __init__(self, in_channels: int, in_resolution: int, conv_dim: int, fc_dim: int, num_fc: int, out_dim: int,
                 normalize_features: bool = False):
        super().__init__()
        self.normalize_features = normalize_features
        if in_resolution % 2 != 0:
            raise ValueError(f"in_resolution must be even (2x2 stride-2 conv), got {in_resolution}")
        layers: list[nn.Module] = []
        channels = in_channels
        if in_channels > conv_dim:
            layers += [nn.Conv2d(in_channels, conv_dim, kernel_size=1), nn.ReLU(inplace=True)]
            channels = conv_dim
        layers += [nn.Conv2d(channels, conv_dim, kernel_size=2, stride=2), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        fcs: list[nn.Module] = []
        dim = conv_dim * (in_resolution // 2) ** 2
        for _ in range(num_fc):
            fcs += [nn.Linear(dim, fc_dim), nn.ReLU(inplace=True)]
            dim = fc_dim
        self.fcs = nn.Sequential(*fcs)
        self.prediction = nn.Linear(dim, out_dim)

        for m in self.convs:
            if isinstance(m, nn.Conv2d):  # detectron2's c2_msra_fill
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for m in self.fcs:
            if isinstance(m, nn.Linear):  # detectron2's c2_xavier_fill
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)
        # Small outputs at start: coarse logits near 0 / generated MLPs near 0.
        nn.init.normal_(self.prediction.weight, std=0.001)
        nn.init.zeros_(self.prediction.bias)

    def forward(self, roi_features: Tensor) -> Tensor:
        """(R, C, S, S) -> (R, out_dim)."""
        x = self.convs(roi_features)
        x = self.fcs(x.flatten(1))  # (R, fc_dim)
        if self.normalize_features:
            x = F.normalize(x, dim=1)  # unit length: bounded effective LR of the outputs
        return self.prediction(x)


def pool_roi_features(fine: Tensor, stride: int, boxes: list[Tensor], resolution: int) -> Tensor:
    """(R, C, S, S) RoI features by point-sampling a regular grid of S x S bin centres.

    PointRend's pooler: RoIAlign(aligned=True) with one sample per bin, from a single level
    (p2) for every box, unlike the box head's level-by-size assignment.
    """
    R = sum(len(b) for b in boxes)
    coords_box = grid_coords(R, resolution, device=fine.device)  # (R, S*S, 2)
    roi_features = point_sample_fine_grained_features(fine, stride, boxes, coords_box)  # (R, C, S*S)
    return roi_features.view(R, fine.shape[1], resolution, resolution)


def render_masks_in_chunks(predict_masks, fine: Tensor, boxes: list[Tensor], classes: list[Tensor], chunk_size: int) -> list[Tensor]:
    """Call predict_masks(fine_i (1, C, h, w), boxes (r, 4), classes (r,)) -> (r, S, S) per
    image on chunks of at most `chunk_size` detections; returns per image (R_i, S, S).

    Chunking bounds inference memory (Implicit PointRend generates ~283k parameters per
    detection for K = 80) without changing any result: RoIs never interact.
    """
    masks_per_image = []
    for i, (boxes_i, classes_i) in enumerate(zip(boxes, classes)):
        fine_i = fine[i : i + 1]
        if len(boxes_i) == 0:
            masks_per_image.append(predict_masks(fine_i, boxes_i, classes_i))  # (0, S, S)
            continue
        chunks = [
            predict_masks(fine_i, boxes_i[s : s + chunk_size], classes_i[s : s + chunk_size])
            for s in range(0, len(boxes_i), chunk_size)
        ]
        masks_per_image.append(torch.cat(chunks))
    return masks_per_image
