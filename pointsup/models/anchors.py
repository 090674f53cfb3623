"""Anchor boxes for the RPN: one size per FPN level, a few aspect ratios at every location.

Shape letters (`pointsup.structures`): B anchors per location (one per aspect ratio),
H_l x W_l the grid of level l, A = sum_l H_l * W_l * B anchors of one image.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def cell_anchors(size: float, aspect_ratios: list[float], round_to_pixels: bool = False) -> Tensor:
    """(B, 4) xyxy anchors centred on (0, 0), all of area size**2; ratio = height / width.

    round_to_pixels: round the corners to whole pixels, as torchvision's AnchorGenerator does.
    """
    anchors = []
    for ratio in aspect_ratios:
        w = math.sqrt(size * size / ratio)
        h = ratio * w
        anchors.append([-w / 2, -h / 2, w / 2, h / 2])
    anchors = torch.tensor(anchors)
    return anchors.round() if round_to_pixels else anchors


class AnchorGenerator(nn.Module):
    """Anchors of every level, ordered (H_l, W_l, B) to match the RPN head's outputs.

    Anchor centres sit at (j * stride, i * stride) + offset * stride (detectron2 uses offset 0).

    torchvision compatibility (both off by default): `round_cell_anchors` rounds the cell
    anchors to whole pixels; `stride_from_grid` uses stride = padded_size // grid_size per
    level, with the padded size taken from the first level (grid * stride), as torchvision's
    AnchorGenerator does (so a P6 grid of ceil(25 / 2) = 13 cells gets stride 800 // 13 = 61).
    """

    def __init__(
        self,
        sizes: list[float],
        aspect_ratios: list[float],
        strides: list[int],
        offset: float = 0.0,
        round_cell_anchors: bool = False,
        stride_from_grid: bool = False,
    ):
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(f"need one anchor size per level, got {len(sizes)} sizes for {len(strides)} levels")
        self.strides = list(strides)
        self.offset = offset
        self.stride_from_grid = stride_from_grid
        self.num_anchors = len(aspect_ratios)  # B
        for level, size in enumerate(sizes):
            cell = cell_anchors(size, aspect_ratios, round_to_pixels=round_cell_anchors)
            self.register_buffer(f"cell_anchors_{level}", cell, persistent=False)

    def forward(self, grid_sizes: list[tuple[int, int]]) -> list[Tensor]:
        """grid_sizes: per level (H_l, W_l) -> per level (H_l * W_l * B, 4) xyxy img anchors."""
        anchors = []
        padded_h, padded_w = grid_sizes[0][0] * self.strides[0], grid_sizes[0][1] * self.strides[0]
        for level, ((H, W), stride) in enumerate(zip(grid_sizes, self.strides)):
            base = getattr(self, f"cell_anchors_{level}")  # (B, 4)
            stride_y, stride_x = (padded_h // H, padded_w // W) if self.stride_from_grid else (stride, stride)
            xs = (torch.arange(W, device=base.device, dtype=torch.float32) + self.offset) * stride_x
            ys = (torch.arange(H, device=base.device, dtype=torch.float32) + self.offset) * stride_y
            shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([shift_x, shift_y, shift_x, shift_y], dim=-1).reshape(-1, 1, 4)  # (H*W, 1, 4)
            anchors.append((shifts + base[None]).reshape(-1, 4))
        return anchors
