"""Self-training with points (paper sec. 3.3.2): pseudo masks from GT boxes, then retrain.

    # 1. a model trained with point supervision (e.g. the default job) predicts a mask for
    #    every GT box of the training set (no RPN: the boxes and classes are the GT ones)
    python -m pointsup.self_training --config output/config.yaml --weights output/model_final.pth \
        --output output/pseudo_masks.json
    # 2. retrain on the pseudo masks with the ordinary full-mask recipe, into a new folder;
    #    step 1 prints this command with the data paths of its config filled in
    python -m pointsup.train --config output/config.yaml --output-dir output/self_training --set \
        data.train_json=output/pseudo_masks.json data.train_images=IMAGES \
        data.val_json=VAL_JSON data.val_images=VAL_IMAGES model.mask_head.supervision=masks

The pseudo-label JSON is the input JSON with a `segmentation` (RLE, original image size)
added to every non-crowd annotation with a valid box; everything else (boxes, categories,
points) is kept, so the file can also be used for point supervision again. Crowd and
zero-area annotations are copied unchanged (they are never trained on).

Only the R-CNN family (Mask R-CNN, PointRend, Implicit PointRend) is supported: its mask
head predicts a mask for any given box. Shape letters: M GT boxes of one image, S mask side.
"""

from __future__ import annotations

import argparse
import copy
import os

import numpy as np
import pycocotools.mask as mask_util
import torch
from torch import nn
from tqdm import tqdm

from pointsup.config import Config, load_config
from pointsup.data.coco import load_coco_json, load_image_rgb, resolve_image_path
from pointsup.inference import predict_masks_for_boxes
from pointsup.data.transforms import build_test_transforms
from pointsup.models.postprocess import paste_masks_in_image
from pointsup.structures import InstanceTargets
from pointsup.utils.io import atomic_write_json


def pseudo_label_coco(model: nn.Module, coco: dict, image_dir: str, cfg: Config, device: torch.device | str = "cpu",
                      threshold: float = 0.5, progress: bool = True) -> dict:
    """Return a copy of `coco` whose valid non-crowd annotations carry predicted RLE masks."""
    model.eval().to(device)
    category_ids = sorted(c["id"] for c in coco["categories"])
    contiguous = {cat_id: k for k, cat_id in enumerate(category_ids)}  # as CocoInstanceDataset
    resize = build_test_transforms(cfg.data)
    out = copy.deepcopy(coco)
    anns_per_image: dict[int, list[dict]] = {}
    for ann in out["annotations"]:
        anns_per_image.setdefault(ann["image_id"], []).append(ann)

    for info in tqdm(out["images"], desc="pseudo masks", disable=not progress):
        anns = [a for a in anns_per_image.get(info["id"], []) if not a.get("iscrowd", 0)
                and len(a.get("bbox", [])) == 4 and a["bbox"][2] > 0 and a["bbox"][3] > 0]
        if not anns:
            continue
        try:
            path = resolve_image_path(image_dir, info["file_name"], cfg.data.allow_paths_outside_image_root)
        except ValueError as e:
            raise ValueError(f"image id {info['id']}: {e}") from None
        rgb = load_image_rgb(path, info["id"])  # (H, W, 3)
        H, W = rgb.shape[:2]
        boxes_orig = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=torch.float32)
        classes = torch.tensor([contiguous[a["category_id"]] for a in anns])
        image = torch.from_numpy(rgb.copy()).permute(2, 0, 1)  # (3, H, W) uint8
        # The model sees the image at its test resolution; GT boxes move with it.
        image, targets = resize(image, InstanceTargets(boxes=boxes_orig.clone(), classes=classes, image_size=(H, W)))
        probs = predict_masks_for_boxes(model, image.float().to(device), targets.boxes.to(device), classes.to(device))
        # Paste at the original resolution, in the original boxes.
        masks = paste_masks_in_image(probs.float(), boxes_orig.to(device), (H, W), threshold).cpu().numpy()  # (M, H, W)
        rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
        for ann, rle in zip(anns, rles):
            ann["segmentation"] = {"size": [H, W], "counts": rle["counts"].decode("ascii")}
            ann["area"] = float(mask_util.area(rle))
    return out


def cli(argv: list[str] | None = None) -> str:
    from pointsup.data.builtin import data_paths
    from pointsup.predictor import load_model_for_inference
    from pointsup.utils.distributed import resolve_device

    parser = argparse.ArgumentParser(prog="python -m pointsup.self_training",
                                     description="Pseudo masks for the training set from GT boxes (self-training).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML config the model was trained with; None = the defaults")
    parser.add_argument("--weights", required=True, default=argparse.SUPPRESS, help="a pointsup checkpoint of an R-CNN model")
    parser.add_argument("--output", required=True, default=argparse.SUPPRESS, help="the pseudo-mask COCO JSON to write")
    parser.add_argument("--input", default=None, help="COCO JSON with the GT boxes; None = data.train_json")
    parser.add_argument("--images", default=None, help="image folder; None = data.train_images")
    parser.add_argument("--set", nargs="*", default=[], action="extend", metavar="KEY=VALUE",
                        help="config overrides, e.g. data.min_size_test=800")
    args = parser.parse_args(argv)

    cfg = load_config(args.config, args.set)
    json_path, image_dir = args.input or cfg.data.train_json, args.images or cfg.data.train_images
    val_json, val_images = cfg.data.val_json, cfg.data.val_images
    if not json_path:  # the built-in synthetic data set (created on first use)
        paths = data_paths(cfg)
        json_path = paths.train_points_json if cfg.model.mask_head.supervision == "points" else paths.train_json
        image_dir, val_json, val_images = paths.train_images, paths.val_json, paths.val_images
    if os.path.realpath(args.output) in (os.path.realpath(json_path), os.path.realpath(args.weights)):
        raise ValueError(f"--output {args.output} would replace an input; choose another file name")
    device = resolve_device(cfg.device)
    model, _ = load_model_for_inference(cfg, args.weights, device)
    coco = pseudo_label_coco(model, load_coco_json(json_path), image_dir, cfg, device)
    atomic_write_json(args.output, coco)
    print(f"[pointsup] wrote pseudo masks for {json_path} to {args.output}")
    print("[pointsup] retrain on them with:\n" + retrain_command(args.config, args.output, image_dir, val_json, val_images))
    return args.output


def retrain_command(config: str | None, pseudo_json: str, image_dir: str, val_json: str, val_images: str) -> str:
    """The `pointsup.train` command that retrains on the pseudo masks (into a new folder)."""
    parts = ["python -m pointsup.train"] + ([f"--config {config}"] if config else [])
    parts += [f"--output-dir {os.path.join(os.path.dirname(pseudo_json) or '.', 'self_training')} --set",
              f"data.train_json={pseudo_json} data.train_images={image_dir}",
              f"data.val_json={val_json} data.val_images={val_images} model.mask_head.supervision=masks"]
    return " \\\n    ".join(parts)


if __name__ == "__main__":
    cli()
