"""RoIAlign with a faster backward pass on CPU, and a forward that uses every CPU thread.

The forward pass is `torchvision.ops.roi_align` itself (identical outputs). Its CPU kernel
runs on one thread whatever `torch.get_num_threads()` says, so with T > 1 threads the RoIs
are split into T runs of about equal sampling work and each run is pooled by the same op on
its own Python thread (`pointsup.ops.cpu_threads`): the same values bit for bit, the work shared
by T cores (`roi_align_forward`). Its CPU backward
scatters every bilinear sample into the feature gradient one channel at a time, and is the
largest single cost of a CPU training step after the convolutions (docs/PERFORMANCE.md).
This module computes the same gradient with batched matrix products instead, using one fact
about RoIAlign: every sample's bilinear weight is a product of a weight along y and a weight
along x (the same holds for torchvision's validity test and edge clamping), so a pooled bin is

    out[r, c, i, j] = sum_{y, x} Ay[r, i, y] * F[b_r, c, y, x] * Ax[r, j, x]

with Ay[r, i, y] = (1 / gh) * sum over the bin's gh sample rows of the bilinear weight on
feature row y (Ax likewise). The gradient w.r.t. F is then Ay^T @ dOut @ Ax over each RoI's
window of feature rows and columns: two small matrix products and one row-wise `index_add_`.
The result equals torchvision's gradient up to float summation order (~1e-6 relative;
tests/models/test_roi_align.py compares them on random and degenerate boxes).

Shape letters: N images, R RoIs, C channels, S output side (bins per axis), G samples per
bin along one axis, K rows (or columns) of a RoI's window. Coordinates are feature-map
pixels with pixel centres at integers after the aligned half-pixel shift, as in torchvision.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torchvision.ops import roi_align as torchvision_roi_align

from .cpu_threads import can_split, map_on_threads

# Largest (RoIs x window rows x window columns x channels) handled at once in the backward:
# 4M floats = 16 MB per scratch tensor, whatever the number and size of the RoIs (a larger
# budget measured no faster and raised the peak memory of a training step).
BACKWARD_CHUNK_ELEMENTS = 1 << 22

# Fewer RoIs than this per thread are pooled in one call: a thread hand-off costs about as
# much as pooling a few small RoIs.
MIN_ROIS_PER_THREAD = 8


def roi_align(features: Tensor, rois: Tensor, output_size: int, spatial_scale: float,
              sampling_ratio: int, aligned: bool) -> Tensor:
    """torchvision.ops.roi_align (same arguments, same outputs); on CPU with a gradient to
    compute, its backward is `roi_align_backward` below.

    features: (N, C, H, W); rois: (R, 5) = (image index, x1, y1, x2, y2) in image pixels.
    returns (R, C, S, S).
    """
    if features.device.type == "cpu" and features.requires_grad and torch.is_grad_enabled():
        return _RoIAlignCPU.apply(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
    return roi_align_forward(features, rois, output_size, spatial_scale, sampling_ratio, aligned)


def roi_align_forward(features: Tensor, rois: Tensor, output_size: int, spatial_scale: float,
                      sampling_ratio: int, aligned: bool) -> Tensor:
    """torchvision.ops.roi_align's values; on CPU with T > 1 torch threads, runs of RoIs
    pooled by that op on T threads at once (its CPU kernel is single-threaded).

    features: (N, C, H, W); rois: (R, 5). returns (R, C, S, S), bit-identical to one call.
    """
    T = torch.get_num_threads()
    R = rois.shape[0]
    # With a gradient to record (outside `_RoIAlignCPU`) torchvision's own autograd must see the call.
    if not can_split(features) or R < 2 * MIN_ROIS_PER_THREAD or (torch.is_grad_enabled() and features.requires_grad):
        return torchvision_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned=aligned)
    # The kernel reads (N, C, H, W) memory and copies any other layout on every call: copy once.
    features = features.contiguous()
    bounds = balanced_splits(rois, output_size, spatial_scale, sampling_ratio, aligned,
                             min(T, R // MIN_ROIS_PER_THREAD))
    runs = [rois[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    pooled = map_on_threads(
        lambda run: torchvision_roi_align(features, run, output_size, spatial_scale, sampling_ratio, aligned=aligned),
        runs,
    )
    return torch.cat(pooled)


def balanced_splits(rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int,
                    aligned: bool, parts: int) -> list[int]:
    """Boundaries 0 = b_0 <= b_1 <= ... <= b_parts = R of consecutive runs of RoIs with about
    equal sampling work each (samples per bin: G_y x G_x, adaptive with sampling_ratio 0,
    so a large RoI costs many small ones; plus one for the per-RoI setup).

    rois: (R, 5) in image pixels.
    """
    R = rois.shape[0]
    if sampling_ratio > 0:
        work = torch.full((R,), float(sampling_ratio**2 + 1))
    else:
        sides = (rois[:, 3:5] - rois[:, 1:3]).float() * spatial_scale  # (R, 2) width, height
        if not aligned:
            sides = sides.clamp(min=1)
        grid = torch.ceil(sides.clamp(min=0) / output_size)  # (R, 2) samples per bin along x, y
        work = grid.prod(dim=1) + 1
    cumulative = torch.cumsum(work.double(), dim=0)  # (R,)
    targets = cumulative[-1] * torch.arange(1, parts, dtype=torch.float64) / parts
    # A run ends after the first RoI whose cumulative work reaches its share.
    inner = (torch.searchsorted(cumulative, targets) + 1).clamp(max=R).tolist()
    return [0, *inner, R]


class _RoIAlignCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: Tensor, rois: Tensor, output_size: int, spatial_scale: float,
                sampling_ratio: int, aligned: bool) -> Tensor:
        ctx.save_for_backward(rois)
        ctx.args = (features.shape, output_size, spatial_scale, sampling_ratio, aligned)
        return roi_align_forward(features, rois, output_size, spatial_scale, sampling_ratio, aligned)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        (rois,) = ctx.saved_tensors
        grad_features = roi_align_backward(grad_out, rois, *ctx.args)
        return grad_features, None, None, None, None, None


def bin_weights(start: Tensor, length: Tensor, S: int, sampling_ratio: int, size: int) -> tuple[Tensor, Tensor]:
    """RoIAlign's bilinear weights along one axis, summed over each bin's samples.

    start, length: (R,) the RoIs' first edge and extent along this axis (feature pixels,
    after the aligned shift); size: H or W of the feature map.
    returns first: (R,) int64, the first feature row (or column) any sample touches, and
    A: (R, S, K) with A[r, s, k] the weight of row first[r] + k in bin s, divided by the
    bin's number of samples along this axis (so Ay x Ax divides by torchvision's count).
    Rows first[r] + k past the map's edge have weight 0.
    """
    R = start.shape[0]
    bin_length = length / S  # (R,)
    if sampling_ratio > 0:
        grid = torch.full_like(length, float(sampling_ratio))
    else:
        grid = torch.ceil(length / S)  # adaptive: ceil(roi_side / S) samples (0 for an empty RoI)
    G = max(int(grid.max()), 1) if R else 1
    g = torch.arange(G, dtype=start.dtype, device=start.device)
    s = torch.arange(S, dtype=start.dtype, device=start.device)
    # torchvision's sample positions, in its order of operations: (R, S, G)
    pos = start[:, None, None] + s[None, :, None] * bin_length[:, None, None] \
        + (g[None, None, :] + 0.5) * bin_length[:, None, None] / grid.clamp(min=1)[:, None, None]
    # A sample beyond one pixel outside the map contributes 0; one within it is clamped to
    # the edge, and a sample on or past the last row reads that row only.
    valid = (g[None, None, :] < grid[:, None, None]) & (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.floor()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    frac = torch.where(at_edge, torch.zeros_like(pos), pos - low)  # weight of row low + 1
    weight = valid.to(start.dtype) / grid.clamp(min=1)[:, None, None]  # (R, S, G)

    first = torch.where(valid, low, torch.full_like(low, size - 1)).amin(dim=(1, 2))  # (R,)
    last = torch.where(valid, low + (frac > 0).to(low.dtype), torch.zeros_like(low)).amax(dim=(1, 2))
    K = max(int((last - first).max()) + 1, 1) if R else 1
    k_low = (low - first[:, None, None])[..., None]  # (R, S, G, 1) window row of each sample
    k = torch.arange(K, dtype=low.dtype, device=low.device)
    # (R, S, G, K) one-hot rows, summed over the samples: small, and vectorises (scatter_add doesn't)
    A = ((k == k_low) * (weight * (1 - frac))[..., None] + (k == k_low + 1) * (weight * frac)[..., None]).sum(2)
    return first.long(), A


def window_gradient(d_out: Tensor, Ay: Tensor, Ax: Tensor) -> Tensor:
    """Ay^T @ d_out @ Ax for each RoI and channel, columns first.

    d_out: (r, C, S, S) gradient of the bins (i along y, j along x); Ay: (r, S, Ky); Ax: (r, S, Kx).
    returns (r, Ky, Kx, C), the gradient of each RoI's window of feature pixels.
    """
    r, C, S, _ = d_out.shape
    Ky, Kx = Ay.shape[2], Ax.shape[2]
    d_out = d_out.permute(0, 3, 2, 1).reshape(r, S, S * C)  # (r, j, i*C + c)
    d_cols = torch.bmm(Ax.transpose(1, 2), d_out)  # (r, Kx, i*C + c): cost r Kx S S C
    d_cols = d_cols.view(r, Kx, S, C).transpose(1, 2).reshape(r, S, Kx * C)  # (r, i, x*C + c)
    return torch.bmm(Ay.transpose(1, 2), d_cols).view(r, Ky, Kx, C)  # cost r Ky S Kx C


def roi_align_backward(grad_out: Tensor, rois: Tensor, features_shape: torch.Size, output_size: int,
                       spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
    """Gradient of roi_align w.r.t. its features: dF = sum_r Ay[r]^T @ dOut[r] @ Ax[r].

    grad_out: (R, C, S, S); rois: (R, 5). returns (N, C, H, W), contiguous like torchvision's
    gradient (handed on in the channels-last layout it is summed in, it raised the peak
    memory of an R50-FPN training step from ~1.0x to ~1.13x torchvision's in
    scripts/bench_models.py; the copy back costs little).
    """
    N, C, H, W = features_shape
    S = output_size
    dtype = grad_out.dtype
    if dtype in (torch.float16, torch.bfloat16):  # autocast: sum in float32, as torchvision's does
        grad_out = grad_out.float()
    grad_features = grad_out.new_zeros(N * H * W, C)  # one row per feature pixel: (N, H, W, C)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, 1:].to(grad_out.dtype) * spatial_scale - offset).unbind(1)  # (R,) each
    height, width = y2 - y1, x2 - x1
    if not aligned:  # torchvision's legacy mode: RoIs at least one pixel wide
        height, width = height.clamp(min=1), width.clamp(min=1)
    image = rois[:, 0].long()

    # Chunks of RoIs of similar window shape keep the scratch bounded and the padding small:
    # grouped by window height (powers of 2) and sorted by width, a chunk ends at the end of
    # its group or where (RoIs x tallest x widest x C) would pass the budget. (An untrained
    # RPN proposes many full-height slivers: padded to square windows they would cost 20x.)
    side_y, side_x = height.clamp(min=0) + 2, width.clamp(min=0) + 2  # (R,) upper bounds of Ky, Kx
    group = torch.log2(side_y).ceil()
    order = torch.argsort(group * (W + 3) + side_x.clamp(max=W + 2))
    group, side_y, side_x = group[order], side_y[order], side_x[order]
    start = 0
    while start < len(order):
        same_group = int((group[start:] == group[start]).sum())
        tallest = torch.cummax(side_y[start:start + same_group], dim=0).values
        widest = torch.cummax(side_x[start:start + same_group], dim=0).values
        cost = torch.arange(1, same_group + 1) * tallest * widest * C  # chunk [start, start + n)
        count = max(1, int((cost <= BACKWARD_CHUNK_ELEMENTS).sum()))
        idx = order[start:start + count]
        start += count
        first_y, Ay = bin_weights(y1[idx], height[idx], S, sampling_ratio, H)  # (r,), (r, S, Ky)
        first_x, Ax = bin_weights(x1[idx], width[idx], S, sampling_ratio, W)  # (r,), (r, S, Kx)
        Ky, Kx = Ay.shape[2], Ax.shape[2]
        rows = (first_y[:, None] + torch.arange(Ky)).clamp(max=H - 1)  # (r, Ky); rows past H: weight 0
        cols = (first_x[:, None] + torch.arange(Kx)).clamp(max=W - 1)  # (r, Kx)
        pixel = (image[idx, None, None] * H + rows[:, :, None]) * W + cols[:, None, :]  # (r, Ky, Kx)
        if Ky >= Kx:
            d_window = window_gradient(grad_out[idx], Ay, Ax)  # (r, Ky, Kx, C)
        else:  # wide windows: the same product transposed, which contracts the short side first
            d_window = window_gradient(grad_out[idx].transpose(2, 3), Ax, Ay)  # (r, Kx, Ky, C)
            pixel = pixel.transpose(1, 2)
        grad_features.index_add_(0, pixel.reshape(-1), d_window.reshape(-1, C))
    return grad_features.view(N, H, W, C).permute(0, 3, 1, 2).contiguous().to(dtype)
