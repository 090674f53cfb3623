"""Generalized R-CNN: backbone -> RPN -> ROI heads (box + mask) -> postprocess.

Shape letters: N images, H x W padded batch size, D detections of an image.
The same model trains with full masks or with points; only the mask loss differs
(`cfg.model.mask_head.supervision`, paper sec. 3.2).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..config import Config
from ..structures import InstanceTargets
from .inputs import check_input_format, normalize_images, pixel_stat
from .postprocess import PASTE_FUNCTIONS, rescale_detections
from .roi_heads import ROIHeads, build_roi_heads
from .rpn import RPN, build_rpn


class GeneralizedRCNN(nn.Module):
    """Two-stage detector with a pluggable mask head (see docs/DESIGN.md for the contract)."""

    def __init__(
        self,
        backbone: nn.Module,
        rpn: RPN,
        roi_heads: ROIHeads,
        pixel_mean: list[float],
        pixel_std: list[float],
        mask_threshold: float = 0.5,
        input_format: str = "RGB",
        pad_after_normalize: bool = False,
        mask_paste: str = "pointsup",
    ):
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.mask_threshold = mask_threshold
        self.input_format = check_input_format(input_format)  # BGR: MSRA / detectron2 weights; pixel_mean/std in that order
        self.pad_after_normalize = pad_after_normalize
        if mask_paste not in PASTE_FUNCTIONS:
            raise ValueError(f"mask_paste must be one of {sorted(PASTE_FUNCTIONS)}, got {mask_paste!r}")
        self.mask_paste = mask_paste
        self.register_buffer("pixel_mean", pixel_stat(pixel_mean), persistent=False)  # (1, 3, 1, 1)
        self.register_buffer("pixel_std", pixel_stat(pixel_std), persistent=False)

    def forward(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        targets: list[InstanceTargets] | None = None,
        output_sizes: list[tuple[int, int]] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """images (N, 3, H, W) RGB 0..255 padded to /32.

        train: dict of scalar losses. eval: per image dict with pred_boxes (D, 4),
        pred_scores (D,), pred_classes (D,), pred_masks (D, H_i, W_i) bool, in the
        image_sizes frame or in output_sizes when given.
        """
        features = self.backbone(self.normalize(images, image_sizes))
        proposals, rpn_losses = self.rpn(features, image_sizes, targets)
        detections, roi_losses = self.roi_heads(features, proposals, image_sizes, targets)
        if self.training:
            return {**rpn_losses, **roi_losses}
        output_sizes = output_sizes or image_sizes
        return [
            rescale_detections(d, in_size, out_size, self.mask_threshold, self.mask_paste)
            for d, in_size, out_size in zip(detections, image_sizes, output_sizes)
        ]

    def normalize(self, images: Tensor, image_sizes: list[tuple[int, int]]) -> Tensor:
        """RGB 0..255 (N, 3, H, W) -> the normalised input the weights were trained on (`inputs.py`)."""
        return normalize_images(images, image_sizes, self.pixel_mean, self.pixel_std, self.input_format, self.pad_after_normalize)


def build_mask_head(cfg: Config, num_classes: int, in_channels: int, strides: dict[str, int]) -> nn.Module:
    """Plain if/elif on cfg.model.mask_head.name; imports are lazy so heads stay independent."""
    name = cfg.model.mask_head.name
    if name == "mask_rcnn":
        from .mask_head import build_mask_rcnn_head

        return build_mask_rcnn_head(cfg.model.mask_head, num_classes, in_channels, strides)
    if name == "pointrend":
        from .pointrend import build_pointrend_head

        return build_pointrend_head(cfg.model.mask_head, num_classes, in_channels, strides)
    if name == "implicit_pointrend":
        from .implicit_pointrend import build_implicit_pointrend_head

        return build_implicit_pointrend_head(cfg.model.mask_head, num_classes, in_channels, strides)
    raise ValueError(f"unknown model.mask_head.name {name!r} (expected mask_rcnn, pointrend or implicit_pointrend)")


def build_rcnn(cfg: Config, num_classes: int, backbone: nn.Module | None = None) -> GeneralizedRCNN:
    """Mask R-CNN family from the config; `backbone` overrides the configured ResNet-FPN
    (any module with forward(images) -> {"p2".."p6"}, out_channels and strides)."""
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if backbone is None:
        from .backbone import build_backbone

        backbone = build_backbone(cfg.model.backbone, top_block="maxpool")
    C, strides = backbone.out_channels, dict(backbone.strides)
    mask_head = build_mask_head(cfg, num_classes, C, strides)
    return GeneralizedRCNN(
        backbone=backbone,
        rpn=build_rpn(cfg.model.rpn, C, strides),
        roi_heads=build_roi_heads(cfg.model.roi_heads, num_classes, C, strides, mask_head),
        pixel_mean=cfg.model.pixel_mean,
        pixel_std=cfg.model.pixel_std,
        input_format=cfg.model.input_format,
        pad_after_normalize=cfg.model.pad_after_normalize,
        mask_paste=cfg.model.mask_paste,
    )
