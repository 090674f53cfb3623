import json
import os

import numpy as np
import pytest
import torch

from pointsup.data.coco import CocoInstanceDataset
from pointsup.data.collate import collate
from pointsup.data.points import points_to_json
from pointsup.data.transforms import build_train_transforms
from pointsup.config import DataConfig
from pointsup.structures import ImageBatch

from .helpers import rle_of, tiny_coco, write_image

BOX = {"bbox": [2.0, 3.0, 10.0, 8.0]}


def test_points_json_round_trip_float_and_int(tmp_path):
    coords = np.array([[2.25, 3.5], [11.99, 10.0], [5.0, 4.0]])
    labels = np.array([1, 0, 1])
    anns = [
        {"id": 1, **BOX, **points_to_json(coords, labels)},  # pointsup writes floats
        {"id": 2, **BOX, "point_coords": [[3, 4], [11, 10]], "point_labels": [0, 1]},  # ints = pixel indices
        {"id": 3, **BOX},  # no points: an all-ignore row
    ]
    json_path = tiny_coco(str(tmp_path), anns)
    assert json.load(open(json_path))["annotations"][0]["point_coords"][2] == [5.0, 4.0]
    t = CocoInstanceDataset(json_path, str(tmp_path), use_masks=False)[0].targets
    assert t.point_coords.shape == (3, 3, 2) and t.point_labels.shape == (3, 3)
    torch.testing.assert_close(t.point_coords[0], torch.tensor(coords, dtype=torch.float32))
    assert t.point_labels[0].tolist() == [1.0, 0.0, 1.0]
    torch.testing.assert_close(t.point_coords[1, :2], torch.tensor([[3.5, 4.5], [11.5, 10.5]]))
    assert t.point_labels[1].tolist() == [0.0, 1.0, -1.0]  # padded with ignore
    assert t.point_labels[2].tolist() == [-1.0, -1.0, -1.0]
    assert t.masks is None


def test_targets_classes_masks_crowd_and_empty(tmp_path):
    H, W = 20, 30
    square = np.zeros((H, W), dtype=bool)
    square[3:11, 2:12] = True
    polygon = [[2.0, 3.0, 12.0, 3.0, 12.0, 11.0, 2.0, 11.0]]
    uncompressed = {"size": [H, W], "counts": [int(v) for v in np.diff(np.flatnonzero(np.diff(np.r_[-1, square.T.ravel(), -1])))]}
    anns = [
        {"id": 1, **BOX, "segmentation": rle_of(square)},
        {"id": 2, "bbox": [2.0, 3.0, 10.0, 8.0], "segmentation": polygon, "category_id": 3},
        {"id": 3, **BOX, "segmentation": uncompressed},
        {"id": 4, **BOX, "segmentation": rle_of(square), "iscrowd": 1},
    ]
    json_path = tiny_coco(str(tmp_path), anns, H, W)
    ds = CocoInstanceDataset(json_path, str(tmp_path))
    assert ds.num_classes == 2 and ds.class_names == ["other", "thing"] and ds.contiguous_to_category_id == [3, 7]
    s = ds[0]
    assert s.image.shape == (3, H, W) and s.image.dtype == torch.float32 and s.image.max() > 1
    assert s.image_id == 1 and s.orig_size == (H, W)
    t = s.targets
    assert len(t) == 3  # the crowd annotation is not a target
    assert t.classes.tolist() == [1, 0, 1]
    torch.testing.assert_close(t.boxes, torch.tensor([[2.0, 3.0, 12.0, 11.0]] * 3))
    assert t.masks.dtype == torch.bool and t.masks.shape == (3, H, W)
    assert torch.equal(t.masks[0], torch.from_numpy(square)) and torch.equal(t.masks[2], t.masks[0])
    assert (t.masks[1] != t.masks[0]).sum() <= 2 * (10 + 8)  # polygon rasterisation differs only at the rim
    assert t.point_coords is None

    # One annotation without segmentation: the image trains without masks.
    json_path = tiny_coco(str(tmp_path), [anns[0], {"id": 5, **BOX}], H, W)
    assert CocoInstanceDataset(json_path, str(tmp_path))[0].targets.masks is None

    # Only a crowd annotation: empty targets, or skipped.
    json_path = tiny_coco(str(tmp_path), [anns[3]], H, W)
    assert len(CocoInstanceDataset(json_path, str(tmp_path))[0].targets) == 0
    assert len(CocoInstanceDataset(json_path, str(tmp_path), skip_empty=True)) == 0


def test_bad_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoInstanceDataset(str(tmp_path / "nope.json"), str(tmp_path))
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(ValueError, match="bad.json.*malformed"):
        CocoInstanceDataset(str(bad), str(tmp_path))
    bad.write_text('{"images": []}')
    with pytest.raises(ValueError, match="annotations"):
        CocoInstanceDataset(str(bad), str(tmp_path))


@pytest.mark.parametrize(
    "ann,match",
    [
        ({"id": 41}, "ann.json: annotation id 41 has no valid bbox"),
        ({"id": 42, **BOX, "point_coords": [[3.0, 4.0]], "point_labels": [1, 0]}, "annotation id 42 has 1 point_coords but 2"),
        ({"id": 43, **BOX, "point_coords": [[3.0, 4.0]], "point_labels": [2]}, "annotation id 43 has point_labels \\[2\\]"),
        ({"id": 44, **BOX, "point_coords": [[3.0, 4.0]]}, "annotation id 44 has only one of"),
        ({"id": 45, **BOX, "segmentation": [[1.0, 2.0]]}, "annotation id 45: bad segmentation"),
        ({"id": 46, **BOX, "category_id": 99}, "annotation id 46 has unknown category_id"),
    ],
)
def test_bad_annotation_names_file_and_id(tmp_path, ann, match):
    json_path = tiny_coco(str(tmp_path), [ann])
    with pytest.raises(ValueError, match=match):
        ds = CocoInstanceDataset(json_path, str(tmp_path))
        ds[0]  # segmentation is decoded lazily


def test_zero_area_box_and_outside_points_warn(tmp_path):
    anns = [
        {"id": 51, "bbox": [2.0, 3.0, 0.0, 5.0]},
        {"id": 52, "bbox": [40.0, 3.0, 5.0, 5.0]},  # entirely right of the 30 px wide image
        {"id": 53, **BOX, "point_coords": [[3.0, 4.0], [31.0, 4.0], [5.0, -1.0]], "point_labels": [1, 0, 0]},
    ]
    json_path = tiny_coco(str(tmp_path), anns)
    with pytest.warns(UserWarning) as record:
        ds = CocoInstanceDataset(json_path, str(tmp_path))
    messages = " | ".join(str(w.message) for w in record)
    assert "ann.json" in messages and "[51, 52]" in messages and "annotation id 53: dropped 2 of 3" in messages
    t = ds[0].targets
    assert len(t) == 1 and t.point_coords.shape == (1, 1, 2)


def test_missing_corrupt_and_wrong_size_image(tmp_path):
    json_path = tiny_coco(str(tmp_path), [{"id": 1, **BOX}])
    ds = CocoInstanceDataset(json_path, str(tmp_path))
    os.remove(tmp_path / "img.png")
    with pytest.raises(FileNotFoundError, match="img.png.*image id 1"):
        ds[0]  # deleted after the data set was built (missing files are found up front: test_validation.py)
    (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="corrupt.*img.png"):
        ds[0]
    write_image(str(tmp_path / "img.png"), 21, 30)
    with pytest.raises(ValueError, match="img.png.*30x21.*30x20"):
        ds[0]


def test_dataloader_with_workers(synthetic_paths, synthetic_points_json):
    ds = CocoInstanceDataset(synthetic_points_json, synthetic_paths["image_dir"],
                             transforms=build_train_transforms(DataConfig(min_size_train=[64, 80], max_size_train=128, point_aug=True)))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate, shuffle=False)
    ids = []
    for batch in loader:
        assert isinstance(batch, ImageBatch) and batch.images.shape[-1] % 32 == 0
        assert len(batch.targets) == len(batch) and batch.targets[0].point_labels.shape[1] == 5
        ids.extend(batch.image_ids)
    assert ids == ds.image_ids and len(ids) == 16
