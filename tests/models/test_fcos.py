"""FCOS: target assignment on hand-made boxes, losses, box decoding at inference."""

import torch

from pointsup.models.fcos import (
    FCOS,
    FCOSHead,
    FCOSOutputs,
    assign_fcos_targets,
    centerness_targets,
    compute_locations,
    fcos_losses,
)
from pointsup.structures import InstanceTargets

STRIDES = [8, 16, 32, 64, 128]
SIZE_RANGES = [0, 64, 128, 256, 512, 1e8]


def _all_locations(H=128, W=128):
    """Locations, strides, size ranges and levels of all levels of an H x W image."""
    sizes = [((H + s - 1) // s, (W + s - 1) // s) for s in STRIDES]
    per_level = compute_locations(sizes, STRIDES)
    locations = torch.cat(per_level)
    strides = torch.cat([torch.full((len(l),), float(s)) for l, s in zip(per_level, STRIDES)])
    levels = torch.cat([torch.full((len(l),), i) for i, l in enumerate(per_level)])
    edges = torch.tensor(SIZE_RANGES)
    ranges = torch.stack([edges[levels], edges[levels + 1]], dim=1)
    return locations, strides, ranges, levels


def _index_of(locations, levels, xy, level):
    hit = (locations == torch.tensor(xy)).all(dim=1) & (levels == level)
    assert hit.sum() == 1, f"no location {xy} on level {level}"
    return int(hit.nonzero()[0])


def test_locations_are_cell_centres():
    (loc,) = compute_locations([(2, 3)], [8])
    assert torch.equal(loc, torch.tensor([[4.0, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]))


def test_small_box_is_positive_at_the_right_level_only():
    locations, strides, ranges, levels = _all_locations()
    boxes = torch.tensor([[20.0, 20.0, 52.0, 52.0]])  # 32 x 32, centre (36, 36): a P3 object
    matched = assign_fcos_targets(locations, strides, ranges, boxes, 1.5)
    centre_p3 = _index_of(locations, levels, (36.0, 36.0), 0)
    assert matched[centre_p3] == 0
    assert (matched[levels > 0] == -1).all(), "max distance 16 is outside P4..P7's ranges"
    # A large box goes to a coarse level instead.
    big = torch.tensor([[0.0, 0.0, 128.0, 128.0]])  # max ltrb 64 at the centre -> P3 edge, 64..128 -> P4
    matched_big = assign_fcos_targets(locations, strides, ranges, big, 1.5)
    assert matched_big[_index_of(locations, levels, (72.0, 72.0), 1)] == 0
    assert (matched_big[levels >= 2] == -1).all()


def test_ambiguous_location_goes_to_the_smallest_box():
    locations, strides, ranges, levels = _all_locations()
    big = [0.0, 0.0, 60.0, 60.0]
    small = [28.0, 28.0, 44.0, 44.0]
    loc = _index_of(locations, levels, (36.0, 36.0), 0)  # inside both centre regions
    for boxes, small_idx in ((torch.tensor([big, small]), 1), (torch.tensor([small, big]), 0)):
        matched = assign_fcos_targets(locations, strides, ranges, boxes, 1.5)
        assert matched[loc] == small_idx
    # A location only the big box covers still belongs to the big box.
    matched = assign_fcos_targets(locations, strides, ranges, torch.tensor([big, small]), 1.5)
    assert matched[_index_of(locations, levels, (20.0, 20.0), 0)] == 0


def test_center_sampling_excludes_far_locations():
    locations, strides, ranges, levels = _all_locations()
    boxes = torch.tensor([[4.0, 4.0, 60.0, 60.0]])  # centre (32, 32); radius 1.5 * 8 = 12 on P3
    far = _index_of(locations, levels, (12.0, 12.0), 0)  # inside the box, 20 px from the centre
    near = _index_of(locations, levels, (28.0, 28.0), 0)
    matched = assign_fcos_targets(locations, strides, ranges, boxes, 1.5)
    assert matched[near] == 0 and matched[far] == -1
    # Without the radius limit (huge radius) the far location would be positive: the
    # exclusion above comes from centre sampling, not from the box or the size range.
    matched_no_radius = assign_fcos_targets(locations, strides, ranges, boxes, 100.0)
    assert matched_no_radius[far] == 0
    # The centre region never reaches outside the GT box.
    outside = _index_of(locations, levels, (68.0, 36.0), 0)
    assert matched_no_radius[outside] == -1


def test_no_boxes_means_all_background():
    locations, strides, ranges, _ = _all_locations()
    matched = assign_fcos_targets(locations, strides, ranges, torch.zeros(0, 4), 1.5)
    assert (matched == -1).all()


def test_centerness_targets():
    ltrb = torch.tensor([[4.0, 4, 4, 4], [1, 2, 3, 2], [0, 1, 2, 1]])
    expected = torch.tensor([1.0, (1 / 3) ** 0.5, 0.0])
    assert torch.allclose(centerness_targets(ltrb), expected)


def test_fcos_losses_perfect_boxes_and_no_positives():
    K = 3
    gt_labels = torch.tensor([0, 3, 2, 3])  # 3 = background
    gt_ltrb = torch.tensor([[1.0, 2, 3, 4], [0, 0, 0, 0], [2, 2, 2, 2], [0, 0, 0, 0]])
    cls_logits = torch.randn(4, K, requires_grad=True)
    box_reg = gt_ltrb.clone().requires_grad_(True)
    ctr_logits = torch.randn(4, requires_grad=True)
    losses = fcos_losses(cls_logits, box_reg, ctr_logits, gt_labels, gt_ltrb)
    assert losses["loss_fcos_loc"].abs() < 1e-5, "a perfect box has zero GIoU loss"
    # No positives: finite, zero box losses, gradients reach every input.
    losses = fcos_losses(cls_logits, box_reg, ctr_logits, torch.full((4,), K), gt_ltrb)
    total = sum(losses.values())
    assert torch.isfinite(total)
    assert losses["loss_fcos_loc"] == 0 and losses["loss_fcos_ctr"] == 0
    total.backward()
    assert box_reg.grad is not None and ctr_logits.grad is not None


def test_losses_on_batch_with_empty_image():
    C, K = 8, 2
    fcos = FCOS(FCOSHead(C, K, 5, num_convs=1), STRIDES, SIZE_RANGES)
    features = [torch.randn(2, C, 64 // s if s < 64 else 1, 64 // s if s < 64 else 1) for s in STRIDES]
    targets = [
        InstanceTargets(torch.tensor([[8.0, 8, 40, 40]]), torch.tensor([1]), (64, 64)),
        InstanceTargets.empty((64, 64)),
    ]
    out = fcos(features)
    losses, matched = fcos.losses(out, targets)
    assert matched.shape == (2, sum(f.shape[-1] * f.shape[-2] for f in features))
    assert (matched[0] >= 0).any() and (matched[1] == -1).all()
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in fcos.parameters())


def test_inference_decodes_boxes_at_their_location():
    K = 3
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    cls_logits = [torch.full((1, K, h, w), -10.0) for h, w in sizes]
    cls_logits[0][0, 1, 2, 3] = 10.0  # class 1 at P3 cell (row 2, col 3): centre (28, 20)
    box_reg = [torch.ones(1, 4, h, w) for h, w in sizes]  # 1 stride = 8 px on every side
    ctr_logits = [torch.full((1, 1, h, w), 10.0) for h, w in sizes]
    outputs = FCOSOutputs(cls_logits, box_reg, ctr_logits, box_tower=[])
    fcos = FCOS(FCOSHead(8, K, 5, num_convs=1), STRIDES, SIZE_RANGES, score_thresh=0.05)
    (det,) = fcos.inference(outputs, [(64, 64)])
    assert det["boxes"].shape == (1, 4)
    assert torch.allclose(det["boxes"][0], torch.tensor([20.0, 12.0, 36.0, 28.0]))
    assert det["classes"].tolist() == [1] and det["location_idx"].tolist() == [2 * 8 + 3]
    assert 0.99 < det["scores"][0] <= 1.0
    # Nothing above threshold: empty, correctly shaped results.
    outputs.cls_logits = [torch.full_like(x, -10.0) for x in cls_logits]
    (det,) = fcos.inference(outputs, [(64, 64)])
    assert det["boxes"].shape == (0, 4) and det["scores"].shape == (0,) and det["classes"].shape == (0,)


def test_threshold_on_cls_times_centerness():
    K = 2
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    cls_logits = [torch.full((1, K, h, w), -10.0) for h, w in sizes]
    cls_logits[0][0, 0, 1, 1] = 0.0  # class prob 0.5
    box_reg = [torch.ones(1, 4, h, w) for h, w in sizes]
    ctr_logits = [torch.full((1, 1, h, w), -3.0) for h, w in sizes]  # centerness ~0.047
    outputs = FCOSOutputs(cls_logits, box_reg, ctr_logits, box_tower=[])
    head = FCOSHead(8, K, 5, num_convs=1)
    with_ctr = FCOS(head, STRIDES, SIZE_RANGES, score_thresh=0.05, thresh_with_ctr=True)
    cls_only = FCOS(head, STRIDES, SIZE_RANGES, score_thresh=0.05, thresh_with_ctr=False)
    assert len(with_ctr.inference(outputs, [(64, 64)])[0]["boxes"]) == 0  # 0.5 * 0.047 < 0.05
    (det,) = cls_only.inference(outputs, [(64, 64)])
    assert len(det["boxes"]) == 1
    assert torch.allclose(det["scores"], torch.tensor([(0.5 * torch.sigmoid(torch.tensor(-3.0))) ** 0.5]))
