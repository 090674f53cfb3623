"""Draw a trained model's predictions and write them as COCO results:

    python -m pointsup.predict --weights W --input IMG_OR_DIR --output DIR [--score-thresh 0.5] [--config C]

The model is rebuilt from the config stored in the checkpoint (`--config` replaces it,
`--set` overrides either); this is `pointsup.Predictor` (pointsup/predictor.py) run over
files.

Every readable image `name.ext` becomes DIR/name.ext.png (masks, boxes, class names and
scores drawn on the original image; the source extension stays in the name, so a.jpg and
a.png do not collide), and DIR/predictions.json holds every detection above the threshold
as a COCO results list (bbox [x, y, w, h], RLE mask in the original image frame, score,
category_id, plus file_name and category_name). An output never replaces an input: a
collision is refused before anything is written.

Inputs that cannot be read make the command exit with status 1 after the others are done,
with a summary of what failed; `--skip-bad` turns them into warnings (status 0). No
readable input at all is always an error.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm import tqdm

from pointsup.predictor import Predictor
from pointsup.utils.io import atomic_save_png, atomic_write_json

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
RESULTS_NAME = "predictions.json"


def draw_prediction(image: Tensor, prediction: dict[str, Tensor], class_names: list[str], score_thresh: float,
                    fallback_top: int = 0) -> np.ndarray:
    """image (3, H, W) float 0..255 and its prediction (same frame) -> (H, W, 3) uint8 drawing
    of the detections scoring >= score_thresh; when there is none, of the `fallback_top`
    best ones (their scores are drawn, so a weak model still shows what it sees)."""
    from pointsup.utils.visualize import draw_instances

    scores = prediction["pred_scores"]  # (D,)
    keep = scores >= score_thresh  # (D,)
    if not keep.any() and fallback_top > 0:
        keep = scores.argsort(descending=True)[:fallback_top]
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


def visualize_dataset(model: nn.Module, dataset: Dataset, out_dir: str, num_images: int, device: torch.device,
                      score_thresh: float = 0.5, fallback_top: int = 3) -> list[str]:
    """Predictions on the first `num_images` items of `dataset` -> out_dir/<image_id>.png; an
    image without a detection above score_thresh shows its `fallback_top` best ones."""
    from pointsup.inference import predict_dataset

    paths, best_score, drawn = [], 0.0, 0
    indices = range(min(num_images, len(dataset)))
    for batch, (prediction,) in predict_dataset(model, dataset, device, indices, original_frame=False):
        (H, W), image_id = batch.image_sizes[0], batch.image_ids[0]
        image = batch.images[0, :, :H, :W].cpu()  # (3, H, W) the resized image the model saw
        path = os.path.join(out_dir, f"{image_id}.png")
        atomic_save_png(path, draw_prediction(image, prediction, dataset.class_names, score_thresh, fallback_top))
        paths.append(path)
        scores = prediction["pred_scores"]
        best_score = max(best_score, scores.max().item() if len(scores) else 0.0)
        drawn += int((scores >= score_thresh).sum())
    if paths and drawn == 0:  # a blank drawing should not look like a bug
        warnings.warn(f"{out_dir}: no detection reached score {score_thresh} in the {len(paths)} images drawn "
                      f"(highest score {best_score:.3f}); the PNGs show each image's top {fallback_top} detections with "
                      f"their scores instead", stacklevel=3)
    return paths


def list_images(path: str) -> list[str]:
    if os.path.isdir(path):
        return sorted(os.path.join(path, n) for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not os.path.exists(path):
        raise FileNotFoundError(f"--input not found: {path}")
    return [path]


def output_path(input_path: str, out_dir: str) -> str:
    """out_dir/<name with its extension>.png: a.jpg -> a.jpg.png, so a.jpg and a.png never collide."""
    return os.path.join(out_dir, os.path.basename(input_path) + ".png")


def check_no_input_overwritten(paths: list[str], out_dir: str) -> None:
    """Refuse (ValueError, before anything is written) when an output would replace an input or
    two inputs would write the same output."""
    inputs = {os.path.realpath(p) for p in paths}
    seen: dict[str, str] = {}
    for path in paths:
        out = os.path.realpath(output_path(path, out_dir))
        if out in inputs or out == os.path.realpath(os.path.join(out_dir, RESULTS_NAME)):
            raise ValueError(f"the drawing of {path} would replace the input {out}; choose another --output folder")
        if out in seen:
            raise ValueError(f"{seen[out]} and {path} would both be drawn to {out}")
        seen[out] = path


def predict_files(predictor: Predictor, paths: list[str], out_dir: str) -> tuple[list[str], list[dict], list[tuple[str, str]]]:
    """Draw each image to `output_path(path, out_dir)`; returns (PNGs written, COCO results,
    [(path, reason)] of the inputs that could not be read)."""
    from pointsup.data.coco import load_image_rgb

    check_no_input_overwritten(paths, out_dir)
    written, results, failed = [], [], []
    progress = tqdm(paths, desc="predict", unit="image", disable=len(paths) < 2, dynamic_ncols=True)
    for image_id, path in enumerate(progress, start=1):
        try:
            image = load_image_rgb(path)  # (H, W, 3) uint8; 16-bit images scaled, not clipped
        except (OSError, ValueError) as e:  # unreadable or not an image: report it, keep going
            failed.append((path, str(e)))
            continue
        prediction = predictor(image)
        out_path = output_path(path, out_dir)
        atomic_save_png(out_path, np.asarray(prediction.draw()))
        written.append(out_path)
        results += prediction.to_coco(image_id, file_name=os.path.basename(path))
    return written, results, failed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pointsup.predict",
                                     description="Draw a model's predictions on images and write them as COCO results.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--weights", required=True, default=argparse.SUPPRESS, help="a pointsup checkpoint (model_*.pth)")
    parser.add_argument("--input", required=True, default=argparse.SUPPRESS, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, default=argparse.SUPPRESS,
                        help=f"folder for the PNGs and {RESULTS_NAME} (never an input's file)")
    parser.add_argument("--config", default=None,
                        help="YAML config of the model; None = the config stored in the checkpoint")
    parser.add_argument("--score-thresh", type=float, default=0.5,
                        help="draw and write only detections with at least this score")
    parser.add_argument("--skip-bad", action="store_true", help="warn about unreadable inputs instead of exiting with status 1")
    parser.add_argument("--set", nargs="*", default=[], action="extend", metavar="KEY=VALUE",
                        help="config overrides on top of --config or the stored config, e.g. data.min_size_test=800")
    return parser


def cli(argv: list[str] | None = None) -> list[str]:
    args = build_parser().parse_args(argv)
    paths = list_images(args.input)
    if not paths:
        raise SystemExit(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {args.input}")
    check_no_input_overwritten(paths, args.output)  # before the model is even loaded
    predictor = Predictor(args.weights, args.config, args.set, score_thresh=args.score_thresh)
    written, results, failed = predict_files(predictor, paths, args.output)
    if written:
        atomic_write_json(os.path.join(args.output, RESULTS_NAME), results)
    print(f"wrote {len(written)} PNGs and {RESULTS_NAME} ({len(results)} detections) to {args.output}")
    if failed:
        summary = f"{len(failed)} of {len(paths)} inputs could not be read:\n" + "\n".join(f"  {p}: {r}" for p, r in failed)
        if not written or not args.skip_bad:
            print(summary + ("" if written else "\nno image could be read") +
                  ("" if args.skip_bad else "\n(--skip-bad skips unreadable inputs)"), file=sys.stderr)
            raise SystemExit(1)
        warnings.warn(summary, stacklevel=2)
    return written


if __name__ == "__main__":
    cli()
