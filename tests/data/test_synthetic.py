import filecmp
import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from pointsup.data.coco import CocoInstanceDataset, decode_segmentation
from pointsup.data.synthetic import CLASS_NAMES, DEFAULT_NUM_CLASSES, generate_synthetic_dataset, main


def test_deterministic_per_seed(synthetic_paths, tmp_path):
    again = generate_synthetic_dataset(str(tmp_path / "a"), num_train=16, num_val=4, image_size=64, seed=0)
    other = generate_synthetic_dataset(str(tmp_path / "b"), num_train=16, num_val=4, image_size=64, seed=1)
    for key in ("train_json", "val_json"):
        assert open(again[key]).read() == open(synthetic_paths[key]).read()
        assert open(other[key]).read() != open(synthetic_paths[key]).read()
    names = sorted(os.listdir(synthetic_paths["image_dir"]))
    assert len(names) == 20 and names[0] == "train_000001.png"
    assert all(filecmp.cmp(os.path.join(again["image_dir"], n), os.path.join(synthetic_paths["image_dir"], n), shallow=False) for n in names)
    assert not filecmp.cmp(os.path.join(other["image_dir"], names[0]), os.path.join(synthetic_paths["image_dir"], names[0]), shallow=False)


def test_annotations_are_consistent_and_cover_several_categories(synthetic_paths):
    coco = json.load(open(synthetic_paths["train_json"]))
    assert [c["name"] for c in coco["categories"]] == CLASS_NAMES[:DEFAULT_NUM_CLASSES]
    assert len({a["category_id"] for a in coco["annotations"]}) >= 4
    per_image = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=17)[1:]
    assert per_image.max() <= 6 and per_image.mean() > 1.5
    for ann in coco["annotations"]:
        assert ann["iscrowd"] == 0
        mask = decode_segmentation(ann["segmentation"], (64, 64))
        ys, xs = np.nonzero(mask)
        assert ann["area"] == mask.sum() > 0
        assert ann["bbox"] == [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]
    # Visible masks of one image never overlap (occlusion is resolved).
    first = [decode_segmentation(a["segmentation"], (64, 64)) for a in coco["annotations"] if a["image_id"] == 1]
    assert np.stack(first).sum(0).max() <= 1
    api = COCO(synthetic_paths["val_json"])
    assert len(api.getImgIds()) == 4
    image = Image.open(os.path.join(synthetic_paths["image_dir"], coco["images"][0]["file_name"]))
    assert image.size == (64, 64) and image.mode == "RGB"


def test_colour_is_not_the_class_cue(synthetic_paths):
    ds = CocoInstanceDataset(synthetic_paths["train_json"], synthetic_paths["image_dir"])
    colours = {}
    for i in range(len(ds)):
        s = ds[i]
        for m in range(len(s.targets)):
            colours.setdefault(int(s.targets.classes[m]), []).append(s.image[:, s.targets.masks[m]].mean(1).numpy())
    spreads = [np.std(np.stack(c), axis=0).mean() for c in colours.values() if len(c) >= 3]
    assert spreads and min(spreads) > 30  # each class appears in many different colours


def test_cli(tmp_path, capsys):
    main(["--out", str(tmp_path), "--num-train", "2", "--num-val", "1", "--seed", "3", "--image-size", "48"])
    assert (tmp_path / "train.json").exists() and (tmp_path / "val.json").exists()
    assert len(os.listdir(tmp_path / "images")) == 3


@pytest.mark.parametrize("background", ["flat", "clutter"])
def test_synthetic_variants(tmp_path, background):
    paths = generate_synthetic_dataset(str(tmp_path), num_train=24, num_val=0, image_size=96, seed=2,
                                       max_objects=10, num_classes=8, background=background)
    coco = json.load(open(paths["train_json"]))
    assert [c["name"] for c in coco["categories"]] == CLASS_NAMES[:8]
    per_image = {}
    for ann in coco["annotations"]:
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
    assert max(per_image.values()) <= 10
    assert max(per_image.values()) > 6  # more than the default's 6 objects do occur
    assert {a["category_id"] for a in coco["annotations"]} - {1, 2, 3, 4, 5}  # the extra shapes appear
    image = np.asarray(Image.open(os.path.join(paths["image_dir"], coco["images"][0]["file_name"])))
    assert image.shape == (96, 96, 3)


def test_synthetic_variant_errors(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        generate_synthetic_dataset(str(tmp_path), 1, 0, 64, num_classes=9)
    with pytest.raises(ValueError, match="background"):
        generate_synthetic_dataset(str(tmp_path), 1, 0, 64, background="photo")
