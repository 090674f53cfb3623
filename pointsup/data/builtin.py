"""The built-in data set: where a config's data comes from when `data.train_json` is empty.

Synthetic shapes (`pointsup.data.synthetic`) are generated once into
`data.synthetic_dir/<folder named by every generation parameter>/` with their P_N point file
(points simulated from the train masks, paper sec. 3.1, then the masks removed: point
supervision never sees a mask). Training, evaluation and self-training all ask
`data_paths(cfg)` for their files, so they always agree on one data set.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

from pointsup.config import Config, DataConfig
from pointsup.utils import distributed as dist_utils
from pointsup.utils.io import atomic_write_json


class DataPaths(NamedTuple):
    """The four files/folders of a run's data: annotations JSON and image folder per split.

    `train_json` is the mask file; `train_points_json` the P_N point file (the same file for
    a user's COCO data, whose JSON holds whichever labels it has)."""

    train_json: str
    train_images: str
    val_json: str
    val_images: str
    train_points_json: str


def synthetic_folder_name(data: DataConfig) -> str:
    """Cache folder of the built-in data: every generation parameter is in the name (the
    default variant keeps its historical name), so changing one never reuses a stale cache."""
    name = f"train{data.synthetic_num_train}_val{data.synthetic_num_val}_size{data.synthetic_image_size}"
    variant = (data.synthetic_max_objects, data.synthetic_num_classes, data.synthetic_background)
    if variant != (6, 5, "texture"):
        name += f"_obj{variant[0]}_cls{variant[1]}_{variant[2]}"
    return name


def prepare_synthetic_data(data: DataConfig) -> DataPaths:
    """Create the built-in synthetic data set and its P_N point file once (rank 0; the other
    ranks wait); return its paths."""
    from pointsup.data.simulate_points import simulate_points
    from pointsup.data.synthetic import generate_synthetic_dataset

    root = os.path.join(data.synthetic_dir, synthetic_folder_name(data))
    points_json = os.path.join(root, f"train_points_n{data.num_points}_without_masks.json")
    if dist_utils.is_main_process():
        if not os.path.exists(os.path.join(root, "val.json")):
            print(f"[pointsup] generating the synthetic data set in {root}")
            generate_synthetic_dataset(
                root, data.synthetic_num_train, data.synthetic_num_val, data.synthetic_image_size, seed=0,
                max_objects=data.synthetic_max_objects, num_classes=data.synthetic_num_classes,
                background=data.synthetic_background,
            )
        if not os.path.exists(points_json):
            with open(os.path.join(root, "train.json")) as f:
                coco_dict = json.load(f)
            coco_dict = simulate_points(coco_dict, data.num_points, seed=0, keep_masks=False)
            assert not any("segmentation" in ann for ann in coco_dict["annotations"])
            atomic_write_json(points_json, coco_dict)
    dist_utils.barrier()  # the other ranks wait until rank 0 has written the files
    images = os.path.join(root, "images")
    return DataPaths(os.path.join(root, "train.json"), images, os.path.join(root, "val.json"), images, points_json)


def data_paths(cfg: Config) -> DataPaths:
    """The configured data set's files: the user's COCO data, or the built-in data (created
    on first use) when data.train_json is empty."""
    data = cfg.data
    if not data.train_json:
        return prepare_synthetic_data(data)
    return DataPaths(data.train_json, data.train_images, data.val_json, data.val_images, data.train_json)
