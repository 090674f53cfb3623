"""CondInst: instance masks from per-instance dynamic convolutions (Tian et al., ECCV 2020).

FCOS detects objects; at every location a *controller* also predicts the 169 weights of a
tiny mask head of three 1x1 convolutions. That head runs on a shared stride-8 *mask
feature* map (plus each pixel's position relative to the instance) and outputs one
image-level mask per instance. There is no RoI pooling, so point supervision (paper
sec. 3.2, Table 3b) applies by sampling the image-level mask logits at the GT points.

    images -> backbone -> P3..P7 -> FCOS (classes, boxes, centerness, box tower)
                                      controller(box tower) -> params (169 per location)
                          P3..P5 -> mask branch -> mask features (8 channels, stride 8)
    dynamic head(mask features, relative coords; params) -> mask logits (stride 8 -> 4)

Shape letters: N images, K classes, Q locations of one image over all FPN levels,
S positive locations sampled for the mask loss, D detections, M GT instances,
C channels, H8 x W8 / H4 x W4 the stride-8 / stride-4 grids of the padded image.

Frames: a map of stride s has cell (i, j) covering [s j, s j + s) x [s i, s i + s) of the
padded image, with its centre at (s (j + 0.5), s (i + 0.5)) in the `*_img` frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pointsup.losses.condinst_losses import (
    color_similarity,
    dice_loss,
    pairwise_loss,
    point_loss,
    projection_loss,
    rgb_to_lab,
)
from pointsup.models.fcos import FCOS, build_fcos, compute_locations, flatten_levels, group_norm
from pointsup.models.inputs import check_input_format, normalize_images, pixel_stat
from pointsup.ops.dynamic_mlp import dynamic_mlp, num_dynamic_params, split_dynamic_params, standard_init_params
from pointsup.structures import InstanceTargets
from pointsup.supervision import check_supervision, stack_points

MASK_OUT_STRIDE = 4  # CondInst's mask logits live at stride 4 of the input


def upsample_aligned(x: Tensor, factor: int) -> Tensor:
    """Upsample a stride-s map to stride s / factor so that cell centres stay aligned.

    x: (N, C, H, W) -> (N, C, factor H, factor W). In our frame (cell centres at
    s (j + 0.5)), output cell k has its centre at input coordinate (k + 0.5) / factor - 0.5,
    which is exactly bilinear interpolation with align_corners=False (clamped at the
    border). AdelaiDet's `aligned_bilinear` solves the same problem for its pixel-index
    convention (cell j at pixel s j + s // 2); here the plain op is the aligned one.
    """
    if factor == 1:
        return x
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


def conv_norm_relu(in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    """conv3x3 (no bias) + norm + ReLU."""
    if norm == "GN":
        norm_layer: nn.Module = group_norm(out_channels)
    elif norm == "BN":
        norm_layer = nn.BatchNorm2d(out_channels)
    else:
        raise ValueError(f"norm must be 'GN' or 'BN', got {norm!r}")
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    return nn.Sequential(conv, norm_layer, nn.ReLU())


class MaskBranch(nn.Module):
    """Fuses P3..P5 into the shared stride-8 mask features (CondInst Fig. 3).

    Each input level goes through a conv, is upsampled to the finest level's grid and
    summed; then `num_convs` convs of `channels` and a 1x1 conv to `out_channels`.
    The reference uses BN; we default to GN because micro-batches here are 1-2 images and
    GN has no running statistics to go stale after short runs (pass norm="BN" to match).
    """

    def __init__(self, in_channels: int, num_inputs: int = 3, channels: int = 128, out_channels: int = 8, num_convs: int = 4, norm: str = "GN"):
        super().__init__()
        self.refine = nn.ModuleList(conv_norm_relu(in_channels, channels, norm) for _ in range(num_inputs))
        tower: list[nn.Module] = [conv_norm_relu(channels, channels, norm) for _ in range(num_convs)]
        tower.append(nn.Conv2d(channels, out_channels, 1))
        self.tower = nn.Sequential(*tower)

    def forward(self, features: list[Tensor]) -> Tensor:
        """features: finest first, each level half the size of the previous -> (N, out, H8, W8)."""
        x = self.refine[0](features[0])
        for refine, feature in zip(self.refine[1:], features[1:]):
            factor = x.shape[-1] // feature.shape[-1]
            x = x + upsample_aligned(refine(feature), factor)
        return self.tower(x)


class DynamicMaskHead(nn.Module):
    """The per-instance mask FCN: 1x1 convs (C + 2 -> ch -> ch -> 1) whose weights are inputs.

    With C = ch = 8 and three layers there are (10*8 + 8*8 + 8*1) = 152 weights and
    (8 + 8 + 1) = 17 biases: 169 parameters per instance, laid out like AdelaiDet's
    `parse_dynamic_params` (all weights layer by layer, then all biases; each weight
    block row-major (out, in)), so its checkpoints' controllers would plug in.

    The input channels are [relative x, relative y, mask features]: the instance's location
    minus each pixel's centre, divided by the size of interest of the instance's FPN level
    (64, 128, 256, 512, 1024 for P3..P7), so the head sees the object at a similar scale
    whatever its size. The coordinates are what let one shared feature map give different
    masks for different instances.
    """

    def __init__(self, in_channels: int = 8, channels: int = 8, num_layers: int = 3, sizes_of_interest: tuple[float, ...] | list[float] = (64, 128, 256, 512, 1024)):
        super().__init__()
        self.in_channels = in_channels
        self.channels = channels
        dims = [in_channels + 2] + [channels] * (num_layers - 1) + [1]
        self.layer_shapes = list(zip(dims[1:], dims[:-1]))  # (out, in) per layer
        self.register_buffer("sizes_of_interest", torch.tensor(list(sizes_of_interest), dtype=torch.float32), persistent=False)

    @property
    def num_params(self) -> int:
        return num_dynamic_params(self.layer_shapes)

    def parse_params(self, params: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """(R, num_params) -> weights [(R, out, in)] and biases [(R, out)] per layer."""
        return split_dynamic_params(params, self.layer_shapes)

    def run_dynamic_convs(self, inputs: Tensor, params: Tensor) -> Tensor:
        """inputs (R, C + 2, H, W), params (R, num_params) -> logits (R, 1, H, W).

        A 1x1 conv is a matrix product over channels, so all R instances run as one
        batched matmul (`pointsup.ops.dynamic_mlp`; AdelaiDet uses a grouped conv, groups=R).
        """
        R, _, H, W = inputs.shape
        weights, biases = self.parse_params(params)
        return dynamic_mlp(inputs.flatten(2), weights, biases).reshape(R, 1, H, W)  # HW pixels as points

    def relative_coords(self, instance_locations_img: Tensor, instance_levels: Tensor, size: tuple[int, int], stride: int) -> Tensor:
        """(R, 2) locations, (R,) FPN levels -> (R, 2, H, W) normalised offsets to each cell centre."""
        H, W = size
        grid_img = compute_locations([(H, W)], [stride], instance_locations_img.device)[0]  # (HW, 2)
        offsets = instance_locations_img[:, None, :] - grid_img[None]  # (R, HW, 2)
        offsets = offsets / self.sizes_of_interest[instance_levels][:, None, None]
        return offsets.transpose(1, 2).reshape(-1, 2, H, W)

    def forward(self, mask_feats: Tensor, mask_stride: int, params: Tensor, instance_locations_img: Tensor, instance_levels: Tensor) -> Tensor:
        """Mask logits at stride MASK_OUT_STRIDE.

        mask_feats: (R, C, H8, W8) the mask features of each instance's image.
        params: (R, num_params); instance_locations_img: (R, 2); instance_levels: (R,).
        returns (R, 1, H4, W4) logits.
        """
        coords = self.relative_coords(instance_locations_img, instance_levels, mask_feats.shape[-2:], mask_stride)
        inputs = torch.cat([coords.to(mask_feats.dtype), mask_feats], dim=1)  # (R, 2 + C, H8, W8)
        logits = self.run_dynamic_convs(inputs, params)
        return upsample_aligned(logits, mask_stride // MASK_OUT_STRIDE)


def masks_at_stride(masks: Tensor, padded_size: tuple[int, int], stride: int) -> Tensor:
    """(M, h, w) bool masks -> (M, H_pad / stride, W_pad / stride) fraction of each cell covered.

    Average pooling gives the exact coverage of each stride cell (a soft target the dice
    loss accepts), rather than the value of one arbitrary pixel inside it.
    """
    H_pad, W_pad = padded_size
    h, w = masks.shape[-2:]
    padded = F.pad(masks[:, None].float(), (0, W_pad - w, 0, H_pad - h))
    return F.avg_pool2d(padded, kernel_size=stride, stride=stride)[:, 0]


def box_masks_at_stride(boxes_xyxy: Tensor, size: tuple[int, int], stride: int) -> Tensor:
    """(S, 4) boxes -> (S, 1, H, W) float: 1 where the stride cell's centre lies inside the box."""
    H, W = size
    xs = (torch.arange(W, device=boxes_xyxy.device, dtype=boxes_xyxy.dtype) + 0.5) * stride
    ys = (torch.arange(H, device=boxes_xyxy.device, dtype=boxes_xyxy.dtype) + 0.5) * stride
    inside_x = (xs[None] >= boxes_xyxy[:, 0, None]) & (xs[None] <= boxes_xyxy[:, 2, None])  # (S, W)
    inside_y = (ys[None] >= boxes_xyxy[:, 1, None]) & (ys[None] <= boxes_xyxy[:, 3, None])  # (S, H)
    return (inside_y[:, :, None] & inside_x[:, None, :]).float()[:, None]


class Controller(nn.Conv2d):
    """Box-tower features (N, C, H_l, W_l) -> each location's dynamic mask-head parameters
    (N, G, H_l, W_l): a 3 x 3 conv (keys `weight` / `bias`, as AdelaiDet's controller).

    The parameters generated at location q are W h_q + b, h_q its 3 x 3 patch of tower
    features (9C values). One SGD step on W moves them by -lr * sum_s g_s (h_s . h_q + 1):
    the dynamic mask head trains at an effective LR of lr * (1 + |h|^2), as Implicit
    PointRend's generated point heads (docs/experiments). Measured on the built-in data
    (R18-FPN, C = 128): |h|^2 = 120-280, so the generated heads train at ~100-300x the LR.
    Dice on full masks tolerates that; with the point loss the generated parameters
    oscillate and the point loss stays at ln 2 for a whole run (1500 iterations).

    feature_norm=True (pointsup's recipe) reads each patch at unit length,
    W h_q / |h_q| + b, which bounds the factor by 2, and starts b at one ordinary MLP so that
    every location begins with a working shared mask head (its relative coordinates already
    make it instance-specific); W's small weights learn the per-location part. False is
    AdelaiDet's controller (plain conv, b = 0), as its checkpoints need.
    """

    def __init__(self, in_channels: int, layer_shapes: list[tuple[int, int]], feature_norm: bool = False, eps: float = 1e-6):
        super().__init__(in_channels, num_dynamic_params(layer_shapes), 3, padding=1)
        self.feature_norm = feature_norm
        self.eps = eps
        nn.init.normal_(self.weight, std=0.01)
        with torch.no_grad():
            self.bias.copy_(standard_init_params(layer_shapes) if feature_norm else torch.zeros_like(self.bias))

    def forward(self, x: Tensor) -> Tensor:
        if not self.feature_norm:
            return super().forward(x)
        # |h_q|^2 of every 3 x 3 patch (zero padding counted, as the conv sees it): (N, 1, H, W)
        patch_sq = 9 * F.avg_pool2d(x.pow(2).sum(1, keepdim=True), 3, stride=1, padding=1, count_include_pad=True)
        wx = F.conv2d(x, self.weight, None, padding=1)  # W h_q
        return wx / patch_sq.clamp(min=self.eps).sqrt() + self.bias[None, :, None, None]


class CondInst(nn.Module):
    """CondInst / BoxInst obeying the detector contract of docs/DESIGN.md."""

    def __init__(
        self,
        backbone: nn.Module,
        fcos: FCOS,
        mask_branch: MaskBranch,
        mask_head: DynamicMaskHead,
        pixel_mean: list[float],
        pixel_std: list[float],
        input_format: str = "RGB",
        pad_after_normalize: bool = False,
        supervision: str = "points",
        max_proposals: int = 500,
        boxinst: bool = False,
        pairwise_size: int = 3,
        pairwise_dilation: int = 2,
        pairwise_color_thresh: float = 0.3,
        pairwise_warmup_iters: int = 10000,
        boxinst_inside_box: bool = False,
        controller_feature_norm: bool = False,
    ):
        super().__init__()
        check_supervision(supervision)
        self.backbone = backbone
        self.fcos = fcos
        self.mask_branch = mask_branch
        self.mask_head = mask_head
        box_tower_channels = fcos.head.box_pred.in_channels
        self.controller = Controller(box_tower_channels, mask_head.layer_shapes, controller_feature_norm)

        self.fcos_features = [f"p{i}" for i in range(3, 3 + len(fcos.strides))]  # p3..p7
        self.mask_features = ["p3", "p4", "p5"]
        self.mask_stride = fcos.strides[0]  # the mask features live on P3's grid
        self.supervision = supervision
        self.max_proposals = max_proposals
        self.boxinst = boxinst
        self.pairwise_size = pairwise_size
        self.pairwise_dilation = pairwise_dilation
        self.pairwise_color_thresh = pairwise_color_thresh
        self.pairwise_warmup_iters = pairwise_warmup_iters
        # BoxInst variant: the projection term is averaged with the same term on each mask
        # cropped to its GT box, and predicted masks are cropped to their boxes (config
        # `boxinst_inside_box`; `projection_loss`).
        self.boxinst_inside_box = boxinst_inside_box
        self.input_format = check_input_format(input_format)  # BGR: MSRA / detectron2 weights; pixel_mean/std in that order
        self.pad_after_normalize = pad_after_normalize
        self.register_buffer("pixel_mean", pixel_stat(pixel_mean), persistent=False)  # (1, 3, 1, 1)
        self.register_buffer("pixel_std", pixel_stat(pixel_std), persistent=False)
        # Training-mode forward passes seen (micro-batches when accumulating gradients), for
        # BoxInst's pairwise warm-up; saved with the weights so a resume continues the ramp.
        self.register_buffer("iteration", torch.zeros((), dtype=torch.int64))

    def forward(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        targets: list[InstanceTargets] | None = None,
        output_sizes: list[tuple[int, int]] | None = None,
    ):
        features = self.backbone(self.normalize(images, image_sizes))
        mask_feats = self.mask_branch([features[f] for f in self.mask_features])  # (N, C, H8, W8)
        fcos_out = self.fcos([features[f] for f in self.fcos_features])
        params = flatten_levels([self.controller(x) for x in fcos_out.box_tower])  # (N, Q, 169)
        locations, _, levels = self.fcos.location_info(fcos_out)  # (Q, 2), (Q,)

        if self.training:
            if targets is None:
                raise ValueError("training needs targets")
            self.iteration += 1
            losses, matched_idxs = self.fcos.losses(fcos_out, targets)  # matched_idxs (N, Q)
            losses.update(self.mask_losses(images, mask_feats, params, locations, levels, matched_idxs, targets))
            return losses

        detections = self.fcos.inference(fcos_out, image_sizes)
        return [
            self.predict_masks(mask_feats[i], params[i], locations, levels, det, image_sizes[i], output_sizes[i] if output_sizes else None)
            for i, det in enumerate(detections)
        ]

    def normalize(self, images: Tensor, image_sizes: list[tuple[int, int]]) -> Tensor:
        """RGB 0..255 (N, 3, H, W) -> the normalised input the weights were trained on (`inputs.py`)."""
        return normalize_images(images, image_sizes, self.pixel_mean, self.pixel_std, self.input_format, self.pad_after_normalize)

    def mask_losses(
        self,
        images: Tensor,
        mask_feats: Tensor,
        params: Tensor,
        locations: Tensor,
        levels: Tensor,
        matched_idxs: Tensor,
        targets: list[InstanceTargets],
    ) -> dict[str, Tensor]:
        """Mask loss on (at most `max_proposals`) FCOS-positive locations, each vs its GT.

        images (N, 3, H, W) raw RGB (BoxInst colours); mask_feats (N, C, H8, W8);
        params (N, Q, 169); locations (Q, 2); levels (Q,); matched_idxs (N, Q) from FCOS.
        As in CondInst, the mask head is trained on the GT-assigned positive locations
        (not on detections), so every sampled mask has a well-defined target instance.
        """
        image_idx, loc_idx = (matched_idxs >= 0).nonzero(as_tuple=True)  # (S,), (S,)
        if len(image_idx) > self.max_proposals >= 0:
            keep = torch.randperm(len(image_idx), device=image_idx.device)[: self.max_proposals]
            image_idx, loc_idx = image_idx[keep], loc_idx[keep]
        names = ["loss_prj", "loss_pairwise"] if self.boxinst else ["loss_mask"]
        if len(image_idx) == 0:
            zero = mask_feats.sum() * 0.0 + params.sum() * 0.0  # keep graph for DDP
            return {name: zero for name in names}

        # Index of each positive's GT among all GT instances of the batch.
        gt_offsets = torch.tensor([0] + [len(t) for t in targets], device=image_idx.device).cumsum(0)
        gt_idx = gt_offsets[image_idx] + matched_idxs[image_idx, loc_idx]  # (S,)
        mask_logits = self.mask_head(
            mask_feats[image_idx], self.mask_stride, params[image_idx, loc_idx], locations[loc_idx], levels[loc_idx]
        )  # (S, 1, H4, W4)
        H4, W4 = mask_logits.shape[-2:]

        if self.boxinst:
            gt_boxes = torch.cat([t.boxes for t in targets])[gt_idx]  # (S, 4)
            box_masks = box_masks_at_stride(gt_boxes, (H4, W4), MASK_OUT_STRIDE)  # (S, 1, H4, W4)
            similarity = self.color_similarity(images, [t.image_size for t in targets], (H4, W4))[image_idx]
            pair_weights = (similarity >= self.pairwise_color_thresh).float() * box_masks  # (S, A, H4, W4)
            warmup = min(float(self.iteration) / max(self.pairwise_warmup_iters, 1), 1.0)
            return {
                "loss_prj": projection_loss(mask_logits.sigmoid(), box_masks, inside_box=self.boxinst_inside_box),
                "loss_pairwise": warmup * pairwise_loss(mask_logits, pair_weights, self.pairwise_size, self.pairwise_dilation),
            }
        if self.supervision == "masks":
            padded_size = (H4 * MASK_OUT_STRIDE, W4 * MASK_OUT_STRIDE)
            gt_masks = torch.cat([masks_at_stride(self._masks_of(t), padded_size, MASK_OUT_STRIDE) for t in targets])
            return {"loss_mask": dice_loss(mask_logits.sigmoid()[:, 0], gt_masks[gt_idx])}
        # Sec. 3.2: BCE only at the annotated points; the rest of the image is unsupervised.
        point_coords, point_labels = stack_points(targets)  # (M_all, P, 2), (M_all, P)
        return {"loss_mask": point_loss(mask_logits, point_coords[gt_idx], point_labels[gt_idx], MASK_OUT_STRIDE)}

    @staticmethod
    def _masks_of(t: InstanceTargets) -> Tensor:
        if t.masks is None:
            if len(t) == 0:
                return torch.zeros(0, *t.image_size, dtype=torch.bool, device=t.boxes.device)
            raise ValueError("supervision='masks' needs GT masks; use supervision='points' for point-only data")
        return t.masks

    def color_similarity(self, images: Tensor, image_sizes: list[tuple[int, int]], size: tuple[int, int]) -> Tensor:
        """BoxInst colour affinities of the stride-4 image: (N, 3, H, W) RGB -> (N, A, H4, W4)."""
        small = F.avg_pool2d(images.float(), kernel_size=MASK_OUT_STRIDE, stride=MASK_OUT_STRIDE)[..., : size[0], : size[1]]
        valid = torch.stack([box_masks_at_stride(images.new_tensor([[0, 0, w, h]]), size, MASK_OUT_STRIDE)[0] for h, w in image_sizes])
        return color_similarity(rgb_to_lab(small), valid, self.pairwise_size, self.pairwise_dilation)

    def predict_masks(
        self,
        mask_feats: Tensor,
        params: Tensor,
        locations: Tensor,
        levels: Tensor,
        detections: dict[str, Tensor],
        image_size: tuple[int, int],
        output_size: tuple[int, int] | None,
    ) -> dict[str, Tensor]:
        """Masks for one image's D detections, in the image (or output_size) frame.

        mask_feats (C, H8, W8), params (Q, 169); detections from `FCOS.inference`.
        """
        H, W = image_size
        H_out, W_out = output_size if output_size is not None else image_size
        boxes, loc_idx = detections["boxes"], detections["location_idx"]
        D = len(boxes)
        mask_feats_d = mask_feats[None].expand(D, -1, -1, -1)
        logits = self.mask_head(mask_feats_d, self.mask_stride, params[loc_idx], locations[loc_idx], levels[loc_idx])  # (D, 1, H4, W4)
        probs = upsample_aligned(logits.sigmoid(), MASK_OUT_STRIDE)[:, :, :H, :W]  # (D, 1, H, W)
        if (H_out, W_out) != (H, W):
            if D > 0:
                probs = F.interpolate(probs, size=(H_out, W_out), mode="bilinear", align_corners=False)
            else:
                probs = probs.new_zeros(0, 1, H_out, W_out)
            boxes = boxes * boxes.new_tensor([W_out / W, H_out / H, W_out / W, H_out / H])
        # P_N (footnote 2): pixels outside GT boxes were never supervised, so only the part
        # of each mask inside its predicted box is trusted. BoxInst's inside-box variant
        # crops too: half of its projection term judges each mask by its part in the box.
        crop_to_boxes = self.boxinst_inside_box if self.boxinst else self.supervision == "points"
        if crop_to_boxes:
            probs = probs * box_masks_at_stride(boxes, (H_out, W_out), 1)
        return {
            "pred_boxes": boxes,
            "pred_scores": detections["scores"],
            "pred_classes": detections["classes"].to(torch.int64),
            "pred_masks": probs[:, 0] > 0.5,
        }


def build_condinst(cfg, num_classes: int) -> CondInst:
    """CondInst (or BoxInst when cfg.model.condinst.boxinst) from a `pointsup.config.Config`."""
    from pointsup.models.backbone import build_backbone  # imported here: the backbone module is optional for tests

    ccfg = cfg.model.condinst
    backbone = build_backbone(cfg.model.backbone, top_block="p6p7")
    sizes = ccfg.size_ranges
    sizes_of_interest = list(sizes[1:-1]) + [2 * sizes[-2]]  # (64, 128, 256, 512, 1024) as AdelaiDet
    return CondInst(
        backbone=backbone,
        fcos=build_fcos(ccfg, num_classes, backbone.out_channels),
        mask_branch=MaskBranch(backbone.out_channels, 3, ccfg.mask_branch_channels, ccfg.mask_out_channels),
        mask_head=DynamicMaskHead(ccfg.mask_out_channels, ccfg.dynamic_channels, 3, sizes_of_interest),
        pixel_mean=cfg.model.pixel_mean,
        pixel_std=cfg.model.pixel_std,
        input_format=cfg.model.input_format,
        pad_after_normalize=cfg.model.pad_after_normalize,
        supervision=cfg.model.mask_head.supervision,
        max_proposals=ccfg.max_proposals,
        boxinst=ccfg.boxinst,
        pairwise_size=ccfg.pairwise_size,
        pairwise_dilation=ccfg.pairwise_dilation,
        pairwise_color_thresh=ccfg.pairwise_color_thresh,
        pairwise_warmup_iters=ccfg.pairwise_warmup_iters,
        boxinst_inside_box=ccfg.boxinst_inside_box,
        controller_feature_norm=ccfg.controller_feature_norm,
    )
