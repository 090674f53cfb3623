"""Region Proposal Network (Faster R-CNN) over FPN levels, with detectron2's defaults.

Shape letters: N images, A anchors of one image (all levels and locations concatenated),
B anchors per location (one size x 3 aspect ratios), M GT boxes of an image, R proposals.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou, clip_boxes_to_image

from ..config import RPNConfig
from ..ops.boxes import Box2BoxTransform, Matcher, batched_nms, box_regression_loss, subsample_labels
from ..structures import InstanceTargets
from .anchors import AnchorGenerator


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then 1x1 convs for B objectness logits and 4B box deltas."""

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(in_channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.objectness_logits, self.anchor_deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """features: per level (N, C, H_l, W_l) -> per level logits (N, H_l*W_l*B), deltas (N, H_l*W_l*B, 4).

        The (H_l, W_l, B) flattening order matches `AnchorGenerator`.
        """
        logits, deltas = [], []
        for x in features:
            N, _, H, W = x.shape
            t = F.relu(self.conv(x), inplace=True)  # in place: no second (N, C, H_l, W_l) map
            logits.append(self.objectness_logits(t).permute(0, 2, 3, 1).reshape(N, -1))
            d = self.anchor_deltas(t).view(N, -1, 4, H, W)  # (N, B, 4, H, W)
            deltas.append(d.permute(0, 3, 4, 1, 2).reshape(N, -1, 4))
        return logits, deltas


def rpn_losses(
    pred_logits: Tensor, pred_deltas: Tensor, gt_labels: Tensor, gt_deltas: Tensor, normalizer: float, smooth_l1_beta: float
) -> dict[str, Tensor]:
    """Objectness BCE over sampled anchors and box-delta L1 over positive anchors.

    pred_logits (N, A), pred_deltas (N, A, 4), gt_labels (N, A) with 1 / 0 / -1 (positive /
    negative / not sampled), gt_deltas (N, A, 4). Both sums are divided by `normalizer`
    (= samples per image x N, like detectron2), so an image with no objects still gives a
    finite objectness loss from its negatives and a zero box loss.
    """
    sampled = gt_labels >= 0
    positive = gt_labels == 1
    loss_cls = F.binary_cross_entropy_with_logits(pred_logits[sampled], gt_labels[sampled].to(pred_logits.dtype), reduction="sum")
    loss_loc = box_regression_loss(pred_deltas[positive], gt_deltas[positive], smooth_l1_beta)
    return {"loss_rpn_cls": loss_cls / normalizer, "loss_rpn_loc": loss_loc / normalizer}


class RPN(nn.Module):
    """Anchors -> objectness + deltas -> top-k / NMS proposals (detached) and, in training, losses."""

    def __init__(
        self,
        in_features: list[str],
        head: RPNHead,
        anchor_generator: AnchorGenerator,
        box2box: Box2BoxTransform,
        matcher: Matcher,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_topk: tuple[int, int] = (2000, 1000),  # (train, test), per level
        post_nms_topk: tuple[int, int] = (1000, 1000),  # (train, test), per image
        nms_thresh: float = 0.7,
        min_box_size: float = 0.0,
        smooth_l1_beta: float = 0.0,
    ):
        super().__init__()
        self.in_features = list(in_features)
        self.head = head
        self.anchor_generator = anchor_generator
        self.box2box = box2box
        self.matcher = matcher
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.pre_nms_topk = pre_nms_topk
        self.post_nms_topk = post_nms_topk
        self.nms_thresh = nms_thresh
        self.min_box_size = min_box_size
        self.smooth_l1_beta = smooth_l1_beta

    def forward(
        self, features: dict[str, Tensor], image_sizes: list[tuple[int, int]], targets: list[InstanceTargets] | None = None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Returns per image proposals (R_i, 4) xyxy img (sorted by objectness, no grad) and losses."""
        features_per_level = [features[f] for f in self.in_features]
        anchors_per_level = self.anchor_generator([tuple(x.shape[-2:]) for x in features_per_level])
        logits_per_level, deltas_per_level = self.head(features_per_level)
        proposals = self.predict_proposals(anchors_per_level, logits_per_level, deltas_per_level, image_sizes)
        if not self.training:
            return proposals, {}
        if targets is None:
            raise ValueError("RPN in training mode needs targets")
        gt_labels, gt_deltas = self.label_anchors(torch.cat(anchors_per_level), targets)
        losses = rpn_losses(
            torch.cat(logits_per_level, dim=1),
            torch.cat(deltas_per_level, dim=1),
            gt_labels,
            gt_deltas,
            normalizer=self.batch_size_per_image * len(targets),
            smooth_l1_beta=self.smooth_l1_beta,
        )
        return proposals, losses

    @torch.no_grad()
    def label_anchors(self, anchors: Tensor, targets: list[InstanceTargets]) -> tuple[Tensor, Tensor]:
        """anchors (A, 4) -> gt_labels (N, A) int8 (1 / 0 / -1 = pos / neg / unsampled), gt_deltas (N, A, 4)."""
        gt_labels, gt_deltas = [], []
        for t in targets:
            gt_boxes = t.boxes.to(anchors)
            matched_idxs, labels = self.matcher(box_iou(gt_boxes, anchors))  # (A,), (A,)
            pos_idx, neg_idx = subsample_labels(labels, self.batch_size_per_image, self.positive_fraction, bg_label=0)
            sampled = torch.full_like(labels, -1)
            sampled[pos_idx] = 1
            sampled[neg_idx] = 0
            # With no GT, regress anchors onto themselves (zero deltas; never positive anyway).
            matched_boxes = gt_boxes[matched_idxs] if len(gt_boxes) else anchors
            gt_labels.append(sampled)
            gt_deltas.append(self.box2box.get_deltas(anchors, matched_boxes))
        return torch.stack(gt_labels), torch.stack(gt_deltas)

    @torch.no_grad()
    def predict_proposals(
        self,
        anchors_per_level: list[Tensor],
        logits_per_level: list[Tensor],
        deltas_per_level: list[Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> list[Tensor]:
        """Top-k anchors per level -> decode -> clip -> drop empty -> NMS per level -> top-k per image."""
        pre_topk = self.pre_nms_topk[0 if self.training else 1]
        post_topk = self.post_nms_topk[0 if self.training else 1]
        boxes_all, scores_all, levels_all = [], [], []
        for level, (anchors, logits, deltas) in enumerate(zip(anchors_per_level, logits_per_level, deltas_per_level)):
            N, A_l = logits.shape
            k = min(pre_topk, A_l)
            top_logits, top_idx = logits.topk(k, dim=1)  # (N, k) each, sorted
            top_deltas = deltas.gather(1, top_idx[..., None].expand(-1, -1, 4))  # (N, k, 4)
            top_anchors = anchors[top_idx]  # (N, k, 4)
            boxes = self.box2box.apply_deltas(top_deltas.reshape(-1, 4), top_anchors.reshape(-1, 4))
            boxes_all.append(boxes.view(N, k, 4))
            scores_all.append(top_logits)
            levels_all.append(torch.full((k,), level, dtype=torch.int64, device=logits.device))
        boxes_all = torch.cat(boxes_all, dim=1)  # (N, sum_k, 4)
        scores_all = torch.cat(scores_all, dim=1).float()  # (N, sum_k)
        levels_all = torch.cat(levels_all)  # (sum_k,)

        proposals = []
        for boxes, scores, image_size in zip(boxes_all, scores_all, image_sizes):
            boxes = clip_boxes_to_image(boxes, image_size)
            wh = boxes[:, 2:] - boxes[:, :2]
            keep = (wh > self.min_box_size).all(dim=1) & torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
            boxes, scores, levels = boxes[keep], scores[keep], levels_all[keep]
            keep = batched_nms(boxes, scores, levels, self.nms_thresh)[:post_topk]  # sorted by score
            proposals.append(boxes[keep])
        return proposals


def build_rpn(cfg: RPNConfig, in_channels: int, strides: dict[str, int]) -> RPN:
    """RPN over the levels p2..p6 (one anchor size per level, in order)."""
    in_features = [f"p{i}" for i in range(2, 2 + len(cfg.anchor_sizes))]
    missing = [f for f in in_features if f not in strides]
    if missing:
        raise ValueError(f"backbone has no {missing} for {len(cfg.anchor_sizes)} anchor sizes")
    anchor_generator = AnchorGenerator(
        cfg.anchor_sizes, cfg.aspect_ratios, [strides[f] for f in in_features],
        round_cell_anchors=cfg.round_anchors, stride_from_grid=cfg.anchor_stride_from_grid,
    )
    iou_low, iou_high = cfg.iou_thresholds
    return RPN(
        in_features=in_features,
        head=RPNHead(in_channels, anchor_generator.num_anchors),
        anchor_generator=anchor_generator,
        box2box=Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0)),
        matcher=Matcher([iou_low, iou_high], [0, -1, 1], allow_low_quality_matches=True),
        batch_size_per_image=cfg.batch_size_per_image,
        positive_fraction=cfg.positive_fraction,
        pre_nms_topk=(cfg.pre_nms_topk_train, cfg.pre_nms_topk_test),
        post_nms_topk=(cfg.post_nms_topk_train, cfg.post_nms_topk_test),
        nms_thresh=cfg.nms_thresh,
        min_box_size=cfg.min_box_size,
        smooth_l1_beta=cfg.smooth_l1_beta,
    )
