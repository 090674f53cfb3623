"""A built-in synthetic instance segmentation data set: coloured shapes on textured backgrounds.

Five categories by default that differ only by *shape* (disc, ring, triangle, cross, star;
up to eight with square, hexagon, crescent): every object gets a random colour, size,
aspect, rotation and shading, so colour is never the class cue.
Objects are painted in order and later ones occlude earlier ones; each mask is the *visible*
part (so masks are not convex blobs, and rings show the background through their hole).
Objects that end up mostly hidden are removed before painting, so every visible object is
annotated. Images have 0-6 objects (about 5% are empty) on smooth colour fields with
stripes or blotchy noise, plus pixel noise.

Variants (to check that a recipe is not tuned to one data set): the image size, the most
objects per image, the number of classes, and the background: "texture" (the default
above), "flat" (one colour and pixel noise) or "clutter" (texture plus unannotated
coloured strokes that look like object parts).

    python -m pointsup.data.synthetic --out DIR --num-train 2000 --num-val 200 --seed 0 \
        [--image-size 128] [--max-objects 6] [--num-classes 5] [--background texture]

writes DIR/images/{train,val}_XXXXXX.png, then DIR/train.json and DIR/val.json (COCO, RLE
masks). The JSONs are written last and atomically, so their presence means a complete set.
Rasterisation is vectorised numpy on a window around each object (no per-pixel loops).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from pointsup.utils.io import atomic_save_png, atomic_write_json

CLASS_NAMES = ["disc", "ring", "triangle", "cross", "star", "square", "hexagon", "crescent"]
DEFAULT_NUM_CLASSES = 5  # the built-in data set uses the first five
BACKGROUNDS = ("texture", "flat", "clutter")
MIN_VISIBLE_FRACTION = 0.5  # objects with less of their area visible are dropped
MIN_AREA_FRACTION = 0.002  # ... as are objects smaller than this fraction of the image


def shape_mask(class_id: int, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Inside test of a unit-size shape at object-local coordinates u, v (same shape) -> bool."""
    rho = np.hypot(u, v)
    if class_id == 0:  # disc
        return rho <= 1.0
    if class_id == 1:  # ring (annulus)
        return (rho <= 1.0) & (rho >= rng.uniform(0.45, 0.65))
    if class_id == 2:  # equilateral triangle with vertices on the unit circle
        angles = np.pi / 2 + 2 * np.pi * np.arange(3) / 3
        dots = u[..., None] * np.cos(angles) + v[..., None] * np.sin(angles)
        return dots.max(axis=-1) <= 0.5
    if class_id == 3:  # cross / plus sign
        half_width = rng.uniform(0.25, 0.35)
        return ((np.abs(u) <= half_width) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= half_width) & (np.abs(u) <= 1.0))
    if class_id == 4:  # five-pointed star: radius oscillates between inner and 1
        inner = rng.uniform(0.4, 0.5)
        t = np.mod(np.arctan2(v, u) * 5 / (2 * np.pi), 1.0)
        return rho <= inner + (1 - inner) * np.abs(2 * t - 1)
    if class_id == 5:  # square
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if class_id == 6:  # regular hexagon: the max over its three edge normals
        angles = np.pi * np.arange(3) / 3
        return np.abs(u[..., None] * np.cos(angles) + v[..., None] * np.sin(angles)).max(axis=-1) <= 0.87
    if class_id == 7:  # crescent: a disc minus a shifted disc
        shift = rng.uniform(0.35, 0.55)
        return (rho <= 1.0) & (np.hypot(u - shift, v) > 0.8)
    raise ValueError(f"unknown class id {class_id}")


def _smooth_noise(rng: np.random.Generator, grid: int, size: int, channels: int, low: float, high: float) -> np.ndarray:
    """(size, size, channels) float32 field: a random grid x grid image upsampled bilinearly."""
    small = rng.uniform(low, high, size=(grid, grid, channels)).astype(np.float32)
    planes = [np.asarray(Image.fromarray(small[..., c], mode="F").resize((size, size), Image.BILINEAR)) for c in range(channels)]
    return np.stack(planes, axis=-1)


def _background(rng: np.random.Generator, S: int, kind_name: str = "texture") -> np.ndarray:
    """(S, S, 3) float32 background of the given kind (see BACKGROUNDS)."""
    if kind_name == "flat":
        return np.broadcast_to(rng.uniform(20, 235, size=3).astype(np.float32), (S, S, 3)).copy()
    image = _smooth_noise(rng, 3, S, 3, 20, 235)
    kind = rng.integers(3)
    if kind == 0:  # stripes at a random angle and frequency
        ys, xs = np.mgrid[0:S, 0:S].astype(np.float32)
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
        wave = np.sin((xs * np.cos(angle) + ys * np.sin(angle)) * 2 * np.pi / period)
        image += rng.uniform(10, 35) * wave[..., None] * rng.uniform(0.3, 1.0, size=3)
    elif kind == 1:  # blotchy mid-frequency noise
        image += _smooth_noise(rng, 12, S, 3, -35, 35)
    if kind_name == "clutter":
        _draw_strokes(rng, image, int(rng.integers(3, 9)))
    return image


def _draw_strokes(rng: np.random.Generator, image: np.ndarray, count: int) -> None:
    """Paint `count` thick random line segments of random colours (unannotated distractors)."""
    S = image.shape[0]
    ys, xs = np.mgrid[0:S, 0:S].astype(np.float32) + 0.5
    for _ in range(count):
        (x0, y0), (x1, y1) = rng.uniform(0, S, size=(2, 2))
        width = rng.uniform(0.01, 0.04) * S
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
        near = np.hypot(xs - (x0 + t * dx), ys - (y0 + t * dy)) <= width
        image[near] = rng.uniform(0, 255, size=3)


def _sample_object(rng: np.random.Generator, S: int, num_classes: int) -> dict[str, Any]:
    """Random class, centre, size, aspect and rotation of one object."""
    radius = rng.uniform(0.08, 0.25) * S
    return {
        "class_id": int(rng.integers(num_classes)),
        "cx": rng.uniform(0.05, 0.95) * S,
        "cy": rng.uniform(0.05, 0.95) * S,
        "radius": radius,
        "aspect": rng.uniform(0.8, 1.25),
        "angle": rng.uniform(0, 2 * np.pi),
    }


def _rasterise(obj: dict[str, Any], S: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int], np.ndarray]:
    """Full (unoccluded) mask of an object on its window.

    returns (mask (h, w) bool, window (x0, y0, x1, y1) in pixels, u (h, w) local x for shading).
    """
    reach = obj["radius"] * 1.3
    x0, x1 = int(max(0, np.floor(obj["cx"] - reach))), int(min(S, np.ceil(obj["cx"] + reach)))
    y0, y1 = int(max(0, np.floor(obj["cy"] - reach))), int(min(S, np.ceil(obj["cy"] + reach)))
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xs + 0.5 - obj["cx"], ys + 0.5 - obj["cy"]  # pixel centres, continuous frame
    c, s = np.cos(obj["angle"]), np.sin(obj["angle"])
    u = (dx * c + dy * s) / (obj["radius"] * obj["aspect"])
    v = (-dx * s + dy * c) / (obj["radius"] / obj["aspect"])
    return shape_mask(obj["class_id"], u, v, rng), (x0, y0, x1, y1), u


def _object_colour(rng: np.random.Generator, background_rgb: np.ndarray) -> np.ndarray:
    """A random colour, re-drawn a few times to keep some contrast with the local background."""
    for _ in range(10):
        colour = rng.uniform(0, 255, size=3)
        if np.abs(colour - background_rgb).sum() > 120:
            break
    return colour.astype(np.float32)


def render_image(
    rng: np.random.Generator, S: int, max_objects: int = 6, num_classes: int = DEFAULT_NUM_CLASSES,
    background: str = "texture",
) -> tuple[np.ndarray, list[np.ndarray], list[int]]:
    """One image (S, S, 3) uint8, visible masks [(S, S) bool] and their class ids."""
    image = _background(rng, S, background)
    num_objects = 0 if rng.random() < 0.05 else int(rng.integers(1, max_objects + 1))
    objects = [_sample_object(rng, S, num_classes) for _ in range(num_objects)]
    rasters = [_rasterise(obj, S, rng) for obj in objects]

    def visible_owner(indices: list[int]) -> np.ndarray:
        # (S, S) index of the topmost object at each pixel (-1 = background); later = on top.
        owner = np.full((S, S), -1, dtype=np.int64)
        for k in indices:
            mask, (x0, y0, x1, y1), _ = rasters[k]
            owner[y0:y1, x0:x1][mask] = k
        return owner

    owner = visible_owner(list(range(num_objects)))
    min_area = MIN_AREA_FRACTION * S * S
    survivors = []
    for k in range(num_objects):
        full_area = rasters[k][0].sum()
        visible_area = (owner == k).sum()
        if full_area >= min_area and visible_area >= MIN_VISIBLE_FRACTION * full_area:
            survivors.append(k)
    # Removing hidden objects only uncovers more of the survivors, so they stay valid.
    owner = visible_owner(survivors)

    masks, classes = [], []
    for k in survivors:
        mask, (x0, y0, x1, y1), u = rasters[k]
        visible = owner[y0:y1, x0:x1] == k  # (h, w)
        colour = _object_colour(rng, image[int(objects[k]["cy"]) % S, int(objects[k]["cx"]) % S])
        # Linear shading across the object so it is not a flat colour.
        shade = 1.0 + rng.uniform(0.1, 0.3) * np.clip(u, -1, 1)[..., None]
        window = image[y0:y1, x0:x1]
        window[visible] = (colour * shade)[visible]
        full_visible = np.zeros((S, S), dtype=bool)
        full_visible[y0:y1, x0:x1] = visible
        masks.append(full_visible)
        classes.append(objects[k]["class_id"])
    image += 6.0 * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), masks, classes


def mask_to_annotation(mask: np.ndarray, class_id: int, ann_id: int, image_id: int) -> dict[str, Any]:
    """(H, W) bool visible mask -> COCO annotation (RLE, tight bbox in the continuous frame)."""
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1  # pixel edges
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": class_id + 1,
        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
        "area": float(mask.sum()),
        "iscrowd": 0,
        "segmentation": rle,
    }


def _generate_split(
    out_dir: str, split: str, num_images: int, image_size: int, rng: np.random.Generator, variant: dict[str, Any]
) -> dict[str, Any]:
    """Render and save one split's images; return its COCO dict."""
    images, annotations = [], []
    for i in range(num_images):
        image_id = i + 1
        image, masks, classes = render_image(rng, image_size, **variant)
        file_name = f"{split}_{image_id:06d}.png"
        atomic_save_png(os.path.join(out_dir, "images", file_name), image, compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "height": image_size, "width": image_size})
        for mask, class_id in zip(masks, classes):
            annotations.append(mask_to_annotation(mask, class_id, len(annotations) + 1, image_id))
    return {
        "info": {"description": f"pointsup synthetic shapes, {split} split"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name, "supercategory": "shape"}
                       for k, name in enumerate(CLASS_NAMES[: variant["num_classes"]])],
    }


def generate_synthetic_dataset(
    out_dir: str, num_train: int = 2000, num_val: int = 200, image_size: int = 128, seed: int = 0,
    max_objects: int = 6, num_classes: int = DEFAULT_NUM_CLASSES, background: str = "texture",
) -> dict[str, str]:
    """Write the synthetic data set; deterministic per seed (train and val use separate streams).

    returns {"train_json", "val_json", "image_dir"} paths (images of both splits share image_dir).
    """
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    if not 1 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f"num_classes must be in 1..{len(CLASS_NAMES)}, got {num_classes}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
    variant = {"max_objects": max_objects, "num_classes": num_classes, "background": background}
    paths = {
        "train_json": os.path.join(out_dir, "train.json"),
        "val_json": os.path.join(out_dir, "val.json"),
        "image_dir": os.path.join(out_dir, "images"),
    }
    os.makedirs(paths["image_dir"], exist_ok=True)
    for split_index, (split, num_images) in enumerate([("train", num_train), ("val", num_val)]):
        rng = np.random.default_rng([seed, split_index])
        coco = _generate_split(out_dir, split, num_images, image_size, rng, variant)
        atomic_write_json(paths[f"{split}_json"], coco)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pointsup.data.synthetic", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     description="Generate the built-in synthetic shapes data set (COCO format).")
    parser.add_argument("--out", required=True, default=argparse.SUPPRESS, help="output folder")
    parser.add_argument("--num-train", type=int, default=2000, help="training images")
    parser.add_argument("--num-val", type=int, default=200, help="validation images")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (same seed, same data set)")
    parser.add_argument("--image-size", type=int, default=128, help="side of the square images, pixels")
    parser.add_argument("--max-objects", type=int, default=6, help="most objects per image")
    parser.add_argument("--num-classes", type=int, default=DEFAULT_NUM_CLASSES,
                        help=f"number of shape classes, 1..{len(CLASS_NAMES)}")
    parser.add_argument("--background", choices=BACKGROUNDS, default="texture", help="background kind")
    args = parser.parse_args(argv)
    paths = generate_synthetic_dataset(args.out, args.num_train, args.num_val, args.image_size, args.seed,
                                       args.max_objects, args.num_classes, args.background)
    print(f"wrote {paths['train_json']} ({args.num_train} images), {paths['val_json']} ({args.num_val} images), images in {paths['image_dir']}")


if __name__ == "__main__":
    main()
