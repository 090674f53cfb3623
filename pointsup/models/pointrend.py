"""PointRend mask head (Kirillov et al. 2020), the baseline of paper sec. 4 (Fig. 7, left).

Shape letters: N images, R RoIs (all images concatenated), K classes, C feature channels,
P points per RoI, S x S a grid over each box.

    RoI features (R, C, 14, 14), point-sampled from p2
        -> coarse head (conv 2x2/2, fc 1024, fc 1024, fc K*7*7) -> coarse logits (R, K, 7, 7)
    points (R, P, 2) box-relative
        -> [p2 features at the points (R, C, P), coarse logits at the points (R, K, P)]
        -> point head (3 x [conv1d 1x1 256 + ReLU], coarse logits re-appended to every
           layer's input, conv1d 1x1 K) -> point logits (R, K, P)

Training points: with full masks (supervision "masks"), 196 points per RoI by importance
sampling on the coarse prediction of the GT class, labelled by sampling the GT mask; the
coarse head has its own dense 7 x 7 mask loss. With points ("points"), the annotated
points are the training points of both heads (sec. 3.2: points outside the proposal box
are ignored). Inference: adaptive subdivision to 224 x 224 (`subdivision.py`).

The coarse head (`ConvFCHead`), RoI pooling, chunked rendering and the point targets are
shared with Implicit PointRend and live in `point_head_common.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import MaskHeadConfig
from ..losses.mask_losses import mask_rcnn_dense_loss, point_mask_loss
from ..losses.point_losses import point_bce_loss
from ..ops.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
    point_sample_fine_grained_features,
    point_sampling_layout,
    uncertainty,
)
from ..structures import InstanceTargets
from ..supervision import check_supervision, roi_mask_grid_targets, roi_mask_point_labels, roi_point_targets
from .point_head_common import ConvFCHead, pool_roi_features, render_masks_in_chunks
from .subdivision import square_side, subdivision_inference


class StandardPointHead(nn.Module):
    """PointRend's point head: an MLP over points written as 1x1 conv1d.

    Input per point: fine-grained features (C) and the coarse logits of all K classes;
    the coarse logits are appended again to every hidden layer's input (PointRend's
    `coarse_pred_each_layer`), so the region-level context is never lost.
    """

    def __init__(self, fine_channels: int, num_classes: int, hidden_dim: int = 256, num_layers: int = 3):
        super().__init__()
        self.layers = nn.ModuleList()
        dim = fine_channels + num_classes
        for _ in range(num_layers):
            self.layers.append(nn.Conv1d(dim, hidden_dim, kernel_size=1))
            dim = hidden_dim + num_classes
        self.predictor = nn.Conv1d(dim, num_classes, kernel_size=1)
        for layer in self.layers:
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, fine_features: Tensor, coarse_features: Tensor) -> Tensor:
        """fine_features (R, C, P), coarse_features (R, K, P) -> point logits (R, K, P)."""
        x = torch.cat([fine_features, coarse_features], dim=1)
        for layer in self.layers:
            x = torch.cat([F.relu(layer(x)), coarse_features], dim=1)
        return self.predictor(x)


class PointRendMaskHead(nn.Module):
    """Coarse head + point head; the mask-head contract of docs/DESIGN.md.

    Training returns {"loss_mask": coarse loss, "loss_mask_point": point loss};
    eval returns per image (R_i, 224, 224) mask probabilities of the given classes,
    rendered `inference_chunk_size` (config `render_chunk_size`) detections at a time: with
    8 the point head's activations stay in cache (100 detections on one CPU core: 3.9 s vs
    7.8 s with 64).
    """

    def __init__(
        self,
        coarse_head: ConvFCHead,
        point_head: StandardPointHead,
        num_classes: int,
        in_feature: str = "p2",
        stride: int = 4,
        pooler_resolution: int = 14,
        coarse_resolution: int = 7,
        supervision: str = "masks",
        train_num_points: int = 14 * 14,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        subdivision_steps: int = 3,
        subdivision_num_points: int = 28 * 28,
        inference_chunk_size: int = 8,
    ):
        super().__init__()
        check_supervision(supervision)
        self.coarse_head = coarse_head
        self.point_head = point_head
        self.num_classes = num_classes
        self.in_feature = in_feature
        self.stride = stride
        self.pooler_resolution = pooler_resolution
        self.coarse_resolution = coarse_resolution
        self.supervision = supervision
        self.train_num_points = train_num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.subdivision_steps = subdivision_steps
        self.subdivision_num_points = subdivision_num_points
        self.subdivision_init_resolution = square_side(subdivision_num_points)
        self.inference_chunk_size = inference_chunk_size

    def forward(
        self,
        features: dict[str, Tensor],
        boxes: list[Tensor],
        classes: list[Tensor],
        targets: list[InstanceTargets] | None = None,
        matched_idxs: list[Tensor] | None = None,
    ) -> dict[str, Tensor] | list[Tensor]:
        fine = point_sampling_layout(features[self.in_feature])  # (N, C, H/stride, W/stride)
        if not self.training:
            return render_masks_in_chunks(self.predict_masks, fine, boxes, classes, self.inference_chunk_size)
        if targets is None or matched_idxs is None:
            raise ValueError("training needs targets and matched_idxs")

        gt_classes = torch.cat(classes)  # (R,)
        coarse_logits = self.coarse_logits(fine, boxes)  # (R, K, 7, 7)
        coarse_gt_class = select_class(coarse_logits, gt_classes)  # (R, 1, 7, 7)
        if self.supervision == "masks":
            gt_coarse = roi_mask_grid_targets(boxes, targets, matched_idxs, self.coarse_resolution)  # (R, 7, 7)
            loss_mask = mask_rcnn_dense_loss(coarse_gt_class[:, 0], gt_coarse)  # Mask R-CNN's loss at 7 x 7
            with torch.no_grad():
                coords_box = get_uncertain_point_coords_with_randomness(
                    coarse_gt_class.detach(), uncertainty, self.train_num_points,
                    self.oversample_ratio, self.importance_sample_ratio,
                )  # (R, P, 2)
                gt_labels = roi_mask_point_labels(boxes, targets, matched_idxs, coords_box)  # (R, P)
        else:
            # Sec. 3.2: the coarse prediction is supervised at the GT points too, by
            # bilinear interpolation of its 7 x 7 logits: Mask R-CNN's point loss.
            coords_box, gt_labels = roi_point_targets(boxes, targets, matched_idxs)  # (R, P, 2), (R, P)
            loss_mask = point_mask_loss(coarse_gt_class[:, 0], coords_box, gt_labels)

        point_logits = self.point_logits(fine, boxes, coords_box, coarse_logits)  # (R, K, P)
        point_logits = select_class(point_logits, gt_classes)[:, 0]  # (R, P)
        return {"loss_mask": loss_mask, "loss_mask_point": point_bce_loss(point_logits, gt_labels)}

    def coarse_logits(self, fine: Tensor, boxes: list[Tensor]) -> Tensor:
        """(R, K, 7, 7) coarse mask logits from 14 x 14 RoI features."""
        roi_features = pool_roi_features(fine, self.stride, boxes, self.pooler_resolution)  # (R, C, 14, 14)
        R, S = roi_features.shape[0], self.coarse_resolution
        return self.coarse_head(roi_features).view(R, self.num_classes, S, S)

    def point_logits(self, fine: Tensor, boxes: list[Tensor], coords_box: Tensor, coarse_logits: Tensor) -> Tensor:
        """Point head at box-relative points (R, P, 2) -> (R, K, P) logits."""
        fine_features = point_sample_fine_grained_features(fine, self.stride, boxes, coords_box)  # (R, C, P)
        coarse_features = point_sample(coarse_logits, coords_box)  # (R, K, P)
        return self.point_head(fine_features, coarse_features)

    def predict_masks(self, fine: Tensor, boxes: Tensor, classes: Tensor) -> Tensor:
        """One image's detections: fine (1, C, h, w), boxes (R, 4), classes (R,) -> (R, 224, 224) probs."""
        coarse_logits = self.coarse_logits(fine, [boxes])  # (R, K, 7, 7)

        def predict_fn(coords_box: Tensor) -> Tensor:
            logits = self.point_logits(fine, [boxes], coords_box, coarse_logits)  # (R, K, P)
            return select_class(logits, classes)[:, 0]  # (R, P)

        mask_logits = subdivision_inference(
            predict_fn, len(boxes), self.subdivision_init_resolution, self.subdivision_steps,
            self.subdivision_num_points, device=fine.device,
        )
        return mask_logits.sigmoid()


def build_pointrend_head(cfg: MaskHeadConfig, num_classes: int, in_channels: int, strides: dict[str, int]) -> PointRendMaskHead:
    coarse_head = ConvFCHead(
        in_channels=in_channels,
        in_resolution=cfg.pooler_resolution,
        conv_dim=cfg.conv_dim,
        fc_dim=cfg.coarse_fc_dim,
        num_fc=cfg.coarse_num_fc,
        out_dim=num_classes * cfg.coarse_resolution**2,
    )
    point_head = StandardPointHead(
        fine_channels=in_channels, num_classes=num_classes,
        hidden_dim=cfg.point_head_dim, num_layers=cfg.point_head_num_fc,
    )
    return PointRendMaskHead(
        coarse_head,
        point_head,
        num_classes=num_classes,
        in_feature=cfg.in_feature,
        stride=strides[cfg.in_feature],
        pooler_resolution=cfg.pooler_resolution,
        coarse_resolution=cfg.coarse_resolution,
        supervision=cfg.supervision,
        train_num_points=cfg.train_num_points,
        oversample_ratio=cfg.oversample_ratio,
        importance_sample_ratio=cfg.importance_sample_ratio,
        subdivision_steps=cfg.subdivision_steps,
        subdivision_num_points=cfg.subdivision_num_points,
        inference_chunk_size=cfg.render_chunk_size,
    )


def select_class(logits: Tensor, classes: Tensor) -> Tensor:
    """(R, K, ...) -> (R, 1, ...): each RoI's own class channel (any channel if K == 1)."""
    if logits.shape[1] == 1:
        return logits
    return logits[torch.arange(logits.shape[0], device=logits.device), classes].unsqueeze(1)

