"""Mask R-CNN mask head, trained with full masks or with the paper's point labels.

Shape letters: N images, R RoIs (all images concatenated; R_i of image i), C channels,
K classes, S = 28 side of the predicted grid, P points per instance, M GT instances.

The head predicts, for each RoI, K class-specific S x S logit grids that cover the RoI's
box (`*_box` frame). Which supervision is used is a config choice; the architecture is
the same (paper sec. 3.2: "such supervision does not require any changes to the
architecture").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import MaskHeadConfig
from ..losses.mask_losses import mask_rcnn_dense_loss, point_mask_loss
from ..ops.roi_pooler import ROIPooler
from ..structures import InstanceTargets
from ..supervision import check_supervision, roi_mask_grid_targets, roi_point_targets

class MaskRCNNHead(nn.Module):
    """ROIAlign 14x14 -> num_conv x (conv3x3 + ReLU) -> 2x deconv + ReLU -> 1x1 conv to K x 28 x 28."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        strides: dict[str, int],
        conv_dim: int = 256,
        num_conv: int = 4,
        pooler_resolution: int = 14,
        supervision: str = "points",
        in_features: tuple[str, ...] = ("p2", "p3", "p4", "p5"),
        pooler_aligned: bool = True,
        pooler_sampling_ratio: int = 0,
        pooler_level_mapper: str = "detectron2",
    ):
        super().__init__()
        self.in_features = [f for f in in_features if f in strides]
        self.supervision = check_supervision(supervision)
        self.pooler = ROIPooler(
            pooler_resolution, [1.0 / strides[f] for f in self.in_features], sampling_ratio=pooler_sampling_ratio,
            aligned=pooler_aligned, level_mapper=pooler_level_mapper,
        )
        convs = []
        for i in range(num_conv):
            convs += [nn.Conv2d(in_channels if i == 0 else conv_dim, conv_dim, 3, padding=1), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*convs)
        self.deconv = nn.ConvTranspose2d(conv_dim if num_conv else in_channels, conv_dim, 2, stride=2)
        self.predictor = nn.Conv2d(conv_dim, num_classes, 1)
        for m in [*self.convs, self.deconv]:
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(
        self,
        features: dict[str, Tensor],
        boxes: list[Tensor],
        classes: list[Tensor],
        targets: list[InstanceTargets] | None = None,
        matched_idxs: list[Tensor] | None = None,
    ) -> dict[str, Tensor] | list[Tensor]:
        """Training: boxes = foreground proposals, classes = their GT classes -> {"loss_mask"}.

        Eval: boxes / classes = detections -> per image (R_i, S, S) mask probabilities.
        """
        x = self.pooler([features[f] for f in self.in_features], boxes)  # (R, C, 14, 14)
        x = F.relu(self.deconv(self.convs(x)), inplace=True)  # (R, conv_dim, 28, 28)
        mask_logits = self.class_logits(x, torch.cat(classes))  # (R, S, S)
        if self.training:
            return {"loss_mask": self.loss(mask_logits, boxes, targets, matched_idxs)}
        return list(mask_logits.sigmoid().split([len(b) for b in boxes]))

    def class_logits(self, x: Tensor, classes: Tensor) -> Tensor:
        """The 1x1 predictor for each RoI's own class only: x (R, C, S, S), classes (R,) -> (R, S, S).

        Equals self.predictor(x)[r, classes[r]] up to summation order, without computing the
        other K - 1 classes' grids that would be thrown away (K = 80 on COCO: 80x less work).
        """
        weight = self.predictor.weight[classes, :, 0, 0]  # (R, C)
        return torch.einsum("rchw,rc->rhw", x, weight) + self.predictor.bias[classes][:, None, None]

    def loss(self, mask_logits: Tensor, boxes: list[Tensor], targets: list[InstanceTargets], matched_idxs: list[Tensor]) -> Tensor:
        """mask_logits (R, S, S) of the GT classes; boxes / matched_idxs per image (R_i, ...)."""
        if targets is None or matched_idxs is None:
            raise ValueError("mask head in training mode needs targets and matched_idxs")
        if mask_logits.shape[0] == 0:
            return mask_logits.sum() * 0  # no foreground RoI in the batch: keep graph for DDP
        if self.supervision == "points":
            coords_box, gt_labels = roi_point_targets(boxes, targets, matched_idxs)  # (R, P, 2), (R, P)
            return point_mask_loss(mask_logits, coords_box, gt_labels)
        gt_masks_box = roi_mask_grid_targets(boxes, targets, matched_idxs, mask_logits.shape[-1])  # (R, S, S)
        return mask_rcnn_dense_loss(mask_logits, gt_masks_box)


def build_mask_rcnn_head(cfg: MaskHeadConfig, num_classes: int, in_channels: int, strides: dict[str, int]) -> MaskRCNNHead:
    return MaskRCNNHead(
        in_channels=in_channels,
        num_classes=num_classes,
        strides=strides,
        conv_dim=cfg.conv_dim,
        num_conv=cfg.num_conv,
        pooler_resolution=cfg.pooler_resolution,
        supervision=cfg.supervision,
        pooler_aligned=cfg.pooler_aligned,
        pooler_sampling_ratio=cfg.pooler_sampling_ratio,
        pooler_level_mapper=cfg.pooler_level_mapper,
    )
