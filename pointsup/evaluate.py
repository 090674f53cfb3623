"""Evaluate a checkpoint on the validation set:

    python -m pointsup.evaluate --weights W [--config C] [--set key=value ...] [--gt-box-iou]
    torchrun --nproc_per_node=8 -m pointsup.evaluate --weights W [--config C]

or from Python, `pointsup.evaluate("output/model_final.pth")` (this module is callable:
it runs `evaluate` below; see pointsup/utils/callable_module.py).

The model and the validation data are those of the config stored in the checkpoint;
`--config` replaces it and `--set` overrides either. Writes OUTPUT/eval_<weights name>.json,
e.g. output/eval_model_final.json ({"bbox": {"AP", "AP50", ...}, "segm": {...}, "weights": W},
AP in percent) atomically, where OUTPUT is cfg.output_dir (or --output-dir). Its own file:
the training run's metrics.json is never touched. The checkpoint is read with
weights_only=True.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from pointsup.config import Config
from pointsup.evaluation import evaluate_coco, format_metrics, gt_box_mask_quality
from pointsup.utils import distributed as dist_utils
from pointsup.utils.callable_module import make_callable
from pointsup.utils.io import atomic_write_json


def eval_output_path(output_dir: str, weights: str) -> str:
    """OUTPUT/eval_<weights file name without extension>.json."""
    return os.path.join(output_dir, f"eval_{os.path.splitext(os.path.basename(weights))[0]}.json")


def evaluate(weights: str, cfg: Config | str | None = None, overrides: list[str] | tuple[str, ...] = (),
             output_dir: str | None = None, gt_box_iou: bool = False) -> dict[str, Any]:
    """COCO box and mask AP of the checkpoint `weights` on its validation set.

    cfg: None = the config stored in the checkpoint; or a Config / YAML path. `overrides`
    ("a.b=value") go on top. Writes eval_<weights name>.json into `output_dir` (default:
    cfg.output_dir) and returns {"bbox": {"AP", ...}, "segm": {...}} (AP in percent) on
    rank 0, {} on the other ranks of a torchrun launch. `gt_box_iou=True` adds
    "gt_box_iou": the masks the model predicts inside the GT boxes against the GT masks
    (`pointsup.evaluation.gt_box_mask_quality`; R-CNN models; rank 0 runs it alone).
    """
    from pointsup.checkpoint import load_checkpoint
    from pointsup.data.coco import CocoInstanceDataset
    from pointsup.data.transforms import build_test_transforms
    from pointsup.predictor import config_for_checkpoint, load_model_and_categories
    from pointsup.data.builtin import data_paths

    state = load_checkpoint(weights)  # weights_only=True: refuses a file that would run code
    overrides = [*overrides, *([f"output_dir={output_dir}"] if output_dir else [])]
    cfg = config_for_checkpoint(state, weights, cfg, overrides)
    if gt_box_iou and cfg.model.meta_architecture != "rcnn":  # before the evaluation, not after it
        raise ValueError("--gt-box-iou needs an R-CNN model (CondInst segments only its own detections)")
    device = dist_utils.resolve_device(cfg.device)
    dist_utils.init_distributed(device)
    try:
        paths = data_paths(cfg)  # the built-in data set when data.train_json is empty
        dataset = CocoInstanceDataset(paths.val_json, paths.val_images, transforms=build_test_transforms(cfg.data),
                                      use_masks=False, use_points=False,
                                      allow_paths_outside_root=cfg.data.allow_paths_outside_image_root)
        if not cfg.model.num_classes:
            cfg.model.num_classes = dataset.num_classes
        model, _, _ = load_model_and_categories(cfg, state, device)
        metrics = evaluate_coco(model, dataset, device=device, num_workers=cfg.data.num_workers)
        if dist_utils.is_main_process():
            if gt_box_iou:
                metrics["gt_box_iou"] = gt_box_mask_quality(model, paths.val_json, paths.val_images, cfg, device)
            path = eval_output_path(cfg.output_dir, weights)
            atomic_write_json(path, {**metrics, "weights": os.path.abspath(weights)}, indent=2)
            print(f"[pointsup] wrote {path}")
    finally:
        dist_utils.destroy_distributed()
    return metrics


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pointsup.evaluate", description="COCO box and mask AP of a checkpoint.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--weights", required=True, default=argparse.SUPPRESS, help="a pointsup checkpoint (model_*.pth)")
    parser.add_argument("--config", default=None,
                        help="YAML config (model and validation data); None = the config stored in the checkpoint")
    parser.add_argument("--output-dir", default=None,
                        help="where eval_<weights name>.json goes; None = the config's output_dir")
    parser.add_argument("--set", nargs="*", default=[], action="extend", metavar="KEY=VALUE",
                        help="config overrides, e.g. data.val_json=other.json")
    parser.add_argument("--gt-box-iou", action="store_true",
                        help="also the masks predicted inside the GT boxes vs the GT masks (mean IoU and share at "
                             "IoU >= 0.75, in %%): mask quality without the detector; R-CNN models")
    return parser


def cli(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    metrics = evaluate(args.weights, args.config, args.set, args.output_dir, args.gt_box_iou)
    if metrics:  # rank 0
        print(format_metrics(metrics))
        print(json.dumps(metrics))
    return metrics


make_callable(__name__, "evaluate")  # pointsup.evaluate(weights, ...) runs `evaluate`

if __name__ == "__main__":
    cli()
