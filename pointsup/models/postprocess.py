"""From box-relative mask grids to full-image masks, and from input size to output size.

Shape letters (`pointsup.structures`): R masks to paste with their boxes (any RoIs),
D detections of one image (a model's output rows), S side of a predicted mask grid,
H x W image.

A mask grid covers its box exactly (`pointsup.ops.point_features`): pixel (i, j) of the
image has its centre at (j + 0.5, i + 0.5) in the `*_img` frame, i.e. at
coords_box = ((j + 0.5 - x0) / (x1 - x0), ...) of the box, where the grid is read with
bilinear interpolation, align_corners=False, and zero outside the box.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def paste_masks_in_image(mask_probs: Tensor, boxes_xyxy: Tensor, image_size: tuple[int, int], threshold: float = 0.5) -> Tensor:
    """Paste (S, S) box-relative masks into the full image.

    mask_probs (R, S, S) probabilities, boxes_xyxy (R, 4) img, image_size (H, W), threshold > 0.
    returns (R, H, W) bool: the interpolated probability at each pixel centre >= threshold.

    With zero padding a mask is exactly 0 further than half a cell outside its box, so each
    mask is sampled only on the window of pixels around its box (clipped to the image) and
    written into that window: the cost is the boxes' total area, not R * H * W.
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    R, S_h, S_w = mask_probs.shape
    H, W = image_size
    out = torch.zeros(R, H, W, dtype=torch.bool, device=mask_probs.device)
    if R == 0 or H == 0 or W == 0:
        return out
    boxes_xyxy = boxes_xyxy.float()
    wh = (boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]).clamp(min=1e-6)  # (R, 2)
    half_cell = wh / (2 * wh.new_tensor([S_w, S_h]))
    lo = (boxes_xyxy[:, :2] - half_cell).floor().clamp(min=0)  # (R, 2) first pixel (x, y) of the window
    hi = torch.minimum((boxes_xyxy[:, 2:] + half_cell).ceil(), wh.new_tensor([W, H]))
    win = (hi - lo).clamp(min=0).long()  # (R, 2) window (width, height) in pixels, inside the image
    mask_probs = mask_probs[:, None].float()  # (R, 1, S, S)
    # One small grid_sample per mask: a Python loop over D <= 100 detections costs less than
    # padding every window to the largest one (and the per-pixel values are the same).
    for r, (x0, y0, win_w, win_h) in enumerate(torch.cat([lo.long(), win], dim=1).tolist()):
        if win_w == 0 or win_h == 0:
            continue
        xs = lo[r, 0] + torch.arange(win_w, device=out.device) + 0.5  # (win_w,) pixel centres, img
        ys = lo[r, 1] + torch.arange(win_h, device=out.device) + 0.5  # (win_h,)
        gx = (xs - boxes_xyxy[r, 0]) / wh[r, 0] * 2 - 1  # grid_sample's [-1, 1] box frame
        gy = (ys - boxes_xyxy[r, 1]) / wh[r, 1] * 2 - 1
        grid = torch.stack([gx[None, :].expand(win_h, -1), gy[:, None].expand(-1, win_w)], dim=-1)  # (win_h, win_w, 2)
        probs = F.grid_sample(mask_probs[r : r + 1], grid[None], mode="bilinear", padding_mode="zeros", align_corners=False)
        out[r, y0 : y0 + win_h, x0 : x0 + win_w] = probs[0, 0] >= threshold
    return out


def paste_masks_torchvision(mask_probs: Tensor, boxes_xyxy: Tensor, image_size: tuple[int, int], threshold: float = 0.5) -> Tensor:
    """torchvision's pasting convention, to reproduce its outputs with its weights.

    Each (S, S) grid is padded by one zero cell, its box grown by (S + 2) / S, the corners
    truncated to integers and the grid resized bilinearly to (y1 - y0 + 1, x1 - x0 + 1)
    pixels (the old "+1" pixel convention). Returns (R, H, W) bool: probability > threshold
    (torchvision returns the probabilities; its references threshold them with > 0.5).
    """
    R, S, _ = mask_probs.shape
    H, W = image_size
    out = torch.zeros(R, H, W, dtype=torch.bool, device=mask_probs.device)
    scale = (S + 2) / S
    padded = F.pad(mask_probs.float(), (1, 1, 1, 1))  # (R, S + 2, S + 2)
    centre = (boxes_xyxy[:, :2] + boxes_xyxy[:, 2:]).float() * 0.5
    half = (boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]).float() * 0.5 * scale
    boxes_int = torch.cat([centre - half, centre + half], dim=1).to(torch.int64)  # truncation, as torchvision
    for r, (x0, y0, x1, y1) in enumerate(boxes_int.tolist()):
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        probs = F.interpolate(padded[r][None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        xa, xb, ya, yb = max(x0, 0), min(x1 + 1, W), max(y0, 0), min(y1 + 1, H)
        if xb > xa and yb > ya:
            out[r, ya:yb, xa:xb] = probs[ya - y0 : yb - y0, xa - x0 : xb - x0] > threshold
    return out


# The mask pasting conventions, by their config name (`model.mask_paste`).
PASTE_FUNCTIONS = {"pointsup": paste_masks_in_image, "torchvision": paste_masks_torchvision}


def rescale_boxes(boxes_xyxy: Tensor, input_size: tuple[int, int], output_size: tuple[int, int]) -> Tensor:
    """(R, 4) boxes in an (H_in, W_in) image -> the same boxes in the (H_out, W_out) resized image."""
    scale_y, scale_x = output_size[0] / input_size[0], output_size[1] / input_size[1]
    boxes_xyxy = boxes_xyxy * boxes_xyxy.new_tensor([scale_x, scale_y, scale_x, scale_y])
    boxes_xyxy[:, 0::2] = boxes_xyxy[:, 0::2].clamp(0, output_size[1])
    boxes_xyxy[:, 1::2] = boxes_xyxy[:, 1::2].clamp(0, output_size[0])
    return boxes_xyxy


def rescale_detections(
    detections: dict[str, Tensor],
    input_size: tuple[int, int],
    output_size: tuple[int, int] | None = None,
    mask_threshold: float = 0.5,
    paste: str = "pointsup",
) -> dict[str, Tensor]:
    """One image's detections with `pred_mask_probs` (D, S, S) -> the model's output dict.

    Boxes are scaled from the `input_size` (H, W) frame into `output_size` (default: the
    same) and clipped to it; detections whose clipped box is empty are dropped, so the
    output has D' <= D rows. The masks are pasted at the output size, giving `pred_masks`
    (D', H_out, W_out) bool. The box grid is resolution-free, so no mask is ever resized twice.
    paste: "pointsup" (`paste_masks_in_image`) or "torchvision" (`paste_masks_torchvision`).
    """
    output_size = tuple(input_size if output_size is None else output_size)
    boxes_xyxy = rescale_boxes(detections["pred_boxes"], input_size, output_size)
    # A box that lies outside the output image (or is degenerate) has no area once clipped:
    # there is no object to report and nothing to paste. detectron2 (`detector_postprocess`,
    # `Boxes.nonempty`) drops such detections too, so the outputs agree one to one.
    keep = (boxes_xyxy[:, 2] > boxes_xyxy[:, 0]) & (boxes_xyxy[:, 3] > boxes_xyxy[:, 1])  # (D,)
    out = {
        "pred_boxes": boxes_xyxy[keep],
        "pred_scores": detections["pred_scores"][keep],
        "pred_classes": detections["pred_classes"][keep],
    }
    if "pred_mask_probs" in detections:
        if paste not in PASTE_FUNCTIONS:
            raise ValueError(f"paste must be one of {sorted(PASTE_FUNCTIONS)}, got {paste!r}")
        mask_probs = detections["pred_mask_probs"][keep]  # (D', S, S)
        out["pred_masks"] = PASTE_FUNCTIONS[paste](mask_probs, out["pred_boxes"], output_size, mask_threshold)
    return out
