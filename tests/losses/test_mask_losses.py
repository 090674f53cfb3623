"""Mask R-CNN mask losses: the point loss (paper sec. 3.2) against the dense loss, with the
targets made by `pointsup.supervision` as the head makes them."""

import torch

from pointsup.losses.mask_losses import mask_rcnn_dense_loss, point_mask_loss
from pointsup.ops.point_features import coords_box_to_img, grid_coords
from pointsup.structures import InstanceTargets
from pointsup.supervision import roi_mask_grid_targets, roi_point_targets

S = 28


def point_loss_img(logits, boxes_xyxy, coords_img, labels):
    """The head's path: RoI r is matched to GT instance r of one image whose points are
    coords_img (R, P, 2) image pixels -> box-frame targets -> point loss."""
    R = boxes_xyxy.shape[0]
    targets = InstanceTargets(boxes=boxes_xyxy.clone(), classes=torch.zeros(R, dtype=torch.int64), image_size=(128, 128),
                              point_coords=coords_img, point_labels=labels)
    coords_box, gt_labels = roi_point_targets([boxes_xyxy], [targets], [torch.arange(R)])
    return point_mask_loss(logits, coords_box, gt_labels)


def crop_masks_to_boxes(gt_masks, boxes_xyxy, matched_idxs, side):
    """Dense targets of RoIs matched to the instances of one image."""
    targets = InstanceTargets(boxes=torch.zeros(len(gt_masks), 4), classes=torch.zeros(len(gt_masks), dtype=torch.int64),
                              image_size=tuple(gt_masks.shape[-2:]), masks=gt_masks)
    return roi_mask_grid_targets([boxes_xyxy], [targets], [matched_idxs], side)


def _boxes(R: int) -> torch.Tensor:
    x0y0 = torch.rand(R, 2) * 50
    wh = 10 + torch.rand(R, 2) * 60
    return torch.cat([x0y0, x0y0 + wh], dim=1)  # (R, 4) img


def test_point_loss_on_grid_centres_equals_dense_loss():
    R = 3
    boxes_xyxy = _boxes(R)
    gt_masks_box = (torch.rand(R, S, S) > 0.5).float()
    logits_dense = torch.randn(R, S, S, requires_grad=True)
    logits_point = logits_dense.detach().clone().requires_grad_(True)

    coords_img = coords_box_to_img(grid_coords(R, S), boxes_xyxy)  # (R, S*S, 2) cell centres, img frame
    labels = gt_masks_box.flatten(1)  # (R, S*S), row-major like grid_coords

    dense = mask_rcnn_dense_loss(logits_dense, gt_masks_box)
    point = point_loss_img(logits_point, boxes_xyxy, coords_img, labels)
    torch.testing.assert_close(point, dense, rtol=1e-5, atol=1e-6)

    dense.backward()
    point.backward()
    torch.testing.assert_close(logits_point.grad, logits_dense.grad, rtol=1e-4, atol=1e-8)


def test_points_outside_the_box_are_ignored():
    R, P = 2, 6
    boxes_xyxy = _boxes(R)
    logits = torch.randn(R, S, S, requires_grad=True)
    # Just outside each edge: bilinear sampling would still touch the border cells.
    coords_box = torch.tensor([[-0.01, 0.5], [1.01, 0.5], [0.5, -0.01], [0.5, 1.01], [-0.2, -0.3], [1.5, 2.0]])
    coords_img = coords_box_to_img(coords_box.expand(R, P, 2), boxes_xyxy)
    labels = torch.ones(R, P)

    loss = point_loss_img(logits, boxes_xyxy, coords_img, labels)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(logits.grad) == 0


def test_ignored_labels_and_normalisation_by_all_points():
    R = 2
    boxes_xyxy = _boxes(R)
    logits = torch.randn(R, S, S)
    coords_img = coords_box_to_img(torch.tensor([[0.3, 0.3], [0.7, 0.6]]).expand(R, 2, 2), boxes_xyxy)
    one_point = point_loss_img(logits, boxes_xyxy, coords_img[:, :1], torch.ones(R, 1))
    # The second point is ignored (-1): same sum, but divided by R * 2 instead of R * 1.
    two_points = point_loss_img(logits, boxes_xyxy, coords_img, torch.tensor([[1.0, -1.0]] * R))
    torch.testing.assert_close(two_points, one_point / 2)


def test_gradient_flows_through_bilinear_interpolation():
    boxes_xyxy = torch.tensor([[10.0, 20.0, 38.0, 48.0]])  # 28 x 28 px: one cell per pixel
    logits = torch.zeros(1, S, S, requires_grad=True)
    # Box centre: exactly between cells 13 and 14 in x and y -> 4 neighbours, weight 1/4 each.
    coords_img = torch.tensor([[[24.0, 34.0]]])
    point_loss_img(logits, boxes_xyxy, coords_img, torch.ones(1, 1)).backward()
    grad = logits.grad[0]
    nonzero = torch.nonzero(grad).tolist()
    assert sorted(nonzero) == [[13, 13], [13, 14], [14, 13], [14, 14]]
    # d BCE / d logit at logit 0, label 1 is -0.5; split 1/4 per cell.
    torch.testing.assert_close(grad[13:15, 13:15], torch.full((2, 2), -0.125))


def test_empty_inputs_keep_graph():
    logits = torch.randn(0, S, S, requires_grad=True)
    for loss in (
        mask_rcnn_dense_loss(logits, torch.zeros(0, S, S)),
        point_loss_img(logits, torch.zeros(0, 4), torch.zeros(0, 10, 2), torch.zeros(0, 10)),
    ):
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()


def test_crop_masks_to_boxes_follows_the_box_grid():
    gt_masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    gt_masks[0, 8:36, 4:60] = True
    gt_masks[1, :, :32] = True  # left half of the image
    boxes_xyxy = torch.tensor([[4.0, 8.0, 60.0, 36.0], [0.0, 0.0, 64.0, 64.0], [16.0, 0.0, 48.0, 64.0]])
    matched_idxs = torch.tensor([0, 1, 1])
    targets = crop_masks_to_boxes(gt_masks, boxes_xyxy, matched_idxs, S)
    assert targets.shape == (3, S, S)
    assert targets[0].all()  # the box is exactly the mask
    assert targets[1, :, : S // 2].all() and not targets[1, :, S // 2 :].any()
    assert targets[2, :, : S // 2].all() and not targets[2, :, S // 2 :].any()  # x = 32 is the box centre
