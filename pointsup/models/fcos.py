"""FCOS, the anchor-free one-stage detector under CondInst (Tian et al., ICCV 2019).

Every location of every FPN level P3..P7 is a candidate: it predicts K class logits, the
distances (l, t, r, b) from itself to the four sides of its object's box, and a
centerness logit. CondInst adds one more output per location (its dynamic mask-head
parameters), read from the box tower; that is why `FCOSHead` also returns the tower.

Shape letters: N images, K classes, L levels, HW_l locations of level l,
Q = sum_l HW_l locations of one image (level-major, row-major inside a level),
M GT instances of one image, D detections, C channels.

Frames: a level of stride s has cell (i, j) covering [s j, s j + s) x [s i, s i + s) of the
padded image, so its location is the cell centre (s (j + 0.5), s (i + 0.5)) in the
continuous `*_img` frame (the same points as AdelaiDet's `s j + s // 2` for even s).
Box regressions are predicted and supervised in units of the level's stride
(`norm_reg_targets`), so all levels see targets of similar magnitude.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from pointsup.ops.boxes import batched_nms
from pointsup.structures import InstanceTargets

INF = 1e8


def group_norm(num_channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (FCOS / CondInst), fewer for tiny test-sized channel counts.

    Groups always hold at least 2 channels, so a 1 x 1 map (P7 of a small image) still
    has more than one value to normalise over.
    """
    return nn.GroupNorm(math.gcd(32, max(num_channels // 2, 1)), num_channels)


class Scale(nn.Module):
    """A learnable scalar per FPN level: the shared box head can emit level-specific magnitudes."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


@dataclass
class FCOSOutputs:
    """Raw head outputs, one tensor per level (lists of length L)."""

    cls_logits: list[Tensor]  # (N, K, H_l, W_l)
    box_reg: list[Tensor]  # (N, 4, H_l, W_l) ltrb distances in units of the level's stride, >= 0
    ctr_logits: list[Tensor]  # (N, 1, H_l, W_l)
    box_tower: list[Tensor]  # (N, C, H_l, W_l) features CondInst's controller reads


class FCOSHead(nn.Module):
    """Towers of `num_convs` conv3x3 + GN + ReLU shared across levels, for classes and boxes."""

    def __init__(self, in_channels: int, num_classes: int, num_levels: int, num_convs: int = 4, prior_prob: float = 0.01):
        super().__init__()

        def tower() -> nn.Sequential:
            layers: list[nn.Module] = []
            for _ in range(num_convs):
                layers += [nn.Conv2d(in_channels, in_channels, 3, padding=1), group_norm(in_channels), nn.ReLU()]
            return nn.Sequential(*layers)

        self.cls_tower = tower()
        self.box_tower = tower()
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.box_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.ctr_pred = nn.Conv2d(in_channels, 1, 3, padding=1)  # on the box tower (AdelaiDet's CENTERNESS_ON_REG)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.constant_(module.bias, 0.0)
        # Focal loss init (RetinaNet): every location starts at foreground prob `prior_prob`,
        # so the ~all-background first iterations do not produce a huge loss.
        nn.init.constant_(self.cls_logits.bias, -math.log((1.0 - prior_prob) / prior_prob))

    def forward(self, features: list[Tensor]) -> FCOSOutputs:
        out = FCOSOutputs([], [], [], [])
        for level, x in enumerate(features):
            cls_feat = self.cls_tower(x)
            box_feat = self.box_tower(x)
            out.cls_logits.append(self.cls_logits(cls_feat))
            # ReLU keeps distances non-negative; the per-level Scale sets their magnitude.
            out.box_reg.append(F.relu(self.scales[level](self.box_pred(box_feat))))
            out.ctr_logits.append(self.ctr_pred(box_feat))
            out.box_tower.append(box_feat)
        return out


def compute_locations(feature_sizes: list[tuple[int, int]], strides: list[int], device: torch.device | None = None) -> list[Tensor]:
    """Per level, the (H_l * W_l, 2) (x, y) image-pixel centres of its cells, row-major."""
    locations = []
    for (H, W), s in zip(feature_sizes, strides):
        xs = (torch.arange(W, device=device, dtype=torch.float32) + 0.5) * s
        ys = (torch.arange(H, device=device, dtype=torch.float32) + 0.5) * s
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        locations.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1))
    return locations


def ltrb_targets(locations_img: Tensor, boxes_xyxy: Tensor) -> Tensor:
    """(Q, 2) locations, (M, 4) boxes -> (Q, M, 4) distances (l, t, r, b) to each box's sides."""
    x = locations_img[:, 0, None]
    y = locations_img[:, 1, None]
    return torch.stack(
        [x - boxes_xyxy[:, 0], y - boxes_xyxy[:, 1], boxes_xyxy[:, 2] - x, boxes_xyxy[:, 3] - y], dim=2
    )


def assign_fcos_targets(
    locations_img: Tensor,
    location_strides: Tensor,
    location_size_ranges: Tensor,
    gt_boxes_xyxy: Tensor,
    center_sample_radius: float,
) -> Tensor:
    """FCOS target assignment for one image: which GT box (if any) each location predicts.

    locations_img:        (Q, 2) location centres in image pixels.
    location_strides:     (Q,) stride of each location's level.
    location_size_ranges: (Q, 2) [lo, hi] of each location's level: a location may only
                          predict boxes whose largest ltrb distance lies in that range,
                          so small objects go to fine levels and large ones to coarse.
    gt_boxes_xyxy:        (M, 4).
    returns matched_idxs (Q,) int64: the GT index, or -1 for background.

    A location is positive for a box when it lies within `radius * stride` of the box
    centre *and* inside the box (centre sampling), and the box's size fits its level.
    Locations that qualify for several boxes take the one with the smallest area.
    """
    Q, M = locations_img.shape[0], gt_boxes_xyxy.shape[0]
    if M == 0:
        return torch.full((Q,), -1, dtype=torch.int64, device=locations_img.device)

    ltrb = ltrb_targets(locations_img, gt_boxes_xyxy)  # (Q, M, 4)

    # Centre sampling: the box (cx +- r s, cy +- r s) clipped to the GT box.
    centres = (gt_boxes_xyxy[:, :2] + gt_boxes_xyxy[:, 2:]) / 2  # (M, 2)
    radius = (center_sample_radius * location_strides)[:, None, None]  # (Q, 1, 1)
    region_x0y0 = torch.maximum(centres[None] - radius, gt_boxes_xyxy[None, :, :2])  # (Q, M, 2)
    region_x1y1 = torch.minimum(centres[None] + radius, gt_boxes_xyxy[None, :, 2:])
    region = torch.cat([region_x0y0, region_x1y1], dim=2)  # (Q, M, 4)
    dist = torch.stack(
        [
            locations_img[:, None, 0] - region[..., 0],
            locations_img[:, None, 1] - region[..., 1],
            region[..., 2] - locations_img[:, None, 0],
            region[..., 3] - locations_img[:, None, 1],
        ],
        dim=2,
    )  # (Q, M, 4)
    in_center_region = dist.amin(dim=2) > 0  # (Q, M)

    max_dist = ltrb.amax(dim=2)  # (Q, M)
    fits_level = (max_dist >= location_size_ranges[:, None, 0]) & (max_dist <= location_size_ranges[:, None, 1])

    areas = (gt_boxes_xyxy[:, 2] - gt_boxes_xyxy[:, 0]) * (gt_boxes_xyxy[:, 3] - gt_boxes_xyxy[:, 1])
    candidate_areas = areas[None].expand(Q, M).clone()
    candidate_areas[~(in_center_region & fits_level)] = INF
    min_area, matched_idxs = candidate_areas.min(dim=1)  # ambiguous -> smallest box
    matched_idxs[min_area >= INF] = -1
    return matched_idxs


def centerness_targets(ltrb: Tensor) -> Tensor:
    """(Q', 4) ltrb distances of Q' positive locations -> (Q',) sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) in [0, 1]."""
    if ltrb.shape[0] == 0:
        return ltrb.new_zeros(0)
    lr = ltrb[:, [0, 2]]
    tb = ltrb[:, [1, 3]]
    ratio = (lr.amin(dim=1) / lr.amax(dim=1)) * (tb.amin(dim=1) / tb.amax(dim=1))
    return ratio.clamp(min=0).sqrt()


def fcos_losses(
    cls_logits: Tensor,
    box_reg: Tensor,
    ctr_logits: Tensor,
    gt_labels: Tensor,
    gt_ltrb: Tensor,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> dict[str, Tensor]:
    """FCOS losses over all locations of a batch.

    cls_logits: (Q_all, K); box_reg: (Q_all, 4) ltrb / stride; ctr_logits: (Q_all,).
    gt_labels:  (Q_all,) class of the assigned box, K for background.
    gt_ltrb:    (Q_all, 4) ltrb / stride of the assigned box (ignored on background).

    - focal loss on all locations, normalised by the number of positives;
    - GIoU loss on positives, weighted by their centerness targets (locations near the
      centre give better boxes) and normalised by the sum of those weights;
    - BCE on the centerness logits of positives, normalised by the number of positives.
    """
    K = cls_logits.shape[1]
    pos = gt_labels != K
    num_pos = max(float(pos.sum()), 1.0)

    cls_targets = torch.zeros_like(cls_logits)
    cls_targets[pos, gt_labels[pos]] = 1.0
    loss_cls = sigmoid_focal_loss(cls_logits, cls_targets, alpha=focal_alpha, gamma=focal_gamma, reduction="sum") / num_pos

    if not bool(pos.any()):
        zero = box_reg.sum() * 0.0 + ctr_logits.sum() * 0.0  # keep graph for DDP
        return {"loss_fcos_cls": loss_cls, "loss_fcos_loc": zero, "loss_fcos_ctr": zero}

    pred_ltrb, target_ltrb = box_reg[pos], gt_ltrb[pos]
    ctr_targets = centerness_targets(target_ltrb)
    # Boxes relative to their location: (-l, -t, r, b). GIoU does not care about the origin.
    pred_boxes = torch.cat([-pred_ltrb[:, :2], pred_ltrb[:, 2:]], dim=1)
    target_boxes = torch.cat([-target_ltrb[:, :2], target_ltrb[:, 2:]], dim=1)
    giou = generalized_box_iou_loss(pred_boxes, target_boxes, reduction="none")
    loss_loc = (giou * ctr_targets).sum() / ctr_targets.sum().clamp(min=1e-6)
    loss_ctr = F.binary_cross_entropy_with_logits(ctr_logits[pos], ctr_targets, reduction="sum") / num_pos
    return {"loss_fcos_cls": loss_cls, "loss_fcos_loc": loss_loc, "loss_fcos_ctr": loss_ctr}


def flatten_levels(per_level: list[Tensor]) -> Tensor:
    """L tensors (N, C, H_l, W_l) -> (N, Q, C), levels concatenated in order."""
    return torch.cat([x.flatten(2).transpose(1, 2) for x in per_level], dim=1)


class FCOS(nn.Module):
    """FCOS head + target assignment + losses + inference (no backbone).

    `forward(features)` runs the head; `losses` and `inference` turn its outputs into
    loss values or detections. Both also report which locations they used, so CondInst
    can read the dynamic mask parameters at exactly those locations.
    """

    def __init__(
        self,
        head: FCOSHead,
        strides: list[int],
        size_ranges: list[float],
        center_sample_radius: float = 1.5,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        score_thresh: float = 0.05,
        pre_nms_topk: int = 1000,
        nms_thresh: float = 0.6,
        detections_per_image: int = 100,
        thresh_with_ctr: bool = True,
    ):
        super().__init__()
        if len(size_ranges) != len(strides) + 1:
            raise ValueError(f"need len(strides) + 1 size range edges, got {size_ranges} for strides {strides}")
        self.head = head
        self.strides = list(strides)
        self.size_ranges = list(size_ranges)
        self.center_sample_radius = center_sample_radius
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.score_thresh = score_thresh
        self.pre_nms_topk = pre_nms_topk
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image
        self.thresh_with_ctr = thresh_with_ctr

    def forward(self, features: list[Tensor]) -> FCOSOutputs:
        return self.head(features)

    def location_info(self, outputs: FCOSOutputs) -> tuple[Tensor, Tensor, Tensor]:
        """For the Q locations of one image: centres (Q, 2), strides (Q,), levels (Q,) int64."""
        sizes = [tuple(x.shape[-2:]) for x in outputs.cls_logits]
        device = outputs.cls_logits[0].device
        locations = compute_locations(sizes, self.strides, device)
        strides = torch.cat([torch.full((len(loc),), float(s), device=device) for loc, s in zip(locations, self.strides)])
        levels = torch.cat([torch.full((len(loc),), l, dtype=torch.int64, device=device) for l, loc in enumerate(locations)])
        return torch.cat(locations), strides, levels

    def losses(self, outputs: FCOSOutputs, targets: list[InstanceTargets]) -> tuple[dict[str, Tensor], Tensor]:
        """Returns (losses, matched_idxs (N, Q) int64: GT index per location, -1 background)."""
        locations, strides, levels = self.location_info(outputs)
        edges = torch.tensor(self.size_ranges, device=locations.device)
        size_ranges = torch.stack([edges[levels], edges[levels + 1]], dim=1)  # (Q, 2)
        K = outputs.cls_logits[0].shape[1]

        matched, labels, ltrb = [], [], []
        for t in targets:
            idxs = assign_fcos_targets(locations, strides, size_ranges, t.boxes, self.center_sample_radius)  # (Q,)
            pos = idxs >= 0
            labels_i = torch.full_like(idxs, K)  # K = background
            ltrb_i = locations.new_zeros(len(idxs), 4)
            if bool(pos.any()):
                boxes = t.boxes[idxs[pos]]  # (S_i, 4) the box each positive location predicts
                xy = locations[pos]
                labels_i[pos] = t.classes[idxs[pos]]
                ltrb_i[pos] = torch.cat([xy - boxes[:, :2], boxes[:, 2:] - xy], dim=1) / strides[pos, None]
            matched.append(idxs)
            labels.append(labels_i)
            ltrb.append(ltrb_i)

        losses = fcos_losses(
            flatten_levels(outputs.cls_logits).reshape(-1, K),
            flatten_levels(outputs.box_reg).reshape(-1, 4),
            flatten_levels(outputs.ctr_logits).reshape(-1),
            torch.cat(labels),
            torch.cat(ltrb),
            self.focal_alpha,
            self.focal_gamma,
        )
        return losses, torch.stack(matched)

    @torch.no_grad()
    def inference(self, outputs: FCOSOutputs, image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Detections per image: dict of boxes (D, 4), scores (D,), classes (D,), location_idx (D,).

        As in AdelaiDet: rank (location, class) pairs by cls * centerness (centerness
        demotes off-centre locations, whose boxes are worse) and keep those above
        `score_thresh` (applied to cls * centerness when `thresh_with_ctr`, as in
        AdelaiDet's CondInst configs, else to the class probability alone), at most
        `pre_nms_topk` per level; then class-wise NMS and the best `detections_per_image`.
        The reported score is sqrt(cls * centerness), back on the scale of a probability.
        `location_idx` indexes the image's Q locations (level-major, as `flatten_levels`).
        """
        locations, strides, _ = self.location_info(outputs)
        level_sizes = [x.shape[-2] * x.shape[-1] for x in outputs.cls_logits]
        level_starts = [sum(level_sizes[:l]) for l in range(len(level_sizes))]
        cls_probs = flatten_levels(outputs.cls_logits).sigmoid()  # (N, Q, K)
        ctr_probs = flatten_levels(outputs.ctr_logits).sigmoid()  # (N, Q, 1)
        box_reg = flatten_levels(outputs.box_reg) * strides[None, :, None]  # (N, Q, 4) pixels

        results = []
        for i, (H, W) in enumerate(image_sizes):
            loc_idx_all, cls_all, score_all = [], [], []
            for start, size in zip(level_starts, level_sizes):
                probs = cls_probs[i, start : start + size]  # (HW_l, K)
                ranking = probs * ctr_probs[i, start : start + size]  # (HW_l, K)
                candidates = (ranking if self.thresh_with_ctr else probs) > self.score_thresh
                scores = ranking[candidates]
                loc_idx, cls_idx = candidates.nonzero(as_tuple=True)
                if scores.numel() > self.pre_nms_topk:
                    scores, keep = scores.topk(self.pre_nms_topk)
                    loc_idx, cls_idx = loc_idx[keep], cls_idx[keep]
                loc_idx_all.append(loc_idx + start)
                cls_all.append(cls_idx)
                score_all.append(scores)
            loc_idx = torch.cat(loc_idx_all)
            classes = torch.cat(cls_all)
            scores = torch.cat(score_all).sqrt()
            ltrb = box_reg[i, loc_idx]
            xy = locations[loc_idx]
            boxes = torch.cat([xy - ltrb[:, :2], xy + ltrb[:, 2:]], dim=1)
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, W)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, H)
            keep = batched_nms(boxes, scores, classes, self.nms_thresh)[: self.detections_per_image]
            results.append(
                {"boxes": boxes[keep], "scores": scores[keep], "classes": classes[keep], "location_idx": loc_idx[keep]}
            )
        return results


def build_fcos(cfg, num_classes: int, in_channels: int) -> FCOS:
    """FCOS from a `CondInstConfig` (cfg.model.condinst)."""
    head = FCOSHead(in_channels, num_classes, len(cfg.fpn_strides), cfg.num_tower_convs)
    return FCOS(
        head,
        strides=cfg.fpn_strides,
        size_ranges=cfg.size_ranges,
        center_sample_radius=cfg.center_sample_radius,
        focal_alpha=cfg.focal_alpha,
        focal_gamma=cfg.focal_gamma,
        score_thresh=cfg.score_thresh_test,
        pre_nms_topk=cfg.pre_nms_topk_test,
        nms_thresh=cfg.nms_thresh_test,
        detections_per_image=cfg.detections_per_image,
    )
