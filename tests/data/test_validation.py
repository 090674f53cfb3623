"""Bad data is found when the data set is built, before training, with the file and the id
in the message (issue 12): paths leaving the image folder, duplicate ids, non-numeric or
non-finite boxes, missing files, point supervision without points, points outside their
box, 16-bit and other unusual image modes, enum typos in the config."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from pointsup.config import ConfigError, config_from_dict, config_to_dict, load_config
from pointsup.data.coco import CocoInstanceDataset, load_image_rgb

from .helpers import tiny_coco, write_image

BOX = {"bbox": [2.0, 3.0, 10.0, 8.0]}


def rewrite(json_path, edit):
    with open(json_path) as f:
        coco = json.load(f)
    edit(coco)
    with open(json_path, "w") as f:
        json.dump(coco, f)
    return json_path


@pytest.mark.parametrize("file_name", ["../../../../etc/passwd", "/etc/passwd", "sub/../../outside.png"])
def test_file_name_outside_the_image_folder_is_refused(tmp_path, file_name):
    os.makedirs(tmp_path / "d")
    json_path = tiny_coco(str(tmp_path / "d"), [{"id": 1, **BOX}])
    rewrite(json_path, lambda c: c["images"][0].update(file_name=file_name))
    with pytest.raises(ValueError, match=rf"ann.json: image id 1: file_name '{file_name}' leaves the image folder"):
        CocoInstanceDataset(json_path, str(tmp_path / "d"))


def test_paths_outside_the_folder_only_with_the_explicit_flag(tmp_path):
    os.makedirs(tmp_path / "d")
    json_path = tiny_coco(str(tmp_path / "d"), [{"id": 1, **BOX}])
    write_image(str(tmp_path / "elsewhere.png"), 20, 30)
    rewrite(json_path, lambda c: c["images"][0].update(file_name="../elsewhere.png"))
    ds = CocoInstanceDataset(json_path, str(tmp_path / "d"), allow_paths_outside_root=True)
    assert ds[0].image.shape == (3, 20, 30)


def test_duplicate_image_and_annotation_ids(tmp_path):
    json_path = tiny_coco(str(tmp_path), [{"id": 1, **BOX}, {"id": 2, **BOX}])
    rewrite(json_path, lambda c: c["images"].append(dict(c["images"][0], file_name="other.png")))
    with pytest.raises(ValueError, match=r"ann.json: image id 1 appears twice \('img.png' and 'other.png'\)"):
        CocoInstanceDataset(json_path, str(tmp_path))
    json_path = tiny_coco(str(tmp_path), [{"id": 7, **BOX}, {"id": 7, **BOX}])
    with pytest.raises(ValueError, match="ann.json: annotation id 7 appears twice"):
        CocoInstanceDataset(json_path, str(tmp_path))


@pytest.mark.parametrize("bbox", [["a", 1, 2, 3], [1, 2, float("nan"), 3], [1, float("inf"), 2, 3], [1, 2, None, 3], [True, 1, 2, 3]])
def test_bbox_must_be_four_finite_numbers(tmp_path, bbox):
    json_path = tiny_coco(str(tmp_path), [{"id": 9, "bbox": bbox}])
    with pytest.raises(ValueError, match=r"ann.json: annotation id 9 \(image id 1\): bbox .* must be four finite numbers"):
        CocoInstanceDataset(json_path, str(tmp_path))


def test_bad_image_entries(tmp_path):
    json_path = tiny_coco(str(tmp_path), [{"id": 1, **BOX}])
    rewrite(json_path, lambda c: c["images"][0].update(height=0))
    with pytest.raises(ValueError, match="image id 1: height must be a positive integer"):
        CocoInstanceDataset(json_path, str(tmp_path))


def test_missing_image_files_are_found_up_front(tmp_path):
    json_path = tiny_coco(str(tmp_path), [{"id": 1, **BOX}])
    rewrite(json_path, lambda c: c["images"].append({"id": 2, "file_name": "gone.png", "height": 20, "width": 30}))
    with pytest.raises(FileNotFoundError, match=r"ann.json: 1 of 2 image files not found: .*gone.png \(image id 2\)"):
        CocoInstanceDataset(json_path, str(tmp_path))


def test_supervision_without_its_labels_is_an_error(tmp_path):
    """Every point list empty: the mask loss would be 0 for the whole run. Through the trainer's
    own data set builder, so the setting that enables the check is the one training uses."""
    from pointsup.train import build_datasets

    json_path = tiny_coco(str(tmp_path), [{"id": 1, **BOX, "point_coords": [], "point_labels": []},
                                          {"id": 2, **BOX, "point_coords": [], "point_labels": []}])
    cfg = load_config(None, [f"data.train_json={json_path}", f"data.train_images={tmp_path}",
                             f"data.val_json={json_path}", f"data.val_images={tmp_path}"])
    with pytest.raises(ValueError, match="ann.json: point supervision, but none of the 2 annotations has a usable point"):
        build_datasets(cfg)
    # The supervision and the file's labels are one pairing (pointsup.supervision.dataset_labels):
    # masks need segmentations; boxes only (BoxInst) is fine with this file.
    cfg.model.mask_head.supervision = "masks"
    with pytest.raises(ValueError, match="ann.json: mask supervision, but none of the 2 annotations has a segmentation"):
        build_datasets(cfg)
    cfg.model.meta_architecture, cfg.model.condinst.boxinst = "condinst", True
    train_set, _ = build_datasets(cfg)
    assert len(train_set) == 1 and train_set[0].targets.masks is None and train_set[0].targets.point_coords is None


def test_some_empty_point_lists_and_points_outside_their_box_are_counted(tmp_path):
    anns = [
        {"id": 1, **BOX, "point_coords": [[3.0, 4.0], [20.0, 15.0], [25.0, 4.0]], "point_labels": [1, 0, 0]},  # 2 outside
        {"id": 2, **BOX, "point_coords": [], "point_labels": []},
        {"id": 3, **BOX, "point_coords": [[5.0, 5.0]], "point_labels": [1]},
    ]
    json_path = tiny_coco(str(tmp_path), anns)
    with pytest.warns(UserWarning) as record:
        ds = CocoInstanceDataset(json_path, str(tmp_path), use_masks=False, require_points=True)
    messages = " | ".join(str(w.message) for w in record)
    assert "ann.json: 1 of 3 annotations have no points (missing or empty point lists), ids [2]" in messages
    assert "ann.json: 2 points in 1 annotations lie outside their box, ids [1]" in messages
    assert ds[0].targets.point_labels[0].tolist() == [1.0, 0.0, 0.0]  # kept


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    H, W = 20, 30
    gray16 = (np.arange(H * W).reshape(H, W) * 100).astype(np.uint16)  # 0 .. 59900
    path = str(tmp_path / "img.png")
    Image.fromarray(gray16).save(path)
    assert Image.open(path).mode == "I;16"
    rgb = load_image_rgb(path)
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], np.round(gray16 / 257.0).astype(np.uint8))
    assert (rgb[..., 0] == rgb[..., 2]).all()
    # ... also inside the data set
    os.makedirs(tmp_path / "d")
    json_path = tiny_coco(str(tmp_path / "d"), [{"id": 1, **BOX}], H, W)
    Image.fromarray(gray16).save(tmp_path / "d" / "img.png")
    image = CocoInstanceDataset(json_path, str(tmp_path / "d"))[0].image
    assert 100 < image.mean() < 130  # a mid-grey ramp, not near-white
    torch.testing.assert_close(image[0], torch.from_numpy(np.round(gray16 / 257.0)).float())


def test_float_images_are_refused_clearly(tmp_path):
    path = str(tmp_path / "img.tif")
    Image.fromarray(np.ones((4, 4), dtype=np.float32)).save(path)
    with pytest.raises(ValueError, match=r"img.tif: PIL mode F .*convert the image to 8-bit RGB"):
        load_image_rgb(path)


@pytest.mark.parametrize("override", ["model.mask_head.supervision=pointz", "model.mask_head.name=pointrnd",
                                      "model.meta_architecture=yolo", "solver.amp=fp8", "model.backbone.norm=LN"])
def test_enum_typos_fail_at_load_time(override):
    key, value = override.split("=")
    with pytest.raises(ConfigError, match=rf"{key}='{value}' in .* is not one of"):
        load_config(None, [override])
    values = config_to_dict(load_config())
    section = values
    *parents, leaf = key.split(".")
    for part in parents:
        section = section[part]
    section[leaf] = value
    with pytest.raises(ConfigError, match=rf"{key}='{value}' in ckpt is not one of"):
        config_from_dict(values, source="ckpt")
