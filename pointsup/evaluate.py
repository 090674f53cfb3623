"""Evaluate a checkpoint on the validation set:

    python -m pointsup.evaluate --config C --weights W [--set key=value ...]
    torchrun --nproc_per_node=8 -m pointsup.evaluate --config C --weights W

Writes OUTPUT/eval_<weights name>.json, e.g. output/eval_model_final.json
({"bbox": {"AP", "AP50", ...}, "segm": {...}, "weights": W}, AP in percent) atomically,
where OUTPUT is cfg.output_dir (or --output-dir). Its own file: the training run's
metrics.json is never touched. The checkpoint is read with weights_only=True.
"""

from __future__ import annotations

import argparse
import json
import os

from pointsup.config import load_config
from pointsup.evaluation import evaluate_coco, format_metrics
from pointsup.utils import distributed as dist_utils
from pointsup.utils.io import atomic_write_json


def eval_output_path(output_dir: str, weights: str) -> str:
    """OUTPUT/eval_<weights file name without extension>.json."""
    return os.path.join(output_dir, f"eval_{os.path.splitext(os.path.basename(weights))[0]}.json")


def cli(argv: list[str] | None = None) -> dict:
    from pointsup.data.coco import CocoInstanceDataset
    from pointsup.data.transforms import build_test_transforms
    from pointsup.predict import load_model_for_inference
    from pointsup.train import prepare_synthetic_data, resolve_device

    parser = argparse.ArgumentParser(description="COCO box and mask AP of a checkpoint.")
    parser.add_argument("--config", default=None)
    parser.add_argument("--weights", required=True, help="a pointsup checkpoint (model_*.pth)")
    parser.add_argument("--output-dir", default=None, help="where eval_<weights name>.json goes (default: cfg.output_dir)")
    parser.add_argument("--set", nargs="*", default=[], action="extend", metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    cfg = load_config(args.config, args.set + ([f"output_dir={args.output_dir}"] if args.output_dir else []))
    device = resolve_device(cfg.device)
    dist_utils.init_distributed(device)
    try:
        val_json, val_images = cfg.data.val_json, cfg.data.val_images
        if not cfg.data.train_json:  # the built-in synthetic data set
            _, _, val_json, val_images = prepare_synthetic_data(cfg)
        dataset = CocoInstanceDataset(val_json, val_images, transforms=build_test_transforms(cfg.data),
                                      use_masks=False, use_points=False,
                                      allow_paths_outside_root=cfg.data.allow_paths_outside_image_root)
        if not cfg.model.num_classes:
            cfg.model.num_classes = dataset.num_classes
        model, _ = load_model_for_inference(cfg, args.weights, device)
        metrics = evaluate_coco(model, dataset, device=device, num_workers=cfg.data.num_workers)
        if dist_utils.is_main_process():
            path = eval_output_path(cfg.output_dir, args.weights)
            atomic_write_json(path, {**metrics, "weights": os.path.abspath(args.weights)}, indent=2)
            print(format_metrics(metrics))
            print(json.dumps(metrics))
            print(f"[pointsup] wrote {path}")
    finally:
        dist_utils.destroy_distributed()
    return metrics


if __name__ == "__main__":
    cli()
