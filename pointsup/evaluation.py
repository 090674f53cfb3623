"""COCO evaluation: box and mask AP through pycocotools, like detectron2's COCOEvaluator.

Inference runs on the (resized) test images; the model pastes its predictions into the
original image size (`output_sizes=orig_sizes`) so they are compared with the GT of the
JSON file in its own frame. Each prediction becomes one COCO result per instance:

    {"image_id", "category_id", "score", "bbox": [x, y, w, h], "segmentation": RLE}

In DDP every rank runs a shard of the images (rank r takes images r, r + W, ...) and the
results are gathered on rank 0, which runs COCOeval and returns the metrics; the other
ranks return an empty dict.

Mask AP mixes finding an object with segmenting it. Two measures separate them, for R-CNN
models: `gt_box_mask_ious` scores a model's mask for every GT box (no detector in the loop;
`pointsup.self_training.pseudo_label_coco` predicts them) by IoU with the GT mask, and
`mask_ap_on_detections` is the mask AP of one model's masks on another model's detections
(same boxes, classes and scores), so two mask heads can be compared with one detector.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor, nn
from torch.utils.data import Dataset

from pointsup.config import Config
from pointsup.data.coco import decode_segmentation, load_coco_json
from pointsup.self_training import pseudo_label_coco
from pointsup.utils import distributed as dist_utils

# COCOeval.stats order (after summarize()).
_METRIC_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def instances_to_coco_results(prediction: dict[str, Tensor], image_id: int, contiguous_to_category_id: list[int]) -> list[dict]:
    """One image's predictions (D instances, original-image frame) -> COCO result dicts."""
    boxes_xyxy = prediction["pred_boxes"].detach().float().cpu()  # (D, 4)
    scores = prediction["pred_scores"].detach().float().cpu().tolist()  # (D,)
    classes = prediction["pred_classes"].detach().cpu().tolist()  # (D,)
    boxes_xywh = boxes_xyxy.clone()
    boxes_xywh[:, 2:] -= boxes_xyxy[:, :2]
    rles: list[dict | None] = [None] * len(scores)
    if "pred_masks" in prediction and len(scores) > 0:
        masks = prediction["pred_masks"].detach().cpu().numpy().astype(np.uint8)  # (D, H, W)
        # pycocotools wants a Fortran-ordered (H, W, D) uint8 array.
        rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
        for rle in rles:
            rle["counts"] = rle["counts"].decode("ascii")  # bytes are not JSON-serialisable
    results = []
    for box, score, cls, rle in zip(boxes_xywh.tolist(), scores, classes, rles):
        result = {"image_id": image_id, "category_id": contiguous_to_category_id[cls], "bbox": box, "score": score}
        if rle is not None:
            result["segmentation"] = rle
        results.append(result)
    return results


def gt_has_masks(coco_gt: COCO) -> bool:
    anns = coco_gt.dataset.get("annotations", [])
    return len(anns) > 0 and all("segmentation" in a and a["segmentation"] for a in anns)


def coco_eval(coco_gt: COCO, results: list[dict], iou_type: str, image_ids: list[int]) -> dict[str, float]:
    """Run COCOeval for "bbox" or "segm"; AP in percent (None where COCO gives -1)."""
    if not results:  # loadRes cannot take an empty list; no detections means AP 0.
        return {name: 0.0 for name in _METRIC_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints a lot
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: (float(v) * 100 if v >= 0 else None) for name, v in zip(_METRIC_NAMES, evaluator.stats)}


def run_inference(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 1,
                  num_workers: int = 0, amp_dtype: torch.dtype | None = None, num_images: int = 0,
                  progress: bool = True) -> list[dict]:
    """COCO results for this rank's shard of `dataset` (needs `contiguous_to_category_id`);
    only its first `num_images` images when that is > 0. A progress bar on rank 0."""
    from pointsup.inference import predict_dataset

    rank, world_size = dist_utils.get_rank(), dist_utils.get_world_size()
    total = min(num_images, len(dataset)) if num_images > 0 else len(dataset)
    results = []
    for batch, detections in predict_dataset(model, dataset, device, range(rank, total, world_size), batch_size,
                                             num_workers, amp_dtype, progress="eval" if progress and rank == 0 else None):
        for prediction, image_id in zip(detections, batch.image_ids):
            results += instances_to_coco_results(prediction, image_id, dataset.contiguous_to_category_id)
    return results


def evaluate_coco(model: nn.Module, dataset: Dataset, gt_json: str | None = None, device: torch.device | str = "cpu",
                  batch_size: int = 1, num_workers: int = 0, amp_dtype: torch.dtype | None = None,
                  results_path: str | None = None, num_images: int = 0) -> dict[str, Any]:
    """Box (and mask) AP of `model` on `dataset`, whose GT is `gt_json` (default: dataset.json_path).

    num_images > 0 evaluates the first `num_images` images only (a fixed subset, e.g. for the
    periodic evaluations during training); 0 evaluates all.

    Returns {"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl"}, "segm": {...}} on rank 0
    ({} on other ranks). "segm" is left out, with a warning, when the GT has no masks.
    """
    device = torch.device(device)
    # `model` may be DDP-wrapped: evaluate the bare module so ranks need not run in lockstep.
    model = model.module if hasattr(model, "module") else model
    results = run_inference(model, dataset, device, batch_size, num_workers, amp_dtype, num_images)
    gathered = dist_utils.gather_objects(results)
    if gathered is None:
        return {}
    results = [r for rank_results in gathered for r in rank_results]
    if results_path:
        from pointsup.utils.io import atomic_write_json

        atomic_write_json(results_path, results)

    gt_json = gt_json or getattr(dataset, "json_path", None)
    if gt_json is None:
        raise ValueError("evaluate_coco needs gt_json (the dataset has no json_path attribute)")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt_json)
    image_ids = list(dataset.image_ids)
    if num_images > 0:
        image_ids = image_ids[:num_images]  # the images run_inference ran on
    metrics = {"bbox": coco_eval(coco_gt, results, "bbox", image_ids)}
    if gt_has_masks(coco_gt):
        metrics["segm"] = coco_eval(coco_gt, results, "segm", image_ids)
    else:
        warnings.warn(f"{gt_json} has no masks: reporting box AP only")
    return metrics


def format_metrics(metrics: dict[str, Any]) -> str:
    """One line per task, e.g. 'segm: AP 35.2  AP50 56.1  AP75 37.4'."""
    lines = []
    for task, values in metrics.items():
        if isinstance(values, dict):
            parts = [f"{k} {v:.2f}" if isinstance(v, float) else f"{k} -" for k, v in values.items()]
            lines.append(f"{task}: " + "  ".join(parts))
    return "\n".join(lines)


def gt_box_mask_ious(predicted: dict | None, ground_truth: dict) -> np.ndarray:
    """IoU of every non-crowd GT instance's mask with the mask predicted for its GT box.

    predicted: COCO dict with the same annotation ids, each with an RLE `segmentation` (what
    `pseudo_label_coco` writes); None: the filled GT box itself, the baseline a mask head has
    to beat. Instances whose box has no area are left out (no mask is predicted for them).
    """
    image_sizes = {info["id"]: (info["height"], info["width"]) for info in ground_truth["images"]}
    predicted_by_id = {a["id"]: a for a in predicted["annotations"]} if predicted is not None else {}
    ious = []
    for gt in ground_truth["annotations"]:
        x, y, w, h = gt["bbox"]
        if gt.get("iscrowd", 0) or w <= 0 or h <= 0:
            continue
        H, W = image_sizes[gt["image_id"]]
        gt_rle = mask_util.encode(np.asfortranarray(decode_segmentation(gt["segmentation"], (H, W), "GT", gt["id"]).astype(np.uint8)))
        if predicted is None:
            other = mask_util.frPyObjects(np.array([[x, y, w, h]], dtype=np.float64), H, W)[0]
        else:
            segmentation = predicted_by_id[gt["id"]]["segmentation"]
            counts = segmentation["counts"]
            other = {"size": segmentation["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        ious.append(float(mask_util.iou([other], [gt_rle], [0])[0, 0]))
    return np.asarray(ious, dtype=np.float64)


def gt_box_mask_quality(model: nn.Module, val_json: str, val_images: str, cfg: Config,
                        device: torch.device | str = "cpu") -> dict[str, float]:
    """The masks an R-CNN `model` predicts inside the GT boxes of `val_json`, against the GT
    masks: {"mean_iou", "iou75", "instances"} (mean IoU and the share of instances at IoU
    >= 0.75, in percent)."""
    ground_truth = load_coco_json(val_json)
    with torch.inference_mode():
        predicted = pseudo_label_coco(model, ground_truth, val_images, cfg, device, progress=False)
    ious = gt_box_mask_ious(predicted, ground_truth)
    return {"mean_iou": 100 * float(ious.mean()), "iou75": 100 * float((ious >= 0.75).mean()), "instances": float(len(ious))}


def mask_ap_on_detections(mask_model: nn.Module, detector: nn.Module, dataset: Dataset,
                          device: torch.device | str = "cpu") -> dict[str, float]:
    """COCO mask AP of `mask_model`'s masks for `detector`'s detections on `dataset` (both
    R-CNN models on the same inputs): the detector's boxes, classes and scores, each box's
    mask from `mask_model` (its own backbone features, `predict_masks_for_boxes`), pasted
    as the model pastes its own. Single process; returns the "segm" metrics."""
    from pointsup.inference import predict_dataset, predict_masks_for_boxes
    from pointsup.models.postprocess import rescale_detections

    device = torch.device(device)
    results = []
    for batch, detections in predict_dataset(detector, dataset, device, range(len(dataset)), original_frame=False):
        for i, detection in enumerate(detections):
            (h, w), image_id = batch.image_sizes[i], batch.image_ids[i]
            boxes_xyxy, classes = detection["pred_boxes"], detection["pred_classes"]  # (D, 4) resized frame, (D,)
            probs = predict_masks_for_boxes(mask_model, batch.images[i, :, :h, :w], boxes_xyxy, classes)  # (D, S, S)
            prediction = rescale_detections(
                {"pred_boxes": boxes_xyxy, "pred_scores": detection["pred_scores"], "pred_classes": classes,
                 "pred_mask_probs": probs}, (h, w), batch.orig_sizes[i], mask_model.mask_threshold, mask_model.mask_paste)
            results += instances_to_coco_results(prediction, image_id, dataset.contiguous_to_category_id)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(dataset.json_path)
    return coco_eval(coco_gt, results, "segm", list(dataset.image_ids))
