"""Self-training (paper sec. 3.3.2): pseudo masks predicted from GT boxes."""

import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from torch import nn

from pointsup.config import Config
from pointsup.data.synthetic import generate_synthetic_dataset
from pointsup.self_training import pseudo_label_coco


class _FullBoxMaskHead(nn.Module):
    """Predicts probability 1 everywhere on each box's grid: pseudo masks must equal the boxes."""

    def forward(self, features, boxes, classes, targets=None, matched_idxs=None):
        self.seen_boxes = boxes
        return [torch.ones(len(b), 28, 28) for b in boxes]


class _StubRCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("pixel_mean", torch.zeros(3, 1, 1))
        self.register_buffer("pixel_std", torch.ones(3, 1, 1))
        self.backbone = nn.Identity()
        self.roi_heads = nn.Module()
        self.roi_heads.mask_head = _FullBoxMaskHead()

    def normalize(self, images, image_sizes):
        return (images - self.pixel_mean) / self.pixel_std


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    paths = generate_synthetic_dataset(str(root), num_train=4, num_val=1, image_size=64, seed=3)
    with open(paths["train_json"]) as f:
        coco = json.load(f)
    # A crowd annotation must be copied unchanged (never pseudo-labelled).
    crowd = dict(coco["annotations"][0], id=10**6, iscrowd=1, segmentation=[[0, 0, 4, 0, 4, 4]])
    coco["annotations"].append(crowd)
    return coco, paths["image_dir"]


def test_pseudo_masks_follow_gt_boxes_in_the_original_frame(tiny_coco):
    coco, image_dir = tiny_coco
    cfg = Config()
    cfg.data.min_size_test, cfg.data.max_size_test = 96, 200  # the model sees a 1.5x resized image
    model = _StubRCNN()
    out = pseudo_label_coco(model, coco, image_dir, cfg, progress=False)

    assert out is not coco and len(out["annotations"]) == len(coco["annotations"])
    images = {im["id"]: im for im in out["images"]}
    checked = 0
    for ann in out["annotations"]:
        if ann["iscrowd"]:
            assert ann["segmentation"] == [[0, 0, 4, 0, 4, 4]]
            continue
        H, W = images[ann["image_id"]]["height"], images[ann["image_id"]]["width"]
        mask = mask_util.decode(ann["segmentation"]).astype(bool)
        assert mask.shape == (H, W)
        x, y, w, h = ann["bbox"]
        cols, rows = np.arange(W) + 0.5, np.arange(H) + 0.5  # pixel centres
        expected = ((rows[:, None] >= y) & (rows[:, None] <= y + h)) & ((cols[None] >= x) & (cols[None] <= x + w))
        assert (mask != expected).sum() <= 2 * (w + h) * 0.05 + 2  # at most a few edge pixels differ
        assert ann["area"] == pytest.approx(mask.sum())
        checked += 1
    assert checked >= 3
    # The mask head saw the boxes in the resized (x1.5) frame, not the original one.
    last_ann = [a for a in out["annotations"] if not a["iscrowd"] and a["image_id"] == out["images"][-1]["id"]]
    if last_ann:
        x, y, w, h = last_ann[0]["bbox"]
        seen = model.roi_heads.mask_head.seen_boxes[0][0]
        assert seen.tolist() == pytest.approx([1.5 * x, 1.5 * y, 1.5 * (x + w), 1.5 * (y + h)], abs=1e-3)


def test_self_training_refuses_models_without_a_box_mask_head(tiny_coco):
    coco, image_dir = tiny_coco
    with pytest.raises(TypeError, match="R-CNN"):
        pseudo_label_coco(nn.Linear(2, 2), coco, image_dir, Config(), progress=False)
