"""pointsup.supervision: the one place every head gets its mask supervision from, and the two
point-loss normalisations (R-CNN heads: all R * P points; CondInst: valid points), each
checked against a hand computation."""

import math

import pytest
import torch

from pointsup.losses.condinst_losses import point_loss as condinst_point_loss
from pointsup.losses.mask_losses import point_mask_loss
from pointsup.structures import InstanceTargets
from pointsup.supervision import (
    augment_points,
    dataset_labels,
    roi_point_targets,
    stack_points,
)


def bce(logit: float, label: float) -> float:
    p = 1.0 / (1.0 + math.exp(-logit))
    return -(label * math.log(p) + (1 - label) * math.log(1 - p))


def test_rcnn_point_loss_divides_by_all_points_of_all_rois():
    # One RoI, S = 2 grid of constant logit 0.7 (bilinear reading is then 0.7 everywhere).
    # Points: inside (label 1), inside (label 0), outside the box (ignored), padding (-1).
    box = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
    targets = InstanceTargets(boxes=box, classes=torch.tensor([0]), image_size=(64, 64),
                              point_coords=torch.tensor([[[15.0, 15.0], [25.0, 20.0], [40.0, 20.0], [0.0, 0.0]]]),
                              point_labels=torch.tensor([[1.0, 0.0, 1.0, -1.0]]))
    coords_box, labels = roi_point_targets([box], [targets], [torch.tensor([0])])
    assert labels.tolist() == [[1.0, 0.0, -1.0, -1.0]]  # outside the proposal -> ignored
    loss = point_mask_loss(torch.full((1, 2, 2), 0.7), coords_box, labels)
    expected = (bce(0.7, 1.0) + bce(0.7, 0.0)) / 4  # 2 valid points / all 4 points
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_condinst_point_loss_divides_by_valid_points():
    # A constant-logit image-level mask (stride 4, 8 x 8 cells = 32 x 32 px); instance 0 has
    # two labelled points and one padded; instance 1 one labelled point.
    logits = torch.full((2, 1, 8, 8), -0.3)
    coords = torch.tensor([[[5.0, 5.0], [20.0, 9.0], [0.0, 0.0]], [[12.0, 30.0], [0.0, 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[1.0, 0.0, -1.0], [1.0, -1.0, -1.0]])
    loss = condinst_point_loss(logits, coords, labels, mask_stride=4)
    expected = (bce(-0.3, 1.0) + bce(-0.3, 0.0) + bce(-0.3, 1.0)) / 3  # 3 valid points
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_dataset_labels_pair_supervision_and_file_content():
    assert dataset_labels("masks") == (True, False, True, False)
    assert dataset_labels("points") == (False, True, False, True)  # a point run never loads a mask
    assert dataset_labels("points", boxinst=True) == (False, False, False, False)
    with pytest.raises(ValueError, match="supervision must be one of"):
        dataset_labels("boxes")


def test_stack_points_pads_with_ignored_points_and_follows_the_index():
    t0 = InstanceTargets(boxes=torch.zeros(2, 4), classes=torch.zeros(2, dtype=torch.int64), image_size=(8, 8),
                         point_coords=torch.arange(8.0).view(2, 2, 2), point_labels=torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    t1 = InstanceTargets(boxes=torch.zeros(1, 4), classes=torch.zeros(1, dtype=torch.int64), image_size=(8, 8),
                         point_coords=torch.ones(1, 3, 2), point_labels=torch.ones(1, 3))
    coords, labels = stack_points([t0, t1], [torch.tensor([1, 1]), torch.tensor([0])])
    assert coords.shape == (3, 3, 2)
    assert labels.tolist() == [[0.0, 1.0, -1.0], [0.0, 1.0, -1.0], [1.0, 1.0, 1.0]]
    assert coords[0, :2].tolist() == [[4.0, 5.0], [6.0, 7.0]]
    with pytest.raises(ValueError, match="needs point_coords"):
        stack_points([InstanceTargets(boxes=torch.zeros(1, 4), classes=torch.zeros(1, dtype=torch.int64), image_size=(8, 8))])


def test_augment_points_keeps_half_of_each_instances_valid_points():
    torch.manual_seed(0)
    coords = torch.rand(3, 10, 2)
    labels = torch.tensor([[1.0] * 10, [0.0] * 6 + [-1.0] * 4, [1.0] + [-1.0] * 9])
    kept_coords, kept_labels = augment_points(coords, labels, None)
    assert kept_labels.shape == (3, 5)
    assert ((kept_labels >= 0).sum(1)).tolist() == [5, 3, 1]  # N // 2, at least 1
    for m in range(3):  # every kept point is one of the instance's valid points, once
        kept = [tuple(c) for c, l in zip(kept_coords[m].tolist(), kept_labels[m].tolist()) if l >= 0]
        valid = {tuple(c) for c, l in zip(coords[m].tolist(), labels[m].tolist()) if l >= 0}
        assert len(set(kept)) == len(kept) and set(kept) <= valid
