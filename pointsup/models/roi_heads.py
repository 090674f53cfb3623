"""Fast R-CNN box head and the ROI-heads stage that feeds the mask head (detectron2 defaults).

Shape letters: N images, R RoIs (all images concatenated; R_i of image i), C channels,
K foreground classes (class K = background), M GT instances of an image, D detections.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou, clip_boxes_to_image

from ..config import ROIHeadsConfig
from ..ops.boxes import Box2BoxTransform, Matcher, batched_nms, box_regression_loss, subsample_labels
from ..ops.roi_pooler import ROIPooler
from ..structures import InstanceTargets


class BoxHead(nn.Module):
    """Flattened RoI features -> num_fc x (fc + ReLU)."""

    def __init__(self, in_channels: int, resolution: int, fc_dim: int = 1024, num_fc: int = 2):
        super().__init__()
        dims = [in_channels * resolution * resolution] + [fc_dim] * num_fc
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        for fc in self.fcs:
            nn.init.kaiming_uniform_(fc.weight, a=1)  # detectron2's c2_xavier_fill
            nn.init.zeros_(fc.bias)
        self.out_dim = dims[-1]

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)  # (R, C * S * S)
        for fc in self.fcs:
            x = F.relu(fc(x), inplace=True)
        return x  # (R, fc_dim)


class FastRCNNPredictor(nn.Module):
    """(R, D) -> class logits (R, K + 1) and class-specific box deltas (R, 4K)."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(in_dim, 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


def fast_rcnn_losses(
    class_logits: Tensor, box_deltas: Tensor, gt_classes: Tensor, gt_deltas: Tensor, smooth_l1_beta: float
) -> dict[str, Tensor]:
    """Softmax CE over all sampled RoIs + box regression of the GT class on foreground RoIs.

    class_logits (R, K + 1), box_deltas (R, 4K), gt_classes (R,) in [0, K] (K = background),
    gt_deltas (R, 4). The box loss is summed over foreground RoIs and divided by R (all
    sampled RoIs, like detectron2), so background-only batches give a zero box loss.
    """
    R, K = box_deltas.shape[0], box_deltas.shape[1] // 4
    if R == 0:
        zero = class_logits.sum() * 0 + box_deltas.sum() * 0  # keep graph for DDP
        return {"loss_cls": zero, "loss_box_reg": zero}
    loss_cls = F.cross_entropy(class_logits, gt_classes, reduction="mean")
    fg_idx = torch.nonzero(gt_classes < K).squeeze(1)
    fg_deltas = box_deltas.view(R, K, 4)[fg_idx, gt_classes[fg_idx]]  # (R_fg, 4) of the GT class
    loss_box_reg = box_regression_loss(fg_deltas, gt_deltas[fg_idx], smooth_l1_beta) / R
    return {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg}


@dataclass
class SampledRoIs:
    """Training RoIs of one image: boxes (R_i, 4), gt_classes (R_i,) in [0, K],
    matched_idxs (R_i,) into the image's GT, gt_deltas (R_i, 4) box-regression targets."""

    boxes: Tensor
    gt_classes: Tensor
    matched_idxs: Tensor
    gt_deltas: Tensor


class ROIHeads(nn.Module):
    """Proposals -> (train) sampled RoIs and box + mask losses, (eval) detections with mask probs."""

    def __init__(
        self,
        in_features: list[str],
        box_pooler: ROIPooler,
        box_head: BoxHead,
        box_predictor: FastRCNNPredictor,
        mask_head: nn.Module,
        num_classes: int,
        box2box: Box2BoxTransform,
        matcher: Matcher,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_image: int = 100,
        smooth_l1_beta: float = 0.0,
        min_box_size: float = 0.0,
    ):
        super().__init__()
        self.min_box_size = min_box_size  # detections narrower/shorter than this are dropped
        self.in_features = list(in_features)
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.mask_head = mask_head
        self.num_classes = num_classes
        self.box2box = box2box
        self.matcher = matcher
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image
        self.smooth_l1_beta = smooth_l1_beta

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[InstanceTargets] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Training: ([], losses). Eval: (per image detections incl. `pred_mask_probs` (D, S, S), {})."""
        if self.training:
            if targets is None:
                raise ValueError("ROIHeads in training mode needs targets")
            rois = self.sample_rois(proposals, targets)
            class_logits, box_deltas = self.box_predictor(self.box_features(features, [r.boxes for r in rois]))
            losses = fast_rcnn_losses(
                class_logits, box_deltas, torch.cat([r.gt_classes for r in rois]), torch.cat([r.gt_deltas for r in rois]), self.smooth_l1_beta
            )
            # The mask head is trained on the foreground RoIs only, each with its GT class.
            fg = [r.gt_classes < self.num_classes for r in rois]
            losses.update(
                self.mask_head(
                    features, [r.boxes[m] for r, m in zip(rois, fg)], [r.gt_classes[m] for r, m in zip(rois, fg)],
                    targets, [r.matched_idxs[m] for r, m in zip(rois, fg)],
                )
            )
            return [], losses
        class_logits, box_deltas = self.box_predictor(self.box_features(features, proposals))
        detections = self.predict_boxes(class_logits, box_deltas, proposals, image_sizes)
        mask_probs = self.mask_head(features, [d["pred_boxes"] for d in detections], [d["pred_classes"] for d in detections])
        for d, probs in zip(detections, mask_probs):
            d["pred_mask_probs"] = probs  # (D, S, S) on the box grid; pasted by postprocess
        return detections, {}

    def box_features(self, features: dict[str, Tensor], boxes: list[Tensor]) -> Tensor:
        """Per image boxes (R_i, 4) -> (R, fc_dim)."""
        return self.box_head(self.box_pooler([features[f] for f in self.in_features], boxes))

    @torch.no_grad()
    def sample_rois(self, proposals: list[Tensor], targets: list[InstanceTargets]) -> list[SampledRoIs]:
        """Match proposals (plus the GT boxes) to GT and sample a positive/negative mix per image."""
        K = self.num_classes
        rois = []
        for proposals_i, t in zip(proposals, targets):
            gt_boxes = t.boxes.to(proposals_i)
            # GT boxes are perfect proposals: the heads see positives from the first iteration.
            boxes = torch.cat([proposals_i, gt_boxes])
            matched_idxs, labels = self.matcher(box_iou(gt_boxes, boxes))
            gt_classes = t.classes.to(boxes.device)[matched_idxs] if len(gt_boxes) else torch.full_like(matched_idxs, K)
            gt_classes = torch.where(labels == 0, K, gt_classes)
            gt_classes = torch.where(labels == -1, -1, gt_classes)
            pos_idx, neg_idx = subsample_labels(gt_classes, self.batch_size_per_image, self.positive_fraction, bg_label=K)
            idx = torch.cat([pos_idx, neg_idx])
            boxes, matched_idxs = boxes[idx], matched_idxs[idx]
            matched_boxes = gt_boxes[matched_idxs] if len(gt_boxes) else boxes  # background: deltas unused
            rois.append(SampledRoIs(boxes, gt_classes[idx], matched_idxs, self.box2box.get_deltas(boxes, matched_boxes)))
        return rois

    @torch.no_grad()
    def predict_boxes(
        self, class_logits: Tensor, box_deltas: Tensor, proposals: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Softmax -> per-class boxes -> score threshold -> per-class NMS -> top detections per image."""
        K = self.num_classes
        num_per_image = [len(p) for p in proposals]
        probs = F.softmax(class_logits.float(), dim=-1).split(num_per_image)  # per image (R_i, K + 1)
        boxes = self.box2box.apply_deltas(box_deltas, torch.cat(proposals)).split(num_per_image)  # per image (R_i, 4K)
        detections = []
        for probs_i, boxes_i, image_size in zip(probs, boxes, image_sizes):
            boxes_i = clip_boxes_to_image(boxes_i.view(-1, K, 4), image_size)  # (R_i, K, 4)
            scores_i = probs_i[:, :K]  # (R_i, K), background dropped
            keep = (scores_i > self.score_thresh) & torch.isfinite(boxes_i).all(dim=-1)
            if self.min_box_size > 0:  # torchvision's remove_small_boxes (min_size 1e-2)
                keep &= ((boxes_i[..., 2:] - boxes_i[..., :2]) >= self.min_box_size).all(dim=-1)
            roi_idx, class_idx = torch.nonzero(keep).unbind(1)
            boxes_i, scores_i = boxes_i[roi_idx, class_idx], scores_i[roi_idx, class_idx]
            keep = batched_nms(boxes_i, scores_i, class_idx, self.nms_thresh)[: self.detections_per_image]
            detections.append({"pred_boxes": boxes_i[keep], "pred_scores": scores_i[keep], "pred_classes": class_idx[keep]})
        return detections


def build_roi_heads(
    cfg: ROIHeadsConfig, num_classes: int, in_channels: int, strides: dict[str, int], mask_head: nn.Module
) -> ROIHeads:
    """Box branch on p2..p5 (7 x 7 RoIAlign), with the given mask head."""
    in_features = [f for f in ("p2", "p3", "p4", "p5") if f in strides]
    box_head = BoxHead(in_channels, cfg.pooler_resolution, cfg.fc_dim, cfg.num_fc)
    return ROIHeads(
        in_features=in_features,
        box_pooler=ROIPooler(
            cfg.pooler_resolution, [1.0 / strides[f] for f in in_features], sampling_ratio=cfg.pooler_sampling_ratio,
            aligned=cfg.pooler_aligned, level_mapper=cfg.pooler_level_mapper,
            channels_last=False,  # the fc box head flattens them
        ),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(box_head.out_dim, num_classes),
        mask_head=mask_head,
        num_classes=num_classes,
        box2box=Box2BoxTransform(weights=tuple(cfg.bbox_reg_weights)),
        matcher=Matcher([cfg.iou_threshold], [0, 1], allow_low_quality_matches=False),
        batch_size_per_image=cfg.batch_size_per_image,
        positive_fraction=cfg.positive_fraction,
        score_thresh=cfg.score_thresh_test,
        nms_thresh=cfg.nms_thresh_test,
        detections_per_image=cfg.detections_per_image,
        smooth_l1_beta=cfg.smooth_l1_beta,
        min_box_size=cfg.min_box_size_test,
    )
