"""Box coding, matching, sampling, multi-level RoIAlign, anchors and the RPN."""

import math

import torch
from torch import nn
from torchvision.ops import roi_align

from pointsup.config import ROIHeadsConfig, RPNConfig
from pointsup.models.anchors import AnchorGenerator
from pointsup.models.roi_heads import build_roi_heads
from pointsup.models.rpn import build_rpn
from pointsup.ops.boxes import Box2BoxTransform, Matcher, subsample_labels
from pointsup.ops.roi_pooler import ROIPooler, assign_boxes_to_levels
from pointsup.structures import InstanceTargets


def _random_boxes(R: int, size: float = 100.0) -> torch.Tensor:
    x0y0 = torch.rand(R, 2) * size
    return torch.cat([x0y0, x0y0 + 1 + torch.rand(R, 2) * size], dim=1)


def test_box2box_round_trip_with_weights():
    box2box = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
    ref, target = _random_boxes(50), _random_boxes(50)
    deltas = box2box.get_deltas(ref, target)  # (R, 4)
    torch.testing.assert_close(box2box.apply_deltas(deltas, ref), target, rtol=1e-4, atol=1e-3)
    # Class-specific deltas (R, 4K) decode to (R, 4K), one box per class.
    decoded = box2box.apply_deltas(torch.cat([deltas, torch.zeros_like(deltas)], dim=1), ref)
    torch.testing.assert_close(decoded[:, :4], target, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(decoded[:, 4:], ref, rtol=1e-5, atol=1e-4)


def test_box2box_clamps_huge_scales():
    box2box = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    ref = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    boxes = box2box.apply_deltas(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), ref)
    assert torch.isfinite(boxes).all()
    torch.testing.assert_close(boxes[0, 2] - boxes[0, 0], torch.tensor(1000.0))


def test_box2box_apply_deltas_with_no_boxes():
    # An image whose RPN keeps no proposal reaches the box decoder with R = 0
    # (seen in eval after a few SGD steps); it must return an empty (0, 4K) tensor.
    coder = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
    out = coder.apply_deltas(torch.zeros(0, 4 * 3), torch.zeros(0, 4))
    assert out.shape == (0, 12)


def test_matcher_thresholds_and_low_quality_matches():
    iou = torch.tensor([[0.9, 0.5, 0.1, 0.0], [0.0, 0.2, 0.25, 0.0]])  # (M=2, R=4)
    matcher = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=False)
    matched_idxs, labels = matcher(iou)
    assert matched_idxs.tolist() == [0, 0, 1, 0]
    assert labels.tolist() == [1, -1, 0, 0]
    # GT 1 has no match above 0.7: its best prediction (column 2) becomes positive anyway.
    _, labels = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)(iou)
    assert labels.tolist() == [1, -1, 1, 0]
    # No GT at all: every prediction is background.
    matched_idxs, labels = matcher(torch.zeros(0, 4))
    assert matched_idxs.tolist() == [0, 0, 0, 0] and labels.tolist() == [0, 0, 0, 0]


def test_subsample_labels_respects_fraction_and_budget():
    labels = torch.tensor([3] * 100 + [7] * 1000 + [-1] * 50)  # bg_label = 7
    pos, neg = subsample_labels(labels, num_samples=64, positive_fraction=0.25, bg_label=7)
    assert len(pos) == 16 and len(neg) == 48
    assert (labels[pos] == 3).all() and (labels[neg] == 7).all()
    # Few positives: negatives fill the budget.
    pos, neg = subsample_labels(torch.tensor([1, 1, 0, 0, 0, 0, 0, 0]), 6, 0.5, bg_label=0)
    assert len(pos) == 2 and len(neg) == 4


def test_roi_pooler_matches_torchvision_per_level():
    features = [torch.randn(2, 4, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    pooler = ROIPooler(7, [1 / 4, 1 / 8, 1 / 16, 1 / 32])
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 20.0], [1.0, 2.0, 63.0, 60.0]]), torch.tensor([[5.0, 5.0, 40.0, 30.0]])]
    out = pooler(features, boxes)
    assert out.shape == (3, 4, 7, 7)
    boxes_xyxy = torch.cat(boxes)
    levels = assign_boxes_to_levels(boxes_xyxy, 2, 5, 224, 4)
    # sqrt(area) 20 -> floor(4 + log2(20/224)) = 0 -> clamped to P2; 60 -> P2; 29.6 -> P2.
    assert levels.tolist() == [0, 0, 0]
    rois = torch.cat([torch.tensor([[0.0], [0.0], [1.0]]), boxes_xyxy], dim=1)
    expected = roi_align(features[0], rois, 7, 1 / 4, 0, aligned=True)
    torch.testing.assert_close(out, expected)
    big = assign_boxes_to_levels(torch.tensor([[0.0, 0.0, 224.0, 224.0], [0.0, 0.0, 1000.0, 1000.0]]), 2, 5, 224, 4)
    assert big.tolist() == [2, 3]  # P4 and (clamped) P5


def test_roi_pooler_layout_follows_the_head_and_values_do_not():
    """On CPU conv heads get channels-last RoI features, the fc box head plain ones (its
    flatten would otherwise copy them back); the values are the same either way."""
    torch.manual_seed(0)
    features = [torch.randn(2, 4, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    boxes = [_random_boxes(5, 50.0), _random_boxes(3, 50.0)]
    for_convs = ROIPooler(7, [1 / 4, 1 / 8, 1 / 16, 1 / 32])(features, boxes)
    for_fcs = ROIPooler(7, [1 / 4, 1 / 8, 1 / 16, 1 / 32], channels_last=False)(features, boxes)
    assert for_convs.is_contiguous(memory_format=torch.channels_last) and not for_convs.is_contiguous()
    assert for_fcs.is_contiguous()
    assert torch.equal(for_convs, for_fcs)
    box_pooler = build_roi_heads(ROIHeadsConfig(), 3, 4, {"p2": 4, "p3": 8, "p4": 16, "p5": 32}, nn.Identity()).box_pooler
    assert not box_pooler.channels_last


def test_anchor_order_and_shapes():
    gen = AnchorGenerator([32, 64], [0.5, 1.0, 2.0], [4, 8])
    anchors = gen([(3, 5), (2, 2)])
    assert [a.shape for a in anchors] == [(3 * 5 * 3, 4), (2 * 2 * 3, 4)]
    a = anchors[0].view(3, 5, 3, 4)  # (H, W, A, 4)
    wh = a[..., 2:] - a[..., :2]
    torch.testing.assert_close(wh.prod(-1), torch.full((3, 5, 3), 32.0**2))
    torch.testing.assert_close(wh[0, 0, :, 1] / wh[0, 0, :, 0], torch.tensor([0.5, 1.0, 2.0]))
    ctr = (a[..., :2] + a[..., 2:]) / 2
    torch.testing.assert_close(ctr[2, 4, 0], torch.tensor([16.0, 8.0]))  # (x = 4 * stride, y = 2 * stride)


def _rpn_inputs(N: int = 2, C: int = 8, size: int = 64):
    strides = {f"p{i}": 2**i for i in range(2, 7)}
    features = {k: torch.randn(N, C, math.ceil(size / s), math.ceil(size / s)) for k, s in strides.items()}
    return features, strides


def test_rpn_training_losses_and_proposals():
    features, strides = _rpn_inputs()
    cfg = RPNConfig(anchor_sizes=[8, 16, 32, 64, 128], pre_nms_topk_train=100, post_nms_topk_train=50)
    rpn = build_rpn(cfg, 8, strides).train()
    targets = [
        InstanceTargets(torch.tensor([[10.0, 10.0, 40.0, 30.0]]), torch.tensor([0]), (64, 64)),
        InstanceTargets.empty((64, 48)),
    ]
    proposals, losses = rpn(features, [(64, 64), (64, 48)], targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_rpn_loc"] > 0
    assert len(proposals) == 2 and all(0 < len(p) <= 50 for p in proposals)
    assert not any(p.requires_grad for p in proposals)
    assert (proposals[1][:, 2] <= 48).all() and (proposals[1][:, 3] <= 64).all()  # clipped to its image
    assert ((proposals[0][:, 2:] - proposals[0][:, :2]) > 0).all()
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in rpn.parameters())


def test_rpn_labels_every_gt_with_a_positive():
    features, strides = _rpn_inputs(N=1)
    rpn = build_rpn(RPNConfig(anchor_sizes=[8, 16, 32, 64, 128]), 8, strides)
    anchors = torch.cat(rpn.anchor_generator([tuple(f.shape[-2:]) for f in features.values()]))
    # A thin box overlaps no anchor by IoU 0.7: the low-quality rule still gives it one.
    gt = InstanceTargets(torch.tensor([[3.0, 3.0, 5.0, 40.0]]), torch.tensor([0]), (64, 64))
    gt_labels, gt_deltas = rpn.label_anchors(anchors, [gt])
    assert (gt_labels == 1).sum() >= 1
    assert (gt_labels >= 0).sum() <= 256
