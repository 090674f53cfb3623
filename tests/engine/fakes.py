"""Tiny stand-ins for the engine tests: a COCO data set on disk and models obeying the contract.

Model contract (docs/DESIGN.md): train mode -> dict of scalar losses; eval mode -> one dict
per image with pred_boxes (D, 4) xyxy, pred_scores (D,), pred_classes (D,), pred_masks (D, H, W).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from pointsup.config import Config

CATEGORY_IDS = [3, 7]  # non-contiguous on purpose: tests the contiguous -> COCO id mapping


def make_tiny_coco(root: str, num_images: int = 4, size: int = 64, seed: int = 0, with_points: bool = True) -> str:
    """Write `num_images` PNGs plus an instances JSON (RLE masks, optional points); return its path.

    The background of image i has the constant grey value 10 * i + 20, so a model can tell
    from pixel (0, 0) which image it looks at (the oracle model uses that). Objects are kept
    away from the top-left corner.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        image_id = 100 + i
        pixels = np.full((size, size, 3), 10 * i + 20, dtype=np.uint8)
        for k in range(2):
            x0, y0 = rng.integers(8, size // 2, size=2)
            w, h = rng.integers(8, size // 2 - 2, size=2)
            mask = np.zeros((size, size), dtype=np.uint8)
            if k == 0:
                mask[y0 : y0 + h, x0 : x0 + w] = 1  # rectangle
            else:
                yy, xx = np.mgrid[:size, :size]
                mask[((xx - x0 - w / 2) / (w / 2)) ** 2 + ((yy - y0 - h / 2) / (h / 2)) ** 2 <= 1] = 1  # ellipse
            pixels[mask.astype(bool)] = rng.integers(100, 255, size=3, dtype=np.uint8)
            rle = mask_util.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode("ascii")
            x, y, bw, bh = mask_util.toBbox(rle).tolist()
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": CATEGORY_IDS[k],
                   "bbox": [x, y, bw, bh], "area": float(mask.sum()), "iscrowd": 0, "segmentation": rle}
            if with_points:
                xs = rng.uniform(x, x + bw, size=6)
                ys = rng.uniform(y, y + bh, size=6)
                ann["point_coords"] = [[float(a), float(b)] for a, b in zip(xs, ys)]
                ann["point_labels"] = [int(mask[int(b), int(a)]) for a, b in zip(xs, ys)]
            annotations.append(ann)
        file_name = f"{image_id}.png"
        Image.fromarray(pixels).save(os.path.join(root, "images", file_name))
        images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": f"class{c}"} for c in CATEGORY_IDS]}
    path = os.path.join(root, "instances.json")
    with open(path, "w") as f:
        json.dump(coco, f)
    return path


class TinyDetector(nn.Module):
    """A few parameters, no batch-dependent norm; per-image losses averaged over the batch.

    Losses: a box regression of the image's mean GT box and a classification of its first
    GT class, from globally pooled conv features; `dropout` adds torch-RNG use (for the
    resume test). Eval: one detection per image, the predicted box filled as its mask.
    """

    def __init__(self, num_classes: int = 2, dropout: float = 0.0, nan_at_call: int = -1):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.box = nn.Linear(8, 4)
        self.cls = nn.Linear(8, num_classes)
        self.dropout = dropout
        self.nan_at_call, self.calls = nan_at_call, 0
        self.register_buffer("pixel_mean", torch.tensor([120.0, 120.0, 120.0]).view(3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor([60.0, 60.0, 60.0]).view(3, 1, 1))

    def features(self, image: Tensor) -> Tensor:
        x = (image - self.pixel_mean) / self.pixel_std  # (3, H, W)
        f = F.relu(self.conv(x[None])).mean(dim=(2, 3))[0]  # (8,)
        return F.dropout(f, self.dropout, self.training)

    def forward(self, images, image_sizes, targets=None, output_sizes=None):
        feats = [self.features(images[i, :, :H, :W]) for i, (H, W) in enumerate(image_sizes)]
        if self.training:
            self.calls += 1
            box_losses, cls_losses = [], []
            for f, (H, W), t in zip(feats, image_sizes, targets):
                scale = torch.tensor([W, H, W, H], dtype=torch.float32)
                gt_box = t.boxes.mean(0) / scale if len(t) else torch.zeros(4)
                gt_cls = t.classes[:1] if len(t) else torch.zeros(1, dtype=torch.int64)
                box_losses.append(F.smooth_l1_loss(self.box(f), gt_box))
                cls_losses.append(F.cross_entropy(self.cls(f)[None], gt_cls))
            loss_box = torch.stack(box_losses).mean()
            if self.calls == self.nan_at_call:
                loss_box = loss_box * float("nan")
            return {"loss_box": loss_box, "loss_cls": torch.stack(cls_losses).mean()}
        output_sizes = output_sizes or image_sizes
        results = []
        for f, (H, W), (oh, ow) in zip(feats, image_sizes, output_sizes):
            box = (self.box(f).sigmoid().sort().values * torch.tensor([ow, oh, ow, oh])).clamp(min=0)
            box = torch.stack([box[0], box[1], box[2].clamp(min=box[0] + 1), box[3].clamp(min=box[1] + 1)])
            mask = torch.zeros(oh, ow, dtype=torch.bool)
            x0, y0, x1, y1 = box.round().long().tolist()
            mask[y0:y1, x0:x1] = True
            results.append({"pred_boxes": box[None], "pred_scores": self.cls(f).softmax(0).max()[None],
                            "pred_classes": self.cls(f).argmax()[None], "pred_masks": mask[None]})
        return results


class OracleModel(nn.Module):
    """Eval-only: returns the GT of each image (from the JSON), identified by pixel (0, 0)."""

    def __init__(self, json_path: str, contiguous_to_category_id: list[int], empty: bool = False):
        super().__init__()
        with open(json_path) as f:
            coco = json.load(f)
        self.anns = {img["id"]: [a for a in coco["annotations"] if a["image_id"] == img["id"]] for img in coco["images"]}
        self.id_of_value = {10 * (img["id"] - 100) + 20: img["id"] for img in coco["images"]}
        self.category_to_contiguous = {c: k for k, c in enumerate(contiguous_to_category_id)}
        self.empty = empty
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, images, image_sizes, targets=None, output_sizes=None):
        results = []
        for i, (oh, ow) in enumerate(output_sizes or image_sizes):
            anns = [] if self.empty else self.anns[self.id_of_value[int(images[i, 0, 0, 0].round())]]
            boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
            masks = torch.from_numpy(np.stack([mask_util.decode(a["segmentation"]) for a in anns])
                                     if anns else np.zeros((0, oh, ow))).bool()
            results.append({"pred_boxes": boxes.float(), "pred_scores": torch.ones(len(anns)),
                            "pred_classes": torch.tensor([self.category_to_contiguous[a["category_id"]] for a in anns],
                                                         dtype=torch.int64),
                            "pred_masks": masks})
        return results


def tiny_config(out_dir: str, **solver) -> Config:
    """A CPU config for the fake model: tiny images, no workers, log every step."""
    cfg = Config()
    cfg.output_dir = out_dir
    cfg.device = "cpu"
    cfg.deterministic = True
    cfg.data.num_workers = 0
    cfg.data.min_size_train, cfg.data.max_size_train = [64], 64
    cfg.data.min_size_test, cfg.data.max_size_test = 64, 64
    cfg.log_period, cfg.checkpoint_period, cfg.eval_period, cfg.num_vis = 1, 1000, 0, 0
    cfg.solver.ims_per_batch, cfg.solver.max_iter, cfg.solver.warmup_iters = 2, 4, 2
    cfg.solver.steps, cfg.solver.base_lr = [3], 0.1
    for k, v in solver.items():
        setattr(cfg.solver, k, v)
    return cfg
