"""Pasting box-relative mask grids into images, and rescaling detections."""

import pytest
import torch

from pointsup.models.postprocess import paste_masks_in_image, rescale_detections
from pointsup.ops.point_features import point_sample


def test_full_box_mask_fills_exactly_the_box():
    boxes_xyxy = torch.tensor([[10.0, 20.0, 30.0, 45.0], [0.0, 0.0, 64.0, 48.0], [50.0, 5.0, 53.0, 9.0]])
    masks = paste_masks_in_image(torch.ones(3, 28, 28), boxes_xyxy, (48, 64))
    assert masks.shape == (3, 48, 64) and masks.dtype == torch.bool
    for mask, (x0, y0, x1, y1) in zip(masks, boxes_xyxy.long().tolist()):
        expected = torch.zeros(48, 64, dtype=torch.bool)
        expected[y0:y1, x0:x1] = True
        assert torch.equal(mask, expected)


@pytest.mark.parametrize("threshold", [0.5, 0.1])
def test_paste_matches_point_sampling_at_pixel_centres(threshold):
    # Oracle: read each pixel centre with point_sample in the box frame, one mask at a time.
    torch.manual_seed(1)
    H, W, R = 24, 40, 5
    probs = 0.5 + 0.5 * torch.rand(R, 7, 7)  # high everywhere: low thresholds reach beyond the box
    x0y0 = torch.rand(R, 2) * 20
    boxes_xyxy = torch.cat([x0y0, x0y0 + 3 + torch.rand(R, 2) * 20], dim=1)
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    centres_img = torch.stack([xs, ys], dim=-1).reshape(1, -1, 2)  # (1, H*W, 2)
    for r in range(R):
        wh = boxes_xyxy[r, 2:] - boxes_xyxy[r, :2]
        coords_box = (centres_img - boxes_xyxy[r, :2]) / wh
        expected = point_sample(probs[r][None, None], coords_box)[0, 0].view(H, W) >= threshold
        assert torch.equal(paste_masks_in_image(probs[r : r + 1], boxes_xyxy[r : r + 1], (H, W), threshold)[0], expected)
    # All R at once gives the same as one mask at a time.
    all_at_once = paste_masks_in_image(probs, boxes_xyxy, (H, W), threshold)
    for r in range(R):
        assert torch.equal(all_at_once[r], paste_masks_in_image(probs[r : r + 1], boxes_xyxy[r : r + 1], (H, W), threshold)[0])


def test_zero_detections():
    masks = paste_masks_in_image(torch.zeros(0, 28, 28), torch.zeros(0, 4), (30, 40))
    assert masks.shape == (0, 30, 40) and masks.dtype == torch.bool
    out = rescale_detections(
        {
            "pred_boxes": torch.zeros(0, 4),
            "pred_scores": torch.zeros(0),
            "pred_classes": torch.zeros(0, dtype=torch.int64),
            "pred_mask_probs": torch.zeros(0, 28, 28),
        },
        (30, 40),
        (60, 80),
    )
    assert out["pred_boxes"].shape == (0, 4) and out["pred_masks"].shape == (0, 60, 80)


def test_rescale_detections_to_output_size():
    detections = {
        "pred_boxes": torch.tensor([[10.0, 5.0, 20.0, 15.0]]),
        "pred_scores": torch.tensor([0.9]),
        "pred_classes": torch.tensor([2]),
        "pred_mask_probs": torch.ones(1, 28, 28),
    }
    out = rescale_detections(detections, input_size=(30, 40), output_size=(60, 120))  # y x2, x x3
    torch.testing.assert_close(out["pred_boxes"], torch.tensor([[30.0, 10.0, 60.0, 30.0]]))
    assert out["pred_masks"].shape == (1, 60, 120)
    assert out["pred_masks"][0].sum() == 30 * 20 and out["pred_masks"][0, 10:30, 30:60].all()
    with pytest.raises(ValueError, match="paste must be one of"):  # a typo is an error, not a fallback
        rescale_detections(detections, input_size=(30, 40), paste="torchvison")


def test_detections_empty_after_clipping_are_dropped():
    # As detectron2's detector_postprocess (Boxes.nonempty after clip): a box that lies on or
    # beyond the image border has no area once clipped and is not reported.
    boxes_xyxy = torch.tensor(
        [
            [10.0, 5.0, 20.0, 15.0],  # inside: kept
            [40.0, 10.0, 40.0, 20.0],  # zero width on the right edge
            [45.0, 2.0, 52.0, 9.0],  # right of the image: zero width once clipped
            [5.0, -8.0, 15.0, -1.0],  # above the image: zero height once clipped
            [35.0, 25.0, 48.0, 36.0],  # partly outside: clipped to [35, 25, 40, 30], kept
        ]
    )
    detections = {
        "pred_boxes": boxes_xyxy,
        "pred_scores": torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5]),
        "pred_classes": torch.tensor([1, 2, 3, 4, 5]),
        "pred_mask_probs": torch.ones(5, 28, 28),
    }
    for paste in ("pointsup", "torchvision"):
        out = rescale_detections(detections, input_size=(30, 40), output_size=(60, 80), paste=paste)  # x2
        torch.testing.assert_close(out["pred_boxes"], torch.tensor([[20.0, 10.0, 40.0, 30.0], [70.0, 50.0, 80.0, 60.0]]))
        assert out["pred_scores"].tolist() == pytest.approx([0.9, 0.5])
        assert out["pred_classes"].tolist() == [1, 5]
        assert out["pred_masks"].shape == (2, 60, 80)
        assert out["pred_masks"][0, 10:30, 20:40].all() and out["pred_masks"][1, 50:60, 70:80].all()
    # Without masks (a box-only model) the same rows are dropped.
    no_masks = {k: v for k, v in detections.items() if k != "pred_mask_probs"}
    out = rescale_detections(no_masks, input_size=(30, 40))
    assert out["pred_classes"].tolist() == [1, 5] and "pred_masks" not in out
