"""pointsup.ops.roi_align: torchvision's forward, and a CPU backward that must equal torchvision's
gradient up to float summation order, on boxes that exercise every branch of RoIAlign's
sampling (adaptive and fixed grids, legacy alignment, empty and inverted boxes, boxes that
leave the map, long thin boxes that need many samples)."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align as torchvision_roi_align

from pointsup.ops.roi_align import BACKWARD_CHUNK_ELEMENTS, roi_align, roi_align_backward
from pointsup.ops.roi_pooler import ROIPooler


def awkward_rois(N: int, H: int, W: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    """(R, 5) RoIs in image pixels: ordinary, tiny, empty, inverted, outside, thin and huge."""
    Hi, Wi = H / scale, W / scale
    R = 60
    x0 = torch.rand(R, generator=generator) * Wi * 1.1 - 0.05 * Wi
    y0 = torch.rand(R, generator=generator) * Hi * 1.1 - 0.05 * Hi
    w = torch.rand(R, generator=generator) * Wi * 0.5
    h = torch.rand(R, generator=generator) * Hi * 0.5
    boxes = torch.stack([x0, y0, x0 + w, y0 + h], dim=1)
    special = torch.tensor([
        [3.0, 3.0, 3.0, 3.0],  # empty
        [10.0, 10.0, 4.0, 6.0],  # inverted
        [-5 * Wi, -5 * Hi, -4 * Wi, -4 * Hi],  # entirely outside (all samples invalid)
        [-2.0, -2.0, Wi + 2.0, Hi + 2.0],  # the whole map and a little more
        [0.0, 0.0, Wi, 1.0],  # one image row, the map's width
        [1.0, 0.0, 2.0, Hi],  # one column, full height: many samples per bin along y
        [Wi - 0.6, Hi - 0.6, Wi + 0.4, Hi + 0.4],  # on the last row / column
        [0.25, 0.25, 0.75 * Wi, 0.75 * Hi],
    ])
    boxes = torch.cat([boxes, special])
    image = torch.randint(0, N, (len(boxes), 1), generator=generator).float()
    return torch.cat([image, boxes], dim=1)


@pytest.mark.parametrize("sampling_ratio, aligned", [(0, True), (2, True), (0, False), (2, False), (1, True)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_backward_matches_torchvision(sampling_ratio, aligned, channels_last):
    generator = torch.Generator().manual_seed(sampling_ratio * 10 + aligned)
    N, C, H, W, S, scale = 2, 5, 13, 17, 7, 0.25
    features = torch.randn(N, C, H, W, generator=generator)
    if channels_last:
        features = features.contiguous(memory_format=torch.channels_last)
    rois = awkward_rois(N, H, W, scale, generator)
    ours = features.clone().requires_grad_()
    theirs = features.clone().requires_grad_()
    out_ours = roi_align(ours, rois, S, scale, sampling_ratio, aligned)
    out_theirs = torchvision_roi_align(theirs, rois, S, scale, sampling_ratio, aligned=aligned)
    assert torch.equal(out_ours, out_theirs)  # the forward is torchvision's own
    grad_out = torch.randn(out_theirs.shape, generator=generator)
    out_ours.backward(grad_out)
    out_theirs.backward(grad_out)
    assert theirs.grad.abs().max() > 1.0  # the boxes reach the map
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-5)


def test_backward_in_small_chunks_equals_one_chunk(monkeypatch):
    generator = torch.Generator().manual_seed(3)
    N, C, H, W, S, scale = 2, 4, 20, 24, 7, 0.5
    rois = awkward_rois(N, H, W, scale, generator)
    grad_out = torch.randn(len(rois), C, S, S, generator=generator)
    whole = roi_align_backward(grad_out, rois, torch.Size([N, C, H, W]), S, scale, 0, True)
    monkeypatch.setattr("pointsup.ops.roi_align.BACKWARD_CHUNK_ELEMENTS", C * 50)  # one RoI a chunk
    chunked = roi_align_backward(grad_out, rois, torch.Size([N, C, H, W]), S, scale, 0, True)
    assert BACKWARD_CHUNK_ELEMENTS > C * 50
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)
    # contiguous (N, C, H, W) like torchvision's gradient: a channels-last one raised the
    # peak memory of a training step (docs/PERFORMANCE.md)
    assert whole.is_contiguous()


def test_no_rois_and_no_grad_paths():
    features = torch.randn(1, 3, 8, 8, requires_grad=True)
    out = roi_align(features, torch.zeros(0, 5), 7, 1.0, 0, True)
    out.sum().backward()
    assert out.shape == (0, 3, 7, 7) and torch.equal(features.grad, torch.zeros_like(features))
    with torch.no_grad():  # inference: torchvision's op, no autograd node
        assert roi_align(features, torch.tensor([[0.0, 1, 1, 6, 6]]), 7, 1.0, 0, True).grad_fn is None


def test_bfloat16_gradient_is_summed_in_float32():
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(1, 4, 12, 12, generator=generator)
    rois = torch.tensor([[0.0, 0.5, 1.0, 10.0, 11.0], [0.0, 2.0, 2.0, 5.0, 9.0]])
    grad_out = torch.randn(2, 4, 7, 7, generator=generator)
    low = roi_align_backward(grad_out.bfloat16(), rois, features.shape, 7, 1.0, 0, True)
    full = roi_align_backward(grad_out.bfloat16().float(), rois, features.shape, 7, 1.0, 0, True)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low, full.bfloat16())


def test_pooler_gradient_matches_torchvision_over_levels(monkeypatch):
    """The multi-level pooler with our op gives torchvision's gradient on every FPN level."""
    generator = torch.Generator().manual_seed(7)
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    features = [torch.randn(2, 6, 256 // int(1 / s), 320 // int(1 / s), generator=generator) for s in scales]
    boxes = []
    for _ in range(2):
        xy = torch.rand(40, 2, generator=generator) * 200
        wh = 4 + torch.rand(40, 2, generator=generator) ** 2 * 700  # every level gets boxes
        boxes.append(torch.cat([xy, xy + wh], dim=1))
    pooler = ROIPooler(7, scales)
    ours = [f.clone().requires_grad_() for f in features]
    theirs = [f.clone().requires_grad_() for f in features]
    grad_out = torch.randn(80, 6, 7, 7, generator=generator)
    pooler(ours, boxes).backward(grad_out)
    monkeypatch.setattr("pointsup.ops.roi_pooler.roi_align",
                        lambda f, r, S, s, sr, aligned: torchvision_roi_align(f, r, S, s, sr, aligned=aligned))
    pooler(theirs, boxes).backward(grad_out)
    for a, b in zip(ours, theirs):
        assert b.grad.abs().sum() > 0
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("sampling_ratio, aligned", [(0, True), (2, True), (0, False)])
def test_forward_on_several_threads_is_bitwise_one_call(monkeypatch, threads, sampling_ratio, aligned):
    """With T > 1 torch threads the RoIs are pooled in T runs on T threads: the same values
    bit for bit, as one torchvision call, with and without a gradient to record."""
    import pointsup.ops.roi_align as module

    generator = torch.Generator().manual_seed(threads + sampling_ratio)
    N, C, H, W, S, scale = 2, 6, 21, 19, 7, 0.25
    features = torch.randn(N, C, H, W, generator=generator).contiguous(memory_format=torch.channels_last)
    rois = awkward_rois(N, H, W, scale, generator)  # 68 RoIs: enough for 3 runs of >= 8
    expected = torchvision_roi_align(features, rois, S, scale, sampling_ratio, aligned=aligned)

    calls = []
    real_op = module.torchvision_roi_align
    monkeypatch.setattr(module, "torchvision_roi_align", lambda f, r, *a, **k: calls.append(len(r)) or real_op(f, r, *a, **k))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            plain = roi_align(features, rois, S, scale, sampling_ratio, aligned)
        assert calls and len(calls) == threads and sum(calls) == len(rois)
        calls.clear()
        leaf = features.clone().requires_grad_()
        with_grad = roi_align(leaf, rois, S, scale, sampling_ratio, aligned)
        assert len(calls) == threads
        torch.set_num_threads(1)
        calls.clear()
        one_thread = roi_align(features, rois, S, scale, sampling_ratio, aligned)
        assert calls == [len(rois)]  # one thread: one call, as before
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(plain, expected)
    assert torch.equal(with_grad.detach(), expected) and with_grad.requires_grad
    assert torch.equal(one_thread, expected)
    with_grad.sum().backward()  # the gradient still flows through pointsup's backward
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0


def test_balanced_splits_share_the_sampling_work():
    """Runs cover every RoI once, in order, with about equal adaptive sampling work: one huge
    RoI among many small ones gets a run nearly to itself."""
    from pointsup.ops.roi_align import balanced_splits

    small = torch.tensor([[0.0, 0.0, 0.0, 8.0, 8.0]]).repeat(99, 1)  # 2 x 2 px at scale 1/4: 1 sample a bin
    huge = torch.tensor([[0.0, 0.0, 0.0, 800.0, 800.0]])  # 200 px: ceil(200 / 7)^2 = 841 samples a bin
    rois = torch.cat([huge, small])
    bounds = balanced_splits(rois, 7, 0.25, 0, True, parts=2)
    assert bounds[0] == 0 and bounds[-1] == len(rois) and len(bounds) == 3
    assert bounds[1] == 1  # the huge RoI (842 units) outweighs the 99 small ones (2 units each)
    even = balanced_splits(small, 7, 0.25, 0, True, parts=3)
    assert even == [0, 33, 66, 99]
    fixed = balanced_splits(rois, 7, 0.25, 2, True, parts=4)  # fixed grid: equal work per RoI
    assert fixed == [0, 25, 50, 75, 100]
