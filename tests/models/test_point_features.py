"""PointRend's point ops: fine-grained features, importance sampling, grid selection, labels."""

import torch
from torchvision.ops import roi_align

from pointsup.ops.point_features import (
    get_uncertain_point_coords_on_grid,
    get_uncertain_point_coords_with_randomness,
    grid_coords,
    point_sample,
    point_sample_fine_grained_features,
    sample_mask_labels,
    uncertainty,
)


def test_fine_grained_features_on_grid_equal_roi_align():
    # Oracle: on a grid of bin centres, point sampling is RoIAlign with one sample per bin.
    stride, side = 4, 5
    features = torch.randn(3, 6, 12, 10)  # N=3 images
    boxes = [torch.tensor([[3.0, 5.0, 30.0, 41.0], [0.0, 0.0, 39.5, 47.0]]), torch.zeros(0, 4), torch.tensor([[10.2, 7.7, 17.1, 19.9]])]
    R = 3
    out = point_sample_fine_grained_features(features, stride, boxes, grid_coords(R, side))  # (R, C, P)
    rois = torch.cat([torch.tensor([[0.0], [0.0], [2.0]]), torch.cat(boxes)], dim=1)
    expected = roi_align(features, rois, output_size=side, spatial_scale=1 / stride, sampling_ratio=1, aligned=True)
    assert out.shape == (R, 6, side * side)
    torch.testing.assert_close(out, expected.flatten(2), atol=1e-5, rtol=1e-5)


def test_fine_grained_features_empty():
    features = torch.randn(2, 4, 8, 8, requires_grad=True)
    out = point_sample_fine_grained_features(features, 4, [torch.zeros(0, 4)] * 2, torch.zeros(0, 7, 2))
    assert out.shape == (0, 4, 7)


def disc_coarse_logits(R: int, side: int = 14, radius: float = 0.3) -> torch.Tensor:
    """(R, 1, side, side) logits 20 * (radius - distance to the box centre): a disc whose
    uncertainty -|logit| grows towards its boundary."""
    c = grid_coords(1, side)[0]  # (side*side, 2)
    logits = 20.0 * (radius - (c - 0.5).norm(dim=-1))
    return logits.view(1, 1, side, side).expand(R, -1, -1, -1)


def distance_to_circle(coords: torch.Tensor, radius: float = 0.3) -> torch.Tensor:
    return ((coords - 0.5).norm(dim=-1) - radius).abs()


def test_importance_sampling_counts_range_and_preference():
    R, num_points = 4, 196
    coarse = disc_coarse_logits(R)
    coords = get_uncertain_point_coords_with_randomness(coarse, uncertainty, num_points, 3.0, 0.75)
    assert coords.shape == (R, num_points, 2)
    assert coords.min() >= 0 and coords.max() <= 1
    # The first beta * P = 147 points are the most uncertain quarter of k * P = 588 uniform
    # candidates: a ring of area ~0.25 around the circle, i.e. within ~0.07 of it.
    near = distance_to_circle(coords) < 0.08  # (R, P)
    uniform_near = distance_to_circle(torch.rand(R, 10000, 2)) < 0.08
    assert near[:, :147].float().mean() > 0.9
    assert uniform_near.float().mean() < 0.35
    # The remaining (1 - beta) * P points are uniform, not concentrated at the boundary.
    assert near[:, 147:].float().mean() < 0.6
    # And the selected points are far more uncertain than uniform ones.
    sampled_abs = point_sample(coarse, coords[:, :147])[:, 0].abs()
    uniform_abs = point_sample(coarse, torch.rand(R, 147, 2))[:, 0].abs()
    assert sampled_abs.mean() < 0.3 * uniform_abs.mean()


def test_importance_sampling_ratio_edges_and_rounding():
    coarse = disc_coarse_logits(2)
    assert get_uncertain_point_coords_with_randomness(coarse, uncertainty, 10, 3.0, 0.75).shape == (2, 10, 2)
    assert get_uncertain_point_coords_with_randomness(coarse, uncertainty, 10, 1.0, 0.0).shape == (2, 10, 2)
    only_uncertain = get_uncertain_point_coords_with_randomness(coarse, uncertainty, 50, 4.0, 1.0)
    assert distance_to_circle(only_uncertain).max() < 0.1
    empty = get_uncertain_point_coords_with_randomness(coarse[:0], uncertainty, 10, 3.0, 0.75)
    assert empty.shape == (0, 10, 2)


def test_uncertain_points_on_grid_are_cell_centres_of_top_cells():
    unc = torch.randn(3, 1, 6, 8)
    idx, coords = get_uncertain_point_coords_on_grid(unc, 10)
    assert idx.shape == (3, 10) and coords.shape == (3, 10, 2)
    expected_idx = unc.view(3, -1).topk(10, dim=1).indices
    assert torch.equal(idx, expected_idx)
    # Cell centres of the row-major 6 x 8 grid.
    rows, cols = idx // 8, idx % 8
    torch.testing.assert_close(coords[..., 0], (cols + 0.5) / 8)
    torch.testing.assert_close(coords[..., 1], (rows + 0.5) / 6)
    # Sampling the map at those coords reads exactly the selected cells.
    torch.testing.assert_close(point_sample(unc, coords)[:, 0], unc.view(3, -1).gather(1, idx))
    # More points than cells: all cells.
    assert get_uncertain_point_coords_on_grid(unc, 1000)[0].shape == (3, 48)


def test_sample_mask_labels_equals_point_sample_of_float_masks():
    masks = torch.rand(3, 20, 30) > 0.5
    gt_index = torch.tensor([0, 2, 2, 1])
    coords_img = torch.rand(4, 50, 2) * torch.tensor([34.0, 24.0]) - 2.0  # some outside the image
    labels = sample_mask_labels(masks, gt_index, coords_img)
    expected = point_sample(masks[gt_index].float()[:, None], coords_img / torch.tensor([30.0, 20.0]))[:, 0]
    torch.testing.assert_close(labels, expected, atol=1e-5, rtol=0)
    # At pixel centres labels are exactly the bits.
    centres = torch.tensor([[[4.5, 7.5], [0.5, 0.5]]])
    torch.testing.assert_close(sample_mask_labels(masks, torch.tensor([1]), centres)[0], masks[1, [7, 0], [4, 0]].float())
    assert sample_mask_labels(masks, torch.zeros(0, dtype=torch.long), torch.zeros(0, 5, 2)).shape == (0, 5)
