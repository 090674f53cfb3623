"""Mask quality given the box: trained R-CNN models predict a mask inside every GT box of the
val set (no detector in the loop) and each mask is compared with its GT mask by IoU.

Mask AP mixes two things: finding the object (the detector) and its mask once found. The
point-supervision claims are about the second; on a small, from-scratch scale the dense mask
loss also trains the shared backbone, so a point-supervised model can lose mask AP through its
detector too. This script measures the mask alone, for every finished run of a study folder
written by `python -m pointsup.experiments` (`<study>/<label>/seed<k>/` with config.yaml and
model_final.pth), and tabulates mean ± sample std over seeds with the P10 / masks ratio paired
by seed (the same pairing as the harness's report):

    python scripts/gt_box_mask_iou.py --runs experiments/supervision --output gt_box_mask_iou.md

The val set is the one each run was evaluated on (its config.yaml; relative paths are read
from --data-root). CondInst is skipped: it predicts masks for its own detections only.
Shape letters: M GT instances of one image.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys

import numpy as np
import pycocotools.mask as mask_util
import torch

from pointsup import experiments
from pointsup.config import load_config
from pointsup.data.coco import decode_segmentation, load_coco_json
from pointsup.predictor import load_model_for_inference
from pointsup.self_training import pseudo_label_coco
from pointsup.utils.io import atomic_write_text


def instance_ious(predicted: dict | None, ground_truth: dict) -> np.ndarray:
    """IoU of each predicted mask with the GT mask of the same annotation (matched by id);
    predicted None: of the GT box itself, filled (the baseline a mask head has to beat)."""
    images = {info["id"]: (info["height"], info["width"]) for info in ground_truth["images"]}
    predicted_by_id = {a["id"]: a for a in predicted["annotations"]} if predicted is not None else {}
    ious = []
    for gt in ground_truth["annotations"]:
        x, y, w, h = gt["bbox"]
        if gt.get("iscrowd", 0) or w <= 0 or h <= 0:
            continue  # pseudo_label_coco predicts no mask for these
        H, W = images[gt["image_id"]]
        gt_mask = decode_segmentation(gt["segmentation"], (H, W), "val json", gt["id"])
        gt_rle = mask_util.encode(np.asfortranarray(gt_mask.astype(np.uint8)))
        if predicted is None:
            other = mask_util.frPyObjects(np.array([[x, y, w, h]], dtype=np.float64), H, W)[0]  # the box as an RLE
        else:
            segmentation = predicted_by_id[gt["id"]]["segmentation"]
            other = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
        ious.append(float(mask_util.iou([other], [gt_rle], [0])[0, 0]))
    return np.asarray(ious)


def measure_run(folder: str, data_root: str) -> dict:
    """{"miou", "iou75", "instances", "segm", "bbox", "val_json"} of the run in `folder`."""
    cfg = load_config(os.path.join(folder, "config.yaml"))
    val_json = os.path.join(data_root, cfg.data.val_json)
    val_images = os.path.join(data_root, cfg.data.val_images)
    model, _ = load_model_for_inference(cfg, os.path.join(folder, "model_final.pth"), torch.device("cpu"))
    ground_truth = load_coco_json(val_json)
    with torch.inference_mode():
        predicted = pseudo_label_coco(model, ground_truth, val_images, cfg, progress=False)
    ious = instance_ious(predicted, ground_truth)
    with open(os.path.join(folder, "metrics.json")) as f:
        metrics = json.load(f)
    return {"miou": 100 * ious.mean(), "iou75": 100 * (ious >= 0.75).mean(), "instances": len(ious),
            "segm": metrics["segm"]["AP"], "bbox": metrics["bbox"]["AP"], "val_json": val_json}


def find_runs(study_folder: str) -> dict[str, dict[int, str]]:
    """{label: {seed: folder}} of the finished R-CNN runs below a study folder."""
    runs: dict[str, dict[int, str]] = {}
    labels = [name for name in sorted(os.listdir(study_folder)) if os.path.isdir(os.path.join(study_folder, name))]
    for label in labels:
        for name in sorted(os.listdir(os.path.join(study_folder, label))):
            folder = os.path.join(study_folder, label, name)
            if not (name.startswith("seed") and os.path.exists(os.path.join(folder, "model_final.pth"))
                    and experiments.finished_metrics(folder) is not None):
                continue
            if load_config(os.path.join(folder, "config.yaml")).model.meta_architecture == "condinst":
                continue
            runs.setdefault(label, {})[int(name[len("seed"):])] = folder
    return runs


def reference_label(label: str) -> str:
    """The full-mask row of the same model: "Mask_R-CNN_P10+aug" -> "Mask_R-CNN_masks"."""
    return label.rsplit("_", 1)[0] + "_masks"


def iou_table(results: dict[str, dict[int, dict]], box_ious: np.ndarray, reference: str | None = None) -> str:
    """Markdown: per run label, mean ± std over seeds of the mean IoU and of the share of
    instances at IoU ≥ 0.75, each with its ratio to the full-mask row of the same model
    (`reference_label`) or to the row `reference` (paired by seed)."""
    lines = ["| run | mean mask IoU in GT boxes | per seed | ratio to masks | IoU ≥ 0.75 (% of instances) | ratio to masks | "
             "mask AP | box AP | seeds |", "|---|---|---|---|---|---|---|---|---|",
             f"| GT box as the mask (no model) | {100 * box_ious.mean():.1f} | | | {100 * (box_ious >= 0.75).mean():.1f} "
             f"| | | | |"]
    for label, by_seed in results.items():
        reference_row = reference or reference_label(label)
        reference_runs = results.get(reference_row, {})

        def column(key: str) -> str:
            return experiments.fmt(*experiments.mean_std([r[key] for r in by_seed.values()]))

        def ratio(key: str) -> str:
            if label == reference_row:
                return ""
            pairs = [r[key] / reference_runs[seed][key] for seed, r in by_seed.items() if seed in reference_runs]
            return experiments.fmt(*experiments.mean_std(pairs), digits=2)

        per_seed = " / ".join(f"{by_seed[seed]['miou']:.1f}" for seed in sorted(by_seed))
        lines.append(f"| {label.replace('_', ' ')} | {column('miou')} | {per_seed} | {ratio('miou')} | {column('iou75')} | "
                     f"{ratio('iou75')} | {column('segm')} | {column('bbox')} | {len(by_seed)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True,
                        help="study folders of the harness, e.g. experiments/supervision experiments/num_points")
    parser.add_argument("--labels", nargs="+", default=None,
                        help="only these run labels (folder names), as rows in this order; None: all, sorted")
    parser.add_argument("--reference", default=None,
                        help="the row every ratio is taken to; None: each model's own '<model>_masks' row")
    parser.add_argument("--data-root", default=".", help="folder the runs' relative data paths start from")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--output", default="", help="also write the table (and the command) to this markdown file")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    found = {label: by_seed for folder in args.runs for label, by_seed in find_runs(folder).items()}
    missing = [label for label in args.labels or [] if label not in found]
    if missing:
        raise SystemExit(f"no finished R-CNN run labelled {missing} below {args.runs}; found {sorted(found)}")
    results: dict[str, dict[int, dict]] = {}
    for label in args.labels or sorted(found):
        for seed, folder in sorted(found[label].items()):
            results.setdefault(label, {})[seed] = measure_run(folder, args.data_root)
            r = results[label][seed]
            print(f"{label} seed {seed}: mean IoU {r['miou']:.1f} over {r['instances']} instances", flush=True)
    if not results:
        raise SystemExit(f"no finished R-CNN run below {args.runs}")
    val_jsons = {r["val_json"] for by_seed in results.values() for r in by_seed.values()}
    if len(val_jsons) != 1:
        raise SystemExit(f"the runs below {args.runs} were evaluated on different val sets: {sorted(val_jsons)}")
    table = iou_table(results, instance_ious(None, load_coco_json(val_jsons.pop())), args.reference)
    print(table)
    if args.output:
        command = "python scripts/gt_box_mask_iou.py " + shlex.join(argv if argv is not None else sys.argv[1:])
        atomic_write_text(args.output, f"# Mask quality in GT boxes\n\n- command: `{command}`\n- mean ± sample std over "
                          f"seeds; ratio paired by seed; mask AP and box AP are the runs' own evaluations\n\n{table}\n")


if __name__ == "__main__":
    main()
