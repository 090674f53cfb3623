"""Draw a trained model's predictions:

    python -m pointsup.predict --config C --weights W --input IMG_OR_DIR --output DIR [--score-thresh 0.5]

Every readable image becomes DIR/<name>.png with masks, boxes, class names and scores
drawn on the original image; unreadable files are skipped with a warning.
"""

from __future__ import annotations

import argparse
import os
import warnings

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from pointsup.config import Config, load_config
from pointsup.data.collate import pad_images
from pointsup.structures import InstanceTargets
from pointsup.utils.io import atomic_save_png

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def draw_prediction(image: Tensor, prediction: dict[str, Tensor], class_names: list[str], score_thresh: float) -> np.ndarray:
    """image (3, H, W) float 0..255 and its prediction (same frame) -> (H, W, 3) uint8 drawing."""
    from pointsup.utils.visualize import draw_instances

    keep = prediction["pred_scores"] >= score_thresh  # (D,)
    image_hwc = image.detach().round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()  # (H, W, 3)
    drawn = draw_instances(
        image_hwc,
        boxes=prediction["pred_boxes"][keep].cpu(),
        classes=prediction["pred_classes"][keep].cpu(),
        scores=prediction["pred_scores"][keep].cpu(),
        masks=prediction["pred_masks"][keep].cpu() if "pred_masks" in prediction else None,
        class_names=class_names,
        scale=2.0 if max(image_hwc.shape[:2]) < 256 else 1.0,  # small images are hard to look at
    )
    return np.asarray(drawn)


@torch.no_grad()
def visualize_dataset(model: nn.Module, dataset: Dataset, out_dir: str, num_images: int, device: torch.device,
                      score_thresh: float = 0.5) -> list[str]:
    """Predictions on the first `num_images` items of `dataset` -> out_dir/<image_id>.png."""
    was_training = model.training
    model.eval()
    paths = []
    for index in range(min(num_images, len(dataset))):
        sample = dataset[index]
        H, W = sample.image.shape[-2:]
        images = pad_images([sample.image]).to(device)  # (1, 3, H_pad, W_pad)
        (prediction,) = model(images, [(H, W)])
        path = os.path.join(out_dir, f"{sample.image_id}.png")
        atomic_save_png(path, draw_prediction(sample.image, prediction, dataset.class_names, score_thresh))
        paths.append(path)
    model.train(was_training)
    return paths


def list_images(path: str) -> list[str]:
    if os.path.isdir(path):
        return sorted(os.path.join(path, n) for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
    return [path]


def load_model_for_inference(cfg: Config, weights: str, device: torch.device) -> tuple[nn.Module, list[str]]:
    """Build the model from `cfg` and load a pointsup checkpoint; returns (model, class_names)."""
    from pointsup.checkpoint import load_checkpoint
    from pointsup.models import build_model

    state = load_checkpoint(weights)
    class_names = state.get("class_names") if isinstance(state, dict) else None
    num_classes = cfg.model.num_classes or (len(class_names) if class_names else 0)
    if num_classes == 0:
        raise ValueError(f"{weights} does not store class names: set model.num_classes")
    model = build_model(cfg, num_classes)
    model.load_state_dict(state["model"] if "model" in state else state)
    class_names = class_names or [str(k) for k in range(num_classes)]
    return model.to(device).eval(), class_names


@torch.no_grad()
def predict_files(model: nn.Module, class_names: list[str], cfg: Config, paths: list[str], out_dir: str,
                  device: torch.device, score_thresh: float = 0.5) -> list[str]:
    from PIL import Image

    from pointsup.data.transforms import build_test_transforms

    transforms = build_test_transforms(cfg.data)
    written = []
    for path in paths:
        try:
            with Image.open(path) as pil:
                image_np = np.asarray(pil.convert("RGB"))  # (H, W, 3) uint8
        except Exception as e:  # unreadable or not an image: skip it, keep going
            warnings.warn(f"skipping {path}: {e}")
            continue
        H, W = image_np.shape[:2]
        image = torch.from_numpy(image_np.copy()).permute(2, 0, 1).float()  # (3, H, W)
        resized, _ = transforms(image, InstanceTargets.empty((H, W)))
        h, w = resized.shape[-2:]
        (prediction,) = model(pad_images([resized]).to(device), [(h, w)], output_sizes=[(H, W)])
        out_path = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        atomic_save_png(out_path, draw_prediction(image, prediction, class_names, score_thresh))
        written.append(out_path)
    return written


def cli(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description="Draw a model's predictions on images.")
    parser.add_argument("--config", default=None, help="YAML config the model was trained with")
    parser.add_argument("--weights", required=True, help="a pointsup checkpoint (model_*.pth)")
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, help="folder for the PNGs")
    parser.add_argument("--score-thresh", type=float, default=0.5)
    parser.add_argument("--set", nargs="*", default=[], action="extend", metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    cfg = load_config(args.config, args.set)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, class_names = load_model_for_inference(cfg, args.weights, device)
    paths = list_images(args.input)
    written = predict_files(model, class_names, cfg, paths, args.output, device, args.score_thresh)
    print(f"wrote {len(written)} PNGs to {args.output}")
    return written


if __name__ == "__main__":
    cli()
