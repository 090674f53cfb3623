"""Multi-level RoIAlign: each box is pooled from the FPN level that suits its size.

The op per level is torchvision's RoIAlign; when training on CPU its gradient comes from
`pointsup.ops.roi_align` (same values up to summation order; forward + backward in ~0.6x
torchvision's time at COCO sizes, `scripts/bench_roi_align.py`).

Shape letters: N images, R RoIs (all images concatenated), C channels, S output side.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .roi_align import roi_align


LEVEL_MAPPERS = ("detectron2", "torchvision")


def assign_boxes_to_levels(
    boxes_xyxy: Tensor,
    min_level: int,
    max_level: int,
    canonical_box_size: float,
    canonical_level: int,
    level_mapper: str = "detectron2",
) -> Tensor:
    """FPN paper eq. (1): a 224 x 224 box goes to P4, each halving of its side one level down.

    boxes_xyxy: (R, 4) -> (R,) int64 level index relative to min_level (0 = finest).
    level_mapper: where the rounding guard goes, which decides boxes exactly at a level
    boundary: detectron2 log2(side / 224 + 1e-8), torchvision log2(side / 224) + 1e-6.
    """
    side = torch.sqrt((boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]).prod(dim=1).clamp(min=0))
    if level_mapper == "torchvision":
        level = torch.floor(canonical_level + torch.log2(side / canonical_box_size) + 1e-6)
    else:
        level = torch.floor(canonical_level + torch.log2(side / canonical_box_size + 1e-8))
    return level.clamp(min_level, max_level).to(torch.int64) - min_level


class ROIPooler(nn.Module):
    """RoIAlign (aligned=True, i.e. pixel centres at +0.5) over a list of FPN levels.

    torchvision's MultiScaleRoIAlign uses aligned=False (a half-pixel shift), so it is not
    used here: our masks and boxes live in the continuous `*_img` frame. `aligned=False`,
    `sampling_ratio=2` and `level_mapper="torchvision"` reproduce it, for torchvision's
    weights (configs/torchvision).
    """

    def __init__(
        self,
        output_size: int,
        scales: list[float],
        sampling_ratio: int = 0,
        canonical_box_size: int = 224,
        canonical_level: int = 4,
        aligned: bool = True,
        level_mapper: str = "detectron2",
        channels_last: bool = True,
    ):
        super().__init__()
        if level_mapper not in LEVEL_MAPPERS:
            raise ValueError(f"level_mapper must be one of {LEVEL_MAPPERS}, got {level_mapper!r}")
        self.aligned = aligned
        self.level_mapper = level_mapper
        self.channels_last = channels_last
        levels = [-math.log2(s) for s in scales]
        if any(abs(lv - round(lv)) > 1e-6 for lv in levels) or [round(lv) for lv in levels] != list(
            range(round(levels[0]), round(levels[0]) + len(levels))
        ):
            raise ValueError(f"scales must be consecutive powers of 1/2, got {scales}")
        self.output_size = output_size
        self.scales = list(scales)
        self.sampling_ratio = sampling_ratio
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level
        self.min_level = round(levels[0])
        self.max_level = round(levels[-1])

    def forward(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        """features: per level (N, C, H_l, W_l), finest first; boxes: per image (R_i, 4) xyxy img.

        returns (R, C, S, S) with R = sum(R_i), in the order of the concatenated boxes.
        """
        boxes_xyxy = torch.cat(boxes)  # (R, 4)
        batch_idx = torch.cat([torch.full((len(b),), i, dtype=boxes_xyxy.dtype, device=boxes_xyxy.device) for i, b in enumerate(boxes)])
        rois = torch.cat([batch_idx[:, None], boxes_xyxy], dim=1)  # (R, 5) torchvision's format
        R, C, S = rois.shape[0], features[0].shape[1], self.output_size
        # On CPU the pooled features are handed on channels-last when a conv head reads them:
        # its convs run faster in that layout with oneDNN (docs/PERFORMANCE.md). An fc head
        # (channels_last=False) flattens them in (C, S, S) order, which that layout would
        # turn into one more copy. Same values either way.
        use_channels_last = self.channels_last and rois.device.type == "cpu"
        memory_format = torch.channels_last if use_channels_last else torch.contiguous_format
        if len(features) == 1:
            out = roi_align(features[0], rois, S, self.scales[0], self.sampling_ratio, self.aligned)
            return out.contiguous(memory_format=memory_format)

        level_idx = assign_boxes_to_levels(
            boxes_xyxy, self.min_level, self.max_level, self.canonical_box_size, self.canonical_level, self.level_mapper
        )
        out = features[0].new_zeros(R, C, S, S).contiguous(memory_format=memory_format)
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            idx = torch.nonzero(level_idx == level).squeeze(1)
            if idx.numel() == 0:
                continue
            out[idx] = roi_align(feature, rois[idx], S, scale, self.sampling_ratio, self.aligned).to(out.dtype)
        return out
