"""Sampling features and logits at continuous points (paper Fig. 2, PointRend).

Shape letters: R RoIs (or images), C channels, P points, H x W a feature map or grid.

Frames (see `pointsup.structures`):
    coords_box  (R, P, 2) (x, y) in [0, 1] relative to each RoI box.
    coords_img  (R, P, 2) (x, y) in continuous image pixels.

A grid of logits predicted for a box (e.g. Mask R-CNN's 28 x 28) is treated as covering
the box exactly: its outer cell edges are the box edges, so cell (i, j) has its centre at
coords_box = ((j + 0.5) / W, (i + 0.5) / H). This is `grid_sample(align_corners=False)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def point_sample(inputs: Tensor, coords: Tensor, align_corners: bool = False) -> Tensor:
    """Bilinearly sample `inputs` at normalised [0, 1] coordinates.

    inputs: (R, C, H, W) one map per RoI (or per image).
    coords: (R, P, 2) (x, y) in [0, 1] over the map's extent (box-relative when the map is
            a RoI prediction, image-relative when it is an image-level map).
    returns (R, C, P). Points outside [0, 1] read zero padding.
    """
    if coords.dim() != 3 or coords.shape[-1] != 2:
        raise ValueError(f"coords must be (R, P, 2), got {tuple(coords.shape)}")
    grid = 2.0 * coords.unsqueeze(2) - 1.0  # (R, P, 1, 2) in grid_sample's [-1, 1] frame
    out = F.grid_sample(inputs, grid.to(inputs.dtype), mode="bilinear", padding_mode="zeros", align_corners=align_corners)
    return out.squeeze(3)  # (R, C, P)


def coords_img_to_box(coords_img: Tensor, boxes_xyxy: Tensor) -> Tensor:
    """(R, P, 2) image pixels -> (R, P, 2) box-relative [0, 1] coords of each RoI's box (R, 4)."""
    x0y0 = boxes_xyxy[:, None, :2]
    wh = (boxes_xyxy[:, None, 2:] - boxes_xyxy[:, None, :2]).clamp(min=1e-6)
    return (coords_img - x0y0) / wh


def coords_box_to_img(coords_box: Tensor, boxes_xyxy: Tensor) -> Tensor:
    """(R, P, 2) box-relative [0, 1] coords -> (R, P, 2) image pixels, given boxes (R, 4)."""
    x0y0 = boxes_xyxy[:, None, :2]
    wh = boxes_xyxy[:, None, 2:] - boxes_xyxy[:, None, :2]
    return coords_box * wh + x0y0


def inside_unit_square(coords_box: Tensor) -> Tensor:
    """(R, P, 2) -> (R, P) bool: the point lies inside its box (edges included)."""
    return ((coords_box >= 0.0) & (coords_box <= 1.0)).all(dim=-1)


def grid_coords(R: int, side: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Cell centres of a side x side grid over a box: (R, side*side, 2) box-relative, row-major."""
    centres = (torch.arange(side, device=device, dtype=dtype) + 0.5) / side
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    coords = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)  # (side*side, 2)
    return coords.unsqueeze(0).expand(R, -1, -1)


def uncertainty(logits: Tensor) -> Tensor:
    """PointRend's uncertainty: -|logit|, highest (0) on the decision boundary. Any shape."""
    return -logits.abs()


# ----------------------------------------------------------------------------------------
# PointRend's point selection and fine-grained features.
#
# Two normalised frames meet here, and every function says which one it takes:
#   box-normalised   coords_box in [0, 1] over one RoI box (what the heads reason in);
#   image-normalised coords in [0, 1] over a whole feature map, i.e. coords_img divided by
#                    the map's extent in image pixels (W_f * stride, H_f * stride). The extent
#                    of the *padded* map is used, because that is what the map covers.
# ----------------------------------------------------------------------------------------


def point_sampling_layout(features: Tensor) -> Tensor:
    """The memory layout in which sampling C channels at scattered points is fastest.

    Each bilinear tap reads C values at one location: with channels-last storage they are
    contiguous. On CPU, grid_sample of 78k points from a (1, 256, 128, 128) map is 3.6x
    faster forward and 1.4x forward + backward (measured). CUDA is left as it is (not
    measured). Heads that sample one map many times convert it once and pass it on.
    """
    if features.device.type == "cpu":
        return features.contiguous(memory_format=torch.channels_last)  # no-op if already
    return features


def point_sample_fine_grained_features(
    features: Tensor, stride: int, boxes: list[Tensor], coords_box: Tensor
) -> Tensor:
    """Sample an image-level feature map (e.g. FPN p2) at box-relative points of each RoI.

    features:   (N, C, H_f, W_f) one map per image, cell (i, j) covering image pixels
                [j*stride, (j+1)*stride) x [i*stride, (i+1)*stride).
    stride:     image pixels per feature cell.
    boxes:      per image (R_i, 4) xyxy image pixels; R = sum R_i.
    coords_box: (R, P, 2) box-relative points, RoIs in the order of `boxes`.
    returns     (R, C, P) bilinear features (zero outside the map).

    On a regular grid of cell centres this is RoIAlign with one sample per bin
    (`torchvision.ops.roi_align(aligned=True, sampling_ratio=1)`).
    """
    num_rois_per_image = [len(b) for b in boxes]
    R, P, _ = coords_box.shape
    if sum(num_rois_per_image) != R:
        raise ValueError(f"{R} point sets for {sum(num_rois_per_image)} boxes")
    N, C, H_f, W_f = features.shape
    if R == 0:
        return features.new_zeros(0, C, P)
    coords_img = coords_box_to_img(coords_box, torch.cat(boxes).to(coords_box.dtype))  # (R, P, 2)
    extent_img = coords_box.new_tensor([W_f * stride, H_f * stride])
    coords_map = coords_img / extent_img  # (R, P, 2) image-normalised
    features = point_sampling_layout(features)  # no copy if the caller converted already
    out = []
    for i, coords_i in enumerate(coords_map.split(num_rois_per_image)):
        R_i = coords_i.shape[0]
        if R_i == 0:
            continue
        # One grid_sample per image: all its RoIs' points as one long list of points.
        sampled = point_sample(features[i : i + 1], coords_i.reshape(1, R_i * P, 2))  # (1, C, R_i*P)
        out.append(sampled.view(C, R_i, P).transpose(0, 1))  # (R_i, C, P)
    return out[0] if len(out) == 1 else torch.cat(out)  # one image: a view, no copy


def get_uncertain_point_coords_with_randomness(
    coarse_logits: Tensor,
    uncertainty_fn,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> Tensor:
    """PointRend's training point selection (importance sampling, PointRend sec. 3.1).

    coarse_logits:  (R, 1, h, w) logits on a grid over each box (the GT class's channel).
    uncertainty_fn: maps logits of any shape to uncertainties of the same shape (higher =
                    more uncertain), e.g. `uncertainty` (-|logit|).
    returns         (R, num_points, 2) coords_box: beta * P of the most uncertain of
                    k * P uniform candidates, plus (1 - beta) * P fresh uniform points
                    (k = oversample_ratio, beta = importance_sample_ratio).
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0.0 <= importance_sample_ratio <= 1.0:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    R = coarse_logits.shape[0]
    device = coarse_logits.device
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain

    candidates = torch.rand(R, num_candidates, 2, device=device)  # (R, kP, 2)
    # Score uncertainty *after* interpolating the logits: a point halfway between logits -1
    # and +1 sits on the boundary (logit 0), which interpolated uncertainties would miss.
    candidate_logits = point_sample(coarse_logits, candidates)[:, 0]  # (R, kP)
    candidate_uncertainty = uncertainty_fn(candidate_logits)  # (R, kP)
    top = candidate_uncertainty.topk(num_uncertain, dim=1).indices  # (R, beta*P)
    uncertain = candidates.gather(1, top.unsqueeze(-1).expand(-1, -1, 2))  # (R, beta*P, 2)
    # The rest are uniform so the head also sees easy points far from the boundary.
    random = torch.rand(R, num_random, 2, device=device)
    return torch.cat([uncertain, random], dim=1)


def get_uncertain_point_coords_on_grid(uncertainty_map: Tensor, num_points: int) -> tuple[Tensor, Tensor]:
    """The `num_points` most uncertain cells of a regular grid (adaptive subdivision).

    uncertainty_map: (R, 1, H, W) uncertainties of an H x W grid over each box.
    returns point_indices (R, P) row-major cell indices in [0, H*W), and
            coords_box (R, P, 2) the centres of those cells; P = min(num_points, H*W).
    """
    R, _, H, W = uncertainty_map.shape
    num_points = min(num_points, H * W)
    point_indices = uncertainty_map.view(R, H * W).topk(num_points, dim=1).indices  # (R, P)
    cols = (point_indices % W).to(torch.float32)
    rows = torch.div(point_indices, W, rounding_mode="floor").to(torch.float32)
    coords_box = torch.stack([(cols + 0.5) / W, (rows + 0.5) / H], dim=-1)  # (R, P, 2)
    return point_indices, coords_box


def sample_mask_labels(gt_masks: Tensor, gt_index: Tensor, coords_img: Tensor) -> Tensor:
    """Bilinearly sample full-image bitmasks at image points: soft point labels.

    gt_masks:   (M, H, W) bool masks of one image.
    gt_index:   (R,) int64, which mask each RoI reads.
    coords_img: (R, P, 2) points in image pixels.
    returns     (R, P) float in [0, 1] (0 outside the image).

    Same values as `point_sample(gt_masks[gt_index].float()[:, None], coords_img / (W, H))`,
    but it gathers the 4 neighbouring pixels straight from the bool masks, so it never
    makes an (R, H, W) float copy of full-image masks.
    """
    M, H, W = gt_masks.shape
    R, P, _ = coords_img.shape
    if R == 0 or P == 0:
        return coords_img.new_zeros(R, P)
    # Pixel centres sit at integer + 0.5, so shift to "pixel index" space first.
    u = coords_img[..., 0] - 0.5  # (R, P) column space
    v = coords_img[..., 1] - 0.5  # (R, P) row space
    u0, v0 = u.floor(), v.floor()
    du, dv = u - u0, v - v0
    u0, v0 = u0.long(), v0.long()
    flat = gt_masks.reshape(M * H * W)
    offset = (gt_index * (H * W)).view(R, 1)  # start of each RoI's mask in `flat`
    labels = coords_img.new_zeros(R, P)
    for dy, wy in ((0, 1.0 - dv), (1, dv)):
        for dx, wx in ((0, 1.0 - du), (1, du)):
            ui, vi = u0 + dx, v0 + dy
            inside = (ui >= 0) & (ui < W) & (vi >= 0) & (vi < H)  # zero padding outside
            idx = (vi.clamp(0, H - 1) * W + ui.clamp(0, W - 1))  # (R, P)
            value = flat[offset + idx].to(labels.dtype) * inside  # (R, P)
            labels = labels + wy * wx * value
    return labels
