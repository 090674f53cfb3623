"""Inference from Python: a trained checkpoint in, typed detections out.

    predictor = pointsup.Predictor("output/model_final.pth")   # config and class names from the file
    prediction = predictor("photo.jpg")                          # or a PIL image, numpy array, tensor
    prediction.draw().save("photo_pred.png")                     # masks, boxes, names, scores
    results = prediction.to_coco(image_id=1)                     # COCO results, RLE masks

Shape letters: D detections, K classes, H x W the *input* image. Every output is in the
frame of the image as given (the model runs on a resized copy and pastes its boxes and
masks back, as COCO evaluation does).

A checkpoint written by `pointsup.train` stores its resolved config, the class names and
the data set's category ids; `Predictor` needs nothing else. An explicit config (a path or
a `Config`) replaces the stored one, e.g. for a bare state dict. Files are read with
`torch.load(weights_only=True)`: a checkpoint that would run code is refused.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass, field
from typing import Union

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image
from torch import Tensor, nn

from pointsup.config import Config, apply_overrides, config_from_dict, load_config, validate_config

# What a Predictor accepts as an image: a file path, a PIL image, an (H, W, 3) uint8 RGB
# array, or a (3, H, W) RGB tensor (uint8, or float on pointsup's 0..255 scale).
ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, Tensor]


# ----------------------------------------------------------------------------------------
# A model from a checkpoint
# ----------------------------------------------------------------------------------------


def config_for_checkpoint(state: dict, weights: str, cfg: Config | str | None = None,
                          overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The config to rebuild the model of a loaded checkpoint `state`: `cfg` when given (a
    Config, or a YAML path loaded with `overrides`), else the one stored in the checkpoint,
    else the defaults; `overrides` ("a.b=value") are applied last."""
    if isinstance(cfg, Config):  # a copy: the caller's Config stays as it was
        return validate_config(apply_overrides(copy.deepcopy(cfg), list(overrides)))
    if cfg is not None or not isinstance(state.get("config"), dict):
        return load_config(cfg, overrides)
    stored = config_from_dict(state["config"], source=f"the config stored in {weights}")
    return validate_config(apply_overrides(stored, list(overrides)), f"{weights} + --set")


def load_model_and_categories(cfg: Config, weights: str | dict, device: torch.device
                              ) -> tuple[nn.Module, list[str], list[int]]:
    """Build the model of `cfg` and load a pointsup checkpoint (a path, or one already read
    with `load_checkpoint`) into it, in eval mode on `device`.

    Returns (model, class names, the data set's category id of each class); the ids are
    empty when the checkpoint predates storing them. A path is read with weights_only=True.
    """
    from pointsup.checkpoint import CheckpointError, load_checkpoint
    from pointsup.models import build_model

    name = weights if isinstance(weights, str) else "the checkpoint"
    state = load_checkpoint(weights) if isinstance(weights, str) else weights
    class_names = state.get("class_names")
    num_classes = cfg.model.num_classes or (len(class_names) if class_names else 0)
    if num_classes == 0:
        raise ValueError(f"{name} does not store class names: set model.num_classes")
    model = build_model(cfg, num_classes)
    weights_dict = state["model"] if "model" in state else state
    try:
        model.load_state_dict(weights_dict)
    except RuntimeError as e:
        raise CheckpointError(f"{name} does not fit the configured model: {e}") from None
    class_names = class_names or [str(k) for k in range(num_classes)]
    return model.to(device).eval(), class_names, list(state.get("category_ids") or [])


def load_model_for_inference(cfg: Config, weights: str, device: torch.device) -> tuple[nn.Module, list[str]]:
    """As `load_model_and_categories`, without the category ids: (model, class names)."""
    model, class_names, _ = load_model_and_categories(cfg, weights, device)
    return model, class_names


# ----------------------------------------------------------------------------------------
# Images in, detections out
# ----------------------------------------------------------------------------------------


def image_to_uint8_hwc(image: ImageLike) -> np.ndarray:
    """Any `ImageLike` -> (H, W, 3) uint8 RGB; a clear ValueError for anything else."""
    from pointsup.data.coco import load_image_rgb

    if isinstance(image, (str, os.PathLike)):
        return load_image_rgb(os.fspath(image))  # 16-bit images scaled, corrupt files named
    if isinstance(image, Image.Image):
        if image.mode.startswith("I;16"):  # as load_image_rgb: 65535 -> 255, not clipped
            gray8 = np.clip(np.round(np.asarray(image).astype(np.float32) / 257.0), 0, 255).astype(np.uint8)
            return np.repeat(gray8[:, :, None], 3, axis=2)
        if image.mode in ("I", "F"):
            raise ValueError(f"PIL mode {image.mode} has no known value range; convert the image to 8-bit RGB")
        return np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"a numpy image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        return image
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"a tensor image must be (3, H, W) RGB, got shape {tuple(image.shape)}")
        if image.is_floating_point():
            if 0 < image.max() <= 1:  # torchvision's [0, 1] convention would look almost black
                warnings.warn("the float image tensor is within [0, 1]; pointsup expects 0..255 (multiply by 255)",
                              stacklevel=3)
            image = image.round().clamp(0, 255)
        return image.detach().to("cpu", torch.uint8).permute(1, 2, 0).numpy()
    raise ValueError(f"cannot read an image from {type(image).__name__}: pass a path, PIL image, "
                     f"(H, W, 3) uint8 array or (3, H, W) tensor")


@dataclass
class Prediction:
    """The detections of one image, in that image's pixel frame.

    boxes_xyxy:   (D, 4) float, (x0, y0, x1, y1) pixels.
    scores:       (D,) float in [0, 1].
    classes:      (D,) int64, contiguous class index in 0..K-1.
    class_names:  D names, the class of each detection.
    masks:        (D, H, W) bool, or None for a box-only model.
    category_ids: D ids of the data set the model was trained on (its JSON's category_id;
                  the class index when the checkpoint does not store them).
    image:        (H, W, 3) uint8 RGB, the input (what `draw` draws on).
    """

    boxes_xyxy: Tensor
    scores: Tensor
    classes: Tensor
    class_names: list[str]
    masks: Tensor | None
    category_ids: list[int] = field(repr=False)
    image: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.scores)

    def to_coco(self, image_id: int, file_name: str | None = None) -> list[dict]:
        """COCO results, one per detection: image_id, category_id, category_name, bbox
        [x, y, w, h], score, and segmentation as RLE (counts a str, so it is JSON-ready;
        `pycocotools.mask.decode` reads it back). file_name is added when given."""
        rles: list[dict | None] = [None] * len(self)
        if self.masks is not None and len(self) > 0:
            masks = self.masks.cpu().numpy().astype(np.uint8)  # (D, H, W)
            rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0)))  # pycocotools wants (H, W, D)
        results = []
        for (x0, y0, x1, y1), score, category_id, name, rle in zip(
                self.boxes_xyxy.tolist(), self.scores.tolist(), self.category_ids, self.class_names, rles):
            result = {"image_id": image_id, **({"file_name": file_name} if file_name is not None else {}),
                      "category_id": category_id, "category_name": name,
                      "bbox": [round(v, 2) for v in (x0, y0, x1 - x0, y1 - y0)], "score": round(score, 5)}
            if rle is not None:
                result["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
            results.append(result)
        return results

    def draw(self, scale: float | None = None) -> Image.Image:
        """The input image with masks, boxes, class names and scores drawn on it (PIL, RGB).
        scale: output size factor; by default small images (< 256 px) are drawn 2x larger."""
        from pointsup.utils.visualize import draw_instances

        if scale is None:
            scale = 2.0 if max(self.image.shape[:2]) < 256 else 1.0  # small images are hard to look at
        return draw_instances(self.image, boxes=self.boxes_xyxy, classes=torch.arange(len(self)),
                              scores=self.scores, masks=self.masks, class_names=self.class_names, scale=scale)


class Predictor:
    """A trained model ready for single images: `Predictor(weights)(image) -> Prediction`.

    weights:      a pointsup checkpoint (e.g. output/model_final.pth).
    cfg:          None = the config stored in the checkpoint; or a Config / YAML path.
    overrides:    "a.b=value" strings applied on top (e.g. "model.roi_heads.score_thresh_test=0.3").
    device:       "" / None = cfg.device, else cuda when available, else cpu.
    score_thresh: detections with a lower score are left out of the Prediction.
    """

    def __init__(self, weights: str, cfg: Config | str | None = None, overrides: list[str] | tuple[str, ...] = (),
                 device: str | torch.device | None = None, score_thresh: float = 0.5):
        from pointsup.checkpoint import load_checkpoint
        from pointsup.data.transforms import build_test_transforms

        state = load_checkpoint(weights)  # weights_only=True: refuses a file that would run code
        self.cfg = config_for_checkpoint(state, weights, cfg, overrides)
        self.device = torch.device(device or self.cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.class_names, category_ids = load_model_and_categories(self.cfg, state, self.device)
        self.category_ids = category_ids or list(range(len(self.class_names)))
        self.score_thresh = score_thresh
        self.transforms = build_test_transforms(self.cfg.data)  # the resize evaluation uses

    @torch.no_grad()
    def __call__(self, image: ImageLike) -> Prediction:
        from pointsup.inference import predict_batch
        from pointsup.structures import InstanceTargets

        image_hwc = image_to_uint8_hwc(image)  # (H, W, 3) uint8
        H, W = image_hwc.shape[:2]
        image_chw = torch.from_numpy(image_hwc.copy()).permute(2, 0, 1)  # (3, H, W) uint8
        resized, _ = self.transforms(image_chw, InstanceTargets.empty((H, W)))  # (3, h, w)
        # Padded to a multiple of 32 as in training; boxes and masks come back in the (H, W) frame.
        (output,) = predict_batch(self.model, [resized.float()], self.device, output_sizes=[(H, W)])
        keep = output["pred_scores"] >= self.score_thresh  # (D,)
        classes = output["pred_classes"][keep].cpu()  # (D,)
        return Prediction(
            boxes_xyxy=output["pred_boxes"][keep].float().cpu(),
            scores=output["pred_scores"][keep].float().cpu(),
            classes=classes,
            class_names=[self.class_names[k] for k in classes.tolist()],
            masks=output["pred_masks"][keep].bool().cpu() if "pred_masks" in output else None,
            category_ids=[self.category_ids[k] for k in classes.tolist()],
            image=image_hwc,
        )
