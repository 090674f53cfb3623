"""COCO evaluation: an oracle that returns the GT scores AP 100; no predictions scores AP 0."""

import json

import pytest
import torch

from pointsup.data.coco import CocoInstanceDataset
from pointsup.data.transforms import build_test_transforms
from pointsup.evaluation import evaluate_coco, instances_to_coco_results

from .fakes import OracleModel, make_tiny_coco, tiny_config


@pytest.fixture(scope="module")
def tiny_val(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    json_path = make_tiny_coco(str(root), num_images=3, size=64, with_points=False)
    cfg = tiny_config(str(root / "out"))
    cfg.data.min_size_test, cfg.data.max_size_test = 96, 96  # resized at test: the model must paste back
    dataset = CocoInstanceDataset(json_path, str(root / "images"), transforms=build_test_transforms(cfg.data),
                                  use_masks=False, use_points=False)
    return json_path, dataset


def test_oracle_scores_100(tiny_val):
    json_path, dataset = tiny_val
    model = OracleModel(json_path, dataset.contiguous_to_category_id)
    metrics = evaluate_coco(model, dataset)
    assert dataset[0].image.shape[-1] == 96  # really evaluated on resized images
    assert metrics["bbox"]["AP"] == pytest.approx(100.0)
    assert metrics["segm"]["AP"] == pytest.approx(100.0)
    assert metrics["segm"]["AP50"] == pytest.approx(100.0)


def test_no_predictions_scores_zero(tiny_val):
    json_path, dataset = tiny_val
    model = OracleModel(json_path, dataset.contiguous_to_category_id, empty=True)
    metrics = evaluate_coco(model, dataset)
    assert metrics["bbox"]["AP"] == 0.0 and metrics["segm"]["AP"] == 0.0


def test_gt_without_masks_reports_bbox_only(tiny_val, tmp_path):
    json_path, dataset = tiny_val
    with open(json_path) as f:
        coco = json.load(f)
    for ann in coco["annotations"]:
        del ann["segmentation"]
    no_masks = tmp_path / "no_masks.json"
    no_masks.write_text(json.dumps(coco))
    model = OracleModel(json_path, dataset.contiguous_to_category_id)
    with pytest.warns(UserWarning, match="no masks"):
        metrics = evaluate_coco(model, dataset, gt_json=str(no_masks))
    assert "segm" not in metrics and metrics["bbox"]["AP"] == pytest.approx(100.0)


def test_results_use_coco_ids_xywh_and_rle():
    prediction = {"pred_boxes": torch.tensor([[1.0, 2.0, 5.0, 10.0]]), "pred_scores": torch.tensor([0.7]),
                  "pred_classes": torch.tensor([1]), "pred_masks": torch.ones(1, 12, 8, dtype=torch.bool)}
    (result,) = instances_to_coco_results(prediction, image_id=5, contiguous_to_category_id=[3, 7])
    assert result["category_id"] == 7 and result["image_id"] == 5
    assert result["bbox"] == pytest.approx([1.0, 2.0, 4.0, 8.0])
    assert result["segmentation"]["size"] == [12, 8] and isinstance(result["segmentation"]["counts"], str)
    json.dumps(result)


def test_num_images_evaluates_a_fixed_subset(tiny_val):
    json_path, dataset = tiny_val
    model = OracleModel(json_path, dataset.contiguous_to_category_id)
    calls = []
    original = model.forward

    def counting_forward(images, *args, **kwargs):
        calls.append(images.shape[0])
        return original(images, *args, **kwargs)

    model.forward = counting_forward
    metrics = evaluate_coco(model, dataset, num_images=1)
    assert sum(calls) == 1  # inference ran on one image only ...
    # ... and COCOeval scored that image only: the oracle is still perfect (the other
    # images' GT would count as misses if they were included).
    assert metrics["bbox"]["AP"] == pytest.approx(100.0)
    calls.clear()
    evaluate_coco(model, dataset, num_images=0)
    assert sum(calls) == len(dataset)
