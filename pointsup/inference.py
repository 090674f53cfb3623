"""Running a trained model on images: one module for every caller.

  `predict_batch`            resized images -> detections (the Predictor, one image at a time);
  `predict_dataset`          a data set's images in batches -> (batch, detections), used by
                             COCO evaluation (`pointsup.evaluation`) and the training-end
                             drawings (`pointsup.predict.visualize_dataset`);
  `predict_masks_for_boxes`  mask probabilities of given boxes (self-training's pseudo masks).

Images arrive as the data pipeline makes them: (3, h, w) float RGB 0..255, resized by the test
transforms; they are padded to a multiple of 32 as in training. Detections come back in the
resized frame, or in each image's original frame (`output_sizes`, `original_frame=True`).
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from pointsup.data.collate import collate, pad_images
from pointsup.structures import ImageBatch


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """model.eval() inside the block, its previous mode restored after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)


@torch.no_grad()
def predict_batch(model: nn.Module, images: Sequence[Tensor], device: torch.device | str,
                  output_sizes: list[tuple[int, int]] | None = None, amp_dtype: torch.dtype | None = None) -> list[dict]:
    """images: per image (3, h_i, w_i) float RGB 0..255 (already resized) -> per image a dict of
    pred_boxes (D, 4), pred_scores (D,), pred_classes (D,) [, pred_masks (D, H, W) bool] in the
    (h_i, w_i) frame, or in output_sizes[i] when given."""
    device = torch.device(device)
    image_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    with eval_mode(model), _autocast(device, amp_dtype):
        return model(pad_images(list(images)).to(device), image_sizes, output_sizes=output_sizes)


@torch.no_grad()
def predict_dataset(model: nn.Module, dataset: Dataset, device: torch.device | str, indices: Sequence[int],
                    batch_size: int = 1, num_workers: int = 0, amp_dtype: torch.dtype | None = None,
                    original_frame: bool = True, progress: str | None = None) -> Iterator[tuple[ImageBatch, list[dict]]]:
    """The items `indices` of `dataset` (test transforms applied) in batches ->
    (batch, detections per image), detections in each file's original frame (evaluation) or
    in the resized frame of batch.images (drawings). progress: a tqdm label, None = silent."""
    device = torch.device(device)
    loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=partial(collate, size_divisibility=32))
    with eval_mode(model):
        for batch in tqdm(loader, desc=progress, disable=progress is None, leave=False, dynamic_ncols=True):
            batch = batch.to(device)
            with _autocast(device, amp_dtype):
                detections = model(batch.images, batch.image_sizes,
                                   output_sizes=batch.orig_sizes if original_frame else None)
            yield batch, detections


@torch.no_grad()
def predict_masks_for_boxes(model: nn.Module, image: Tensor, boxes_xyxy: Tensor, classes: Tensor) -> Tensor:
    """Mask probabilities of given boxes: image (3, H, W) RGB 0..255, boxes (M, 4) in that
    image's frame, classes (M,) contiguous -> (M, S, S) on each box's grid (R-CNN models)."""
    if not (hasattr(model, "backbone") and hasattr(model, "roi_heads")):
        raise TypeError("self-training needs an R-CNN model (Mask R-CNN, PointRend or Implicit PointRend)")
    H, W = image.shape[-2:]
    padded = pad_images([image])  # (1, 3, H_pad, W_pad), as collate pads
    with eval_mode(model):
        # The model's own normalisation (channel order, mean/std, padding convention).
        features = model.backbone(model.normalize(padded, [(H, W)]))
        return model.roi_heads.mask_head(features, [boxes_xyxy], [classes])[0]
