"""Data pipeline: COCO JSON with masks and/or points -> transformed Samples -> ImageBatch."""

from pointsup.data.coco import CocoInstanceDataset, Sample, decode_segmentation, load_coco_json
from pointsup.data.collate import collate, pad_images
from pointsup.data.points import pad_points, parse_annotation_points, points_to_json
from pointsup.data.transforms import (
    Compose,
    PointAugmentation,
    RandomCrop,
    RandomHorizontalFlip,
    ResizeShortestEdge,
    build_test_transforms,
    build_train_transforms,
)

__all__ = [
    "CocoInstanceDataset",
    "Sample",
    "decode_segmentation",
    "load_coco_json",
    "collate",
    "pad_images",
    "pad_points",
    "parse_annotation_points",
    "points_to_json",
    "simulate_points",
    "generate_synthetic_dataset",
    "Compose",
    "PointAugmentation",
    "RandomCrop",
    "RandomHorizontalFlip",
    "ResizeShortestEdge",
    "build_test_transforms",
    "build_train_transforms",
]


def __getattr__(name: str):
    # The two command-line modules are imported lazily: importing them here would make
    # `python -m pointsup.data.synthetic` warn that the module was already imported.
    if name == "simulate_points":
        from pointsup.data.simulate_points import simulate_points

        return simulate_points
    if name == "generate_synthetic_dataset":
        from pointsup.data.synthetic import generate_synthetic_dataset

        return generate_synthetic_dataset
    raise AttributeError(f"module 'pointsup.data' has no attribute {name!r}")
