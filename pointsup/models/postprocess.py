"""From box-relative mask grids to full-image masks, and from input size to output size.

Shape letters: R (or D) detections, S side of a predicted mask grid, H x W image.

A mask grid covers its box exactly (`pointsup.ops.point_features`): pixel (i, j) of the
image has its centre at (j + 0.5, i + 0.5) in the `*_img` frame, i.e. at
coords_box = ((j + 0.5 - x0) / (x1 - x0), ...) of the box, where the grid is read with
bilinear interpolation, align_corners=False, and zero outside the box.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Upper bound on R * H * W float sampling-grid elements built at once by `paste_masks_in_image`
# (2 floats each: ~128 MiB per chunk), so 100 detections on a 1333 x 800 image stay bounded.
PASTE_CHUNK_ELEMENTS = 1 << 24


def paste_masks_in_image(mask_probs: Tensor, boxes_xyxy: Tensor, image_size: tuple[int, int], threshold: float = 0.5) -> Tensor:
    """Paste every (S, S) box-relative mask into the full image at once.

    mask_probs (R, S, S) probabilities, boxes_xyxy (R, 4) img, image_size (H, W).
    returns (R, H, W) bool: the interpolated probability at each pixel centre >= threshold.
    All masks are sampled in one `grid_sample` call per chunk of R (chunked by memory).
    """
    R, H, W = mask_probs.shape[0], image_size[0], image_size[1]
    out = torch.zeros(R, H, W, dtype=torch.bool, device=mask_probs.device)
    if R == 0 or H == 0 or W == 0:
        return out
    boxes_xyxy = boxes_xyxy.float()
    xs = torch.arange(W, device=mask_probs.device, dtype=torch.float32) + 0.5  # pixel centres, img frame
    ys = torch.arange(H, device=mask_probs.device, dtype=torch.float32) + 0.5
    chunk = max(1, PASTE_CHUNK_ELEMENTS // (H * W))
    for start in range(0, R, chunk):
        box = boxes_xyxy[start : start + chunk]  # (r, 4)
        wh = (box[:, 2:] - box[:, :2]).clamp(min=1e-6)
        gx = (xs[None] - box[:, 0:1]) / wh[:, 0:1] * 2 - 1  # (r, W) in grid_sample's [-1, 1] box frame
        gy = (ys[None] - box[:, 1:2]) / wh[:, 1:2] * 2 - 1  # (r, H)
        grid = torch.stack([gx[:, None, :].expand(-1, H, -1), gy[:, :, None].expand(-1, -1, W)], dim=-1)  # (r, H, W, 2)
        probs = mask_probs[start : start + chunk, None].float()  # (r, 1, S, S)
        pasted = F.grid_sample(probs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[start : start + chunk] = pasted[:, 0] >= threshold
    return out


def rescale_boxes(boxes_xyxy: Tensor, input_size: tuple[int, int], output_size: tuple[int, int]) -> Tensor:
    """(R, 4) boxes in an (H_in, W_in) image -> the same boxes in the (H_out, W_out) resized image."""
    scale_y, scale_x = output_size[0] / input_size[0], output_size[1] / input_size[1]
    boxes_xyxy = boxes_xyxy * boxes_xyxy.new_tensor([scale_x, scale_y, scale_x, scale_y])
    boxes_xyxy[:, 0::2] = boxes_xyxy[:, 0::2].clamp(0, output_size[1])
    boxes_xyxy[:, 1::2] = boxes_xyxy[:, 1::2].clamp(0, output_size[0])
    return boxes_xyxy


def rescale_detections(
    detections: dict[str, Tensor], input_size: tuple[int, int], output_size: tuple[int, int] | None = None, mask_threshold: float = 0.5
) -> dict[str, Tensor]:
    """One image's detections with `pred_mask_probs` (D, S, S) -> the model's output dict.

    Boxes are scaled from the `input_size` (H, W) frame into `output_size` (default: the
    same) and the masks are pasted at the output size, giving `pred_masks` (D, H_out, W_out)
    bool. The box grid is resolution-free, so no mask is ever resized twice.
    """
    output_size = tuple(input_size if output_size is None else output_size)
    boxes_xyxy = rescale_boxes(detections["pred_boxes"], input_size, output_size)
    out = {
        "pred_boxes": boxes_xyxy,
        "pred_scores": detections["pred_scores"],
        "pred_classes": detections["pred_classes"],
    }
    if "pred_mask_probs" in detections:
        out["pred_masks"] = paste_masks_in_image(detections["pred_mask_probs"], boxes_xyxy, output_size, mask_threshold)
    return out
