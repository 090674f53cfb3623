"""pointsup.ops.boxes.batched_nms must return torchvision.ops.batched_nms's indices in the same
order, on one thread and on several, in both of torchvision's regimes (few boxes: its
coordinate trick; many: NMS per group), with tied scores and empty groups."""

from __future__ import annotations

import pytest
import torch
import torchvision

import pointsup.ops.boxes as boxes_module
from pointsup.ops.boxes import batched_nms


def random_detections(B: int, K: int, generator: torch.Generator):
    xy = torch.rand(B, 2, generator=generator) * 300
    wh = torch.rand(B, 2, generator=generator) * 80 + 0.5
    boxes = torch.cat([xy, xy + wh], dim=1)  # (B, 4) xyxy
    scores = torch.rand(B, generator=generator)
    scores[::5] = 0.25  # many exact ties: the order among them must match too
    groups = torch.randint(0, K, (B,), generator=generator) * 3  # sparse ids: some never used
    return boxes, scores, groups


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("B, K", [(300, 4), (1001, 1), (6000, 17), (20000, 80)])
def test_batched_nms_equals_torchvision(monkeypatch, threads, B, K):
    boxes, scores, groups = random_detections(B, K, torch.Generator().manual_seed(B + K))
    expected = torchvision.ops.batched_nms(boxes, scores, groups, 0.5)
    calls = []
    real_nms = torchvision.ops.nms
    monkeypatch.setattr(torchvision.ops, "nms", lambda b, *a: calls.append(len(b)) or real_nms(b, *a))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours = batched_nms(boxes, scores, groups, 0.5)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(ours, expected)
    if B * 4 > 4000:  # torchvision's per-group regime: one nms call per group present
        assert sorted(calls) == sorted(torch.unique(groups, return_counts=True)[1].tolist())
    assert len(expected) < B  # NMS removed something: the check is not vacuous


def test_batched_nms_on_no_boxes():
    empty = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert empty.dtype == torch.int64 and empty.shape == (0,)


def test_models_use_this_batched_nms():
    """The RPN, the box head and FCOS call pointsup's batched_nms (not torchvision's directly)."""
    import pointsup.models.fcos as fcos
    import pointsup.models.roi_heads as roi_heads
    import pointsup.models.rpn as rpn

    for module in (rpn, roi_heads, fcos):
        assert module.batched_nms is boxes_module.batched_nms
