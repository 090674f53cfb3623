"""Training data pipeline speed, images/s per worker: pointsup vs detectron2's mapper, same JPEGs.

    OMP_NUM_THREADS=1 python scripts/bench_data.py [--num-images 24] [--rounds 5] [--batch 2]
        [--modes masks points] [--profile 12] [--d2src /tmp/d2src --d2deps /tmp/d2deps]
        [--resize-backend torch torch_uint8]   # one pointsup loader per data.resize_backend

Generates --num-images COCO-sized JPEGs (--width x --height, quality 90, --objects polygon
objects each, P10 points per object stored as pixel indices like detectron2's PointSup files)
in a temporary folder, then times one DataLoader worker's work per image: decode, the training
augmentation (multi-scale shortest-edge resize to one of 640..800 with long side <= 1333, random
horizontal flip), the targets and the collate of --batch images. Compared:

    masks   pointsup: CocoInstanceDataset(use_masks=True) + build_train_transforms + collate
            (float32 image, (M, H, W) bool masks, images padded to /32)
            detectron2-bitmask: DatasetMapper(is_train=True, [ResizeShortestEdge((640, ..., 800),
            1333, "choice"), RandomFlip()], image_format="RGB", use_instance_mask=True,
            instance_mask_format="bitmask") + trivial_batch_collator (uint8 image, dense masks;
            the padding happens later, in the model)
            detectron2-polygon: the same with instance_mask_format="polygon" (detectron2's COCO
            default: no mask is rasterised in the loader; the mask head rasterises per RoI)
    points  pointsup: use_points=True, point augmentation keeping 5 of 10 points (the P10 + point
            aug configs); detectron2: PointSupDatasetMapper(sample_points=5) (its PointSup project)

Timing: --rounds rounds; in each round every loader makes one pass over all images, the loaders
in an order that alternates between rounds, all RNGs reseeded per pass. Printed: the median
images/s of each loader by wall clock and by the process's CPU time (the steadier figure when
other jobs share the cores), pointsup's ratio to each detectron2 loader, and with --profile K the K
functions with the most own time in each loader's per-image path (cProfile, one extra pass).

detectron2 is not installed: its source tree (--d2src / D2_SRC, a `git archive` of
github:facebookresearch/detectron2), its pure-Python dependencies (--d2deps / D2_DEPS, `pip install
--no-deps --target`) and a cv2 stub (--d2stubs / D2_STUBS, written if absent) are put on sys.path,
as /work/shared/tools/d2_fidelity.py sets them up. Without them pointsup is timed alone.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from pointsup.config import DataConfig
from pointsup.data.coco import CocoInstanceDataset
from pointsup.data.collate import collate
from pointsup.data.transforms import build_train_transforms

MIN_SIZES = (640, 672, 704, 736, 768, 800)  # detectron2's COCO training sizes (configs/coco)
MAX_SIZE = 1333
NUM_POINTS = 10  # P10
POINT_AUG_KEEP = 5  # point augmentation: 5 of the 10 points per box and iteration


# ----------------------------------------------------------------------------------------
# Data: COCO-sized JPEGs with polygon objects and P10 points
# ----------------------------------------------------------------------------------------


def _polygon(rng: np.random.Generator, W: int, H: int) -> list[float]:
    """A random star-shaped polygon (8-24 vertices) inside the image, flat [x0, y0, x1, y1, ...]."""
    r = rng.uniform(min(W, H) / 24, min(W, H) / 3)
    cx, cy = rng.uniform(r, W - r), rng.uniform(r, H - r)
    n = int(rng.integers(8, 25))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = r * rng.uniform(0.5, 1.0, n)
    xs = np.clip(cx + radii * np.cos(angles), 0, W - 1)
    ys = np.clip(cy + radii * np.sin(angles), 0, H - 1)
    return [round(float(v), 2) for xy in zip(xs, ys) for v in xy]


def make_data(root: str, num_images: int, width: int, height: int, objects: int, seed: int = 0) -> str:
    """Write JPEGs + one COCO JSON (polygons and P10 points on every annotation) -> JSON path."""
    import pycocotools.mask as mask_util

    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(num_images):
        W, H = (width, height) if i % 4 else (height, width)  # every 4th image is portrait
        yy, xx = np.mgrid[0:H, 0:W]
        base = (rng.uniform(60, 200, 3) + 40 * np.sin(xx[:, :, None] / rng.uniform(30, 90))
                + 40 * np.cos(yy[:, :, None] / rng.uniform(30, 90)))  # smooth background
        canvas = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(canvas)
        polygons = [_polygon(rng, W, H) for _ in range(objects)]
        for poly in polygons:
            draw.polygon(poly, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        pixels = np.asarray(canvas.filter(ImageFilter.GaussianBlur(1.0))).astype(np.float32)
        pixels += rng.normal(0, 12, pixels.shape)  # texture, so the JPEG is photo-sized
        file_name = f"{i:06d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(os.path.join(root, file_name), quality=90)
        images.append({"id": i + 1, "file_name": file_name, "height": H, "width": W})
        for poly in polygons:
            rle = mask_util.merge(mask_util.frPyObjects([poly], H, W))
            mask = mask_util.decode(rle).astype(bool)  # (H, W)
            x, y, w, h = (float(v) for v in mask_util.toBbox(rle))
            # P10 as pixel indices inside the box (detectron2's PointSup files store ints).
            px = rng.integers(int(x), int(x + w), NUM_POINTS)
            py = rng.integers(int(y), int(y + h), NUM_POINTS)
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": int(rng.integers(1, 6)), "iscrowd": 0,
                "bbox": [x, y, w, h], "area": float(mask.sum()), "segmentation": [poly],
                "point_coords": [[int(a), int(b)] for a, b in zip(px, py)],
                "point_labels": [int(mask[b, a]) for a, b in zip(px, py)],
            })
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": k, "name": f"class{k}"} for k in range(1, 6)]}
    json_path = os.path.join(root, "instances.json")
    with open(json_path, "w") as f:
        json.dump(coco, f)
    return json_path


# ----------------------------------------------------------------------------------------
# The loaders: each is (map index -> sample, collate list -> batch)
# ----------------------------------------------------------------------------------------


def pointsup_loader(json_path: str, image_dir: str, mode: str, backend: str) -> tuple[Callable, Callable]:
    """What pointsup.train builds for mask or point supervision at the COCO sizes."""
    data_cfg = DataConfig(min_size_train=list(MIN_SIZES), max_size_train=MAX_SIZE, resize_backend=backend,
                          random_flip=True, random_crop=False, point_aug=mode == "points",
                          point_aug_num=POINT_AUG_KEEP if mode == "points" else 0)
    dataset = CocoInstanceDataset(json_path, image_dir, transforms=build_train_transforms(data_cfg),
                                  use_masks=mode == "masks", use_points=mode == "points", skip_empty=True)
    return dataset.__getitem__, lambda samples: collate(samples, size_divisibility=32)


def find_detectron2(args) -> str | None:
    """Put detectron2's source, deps and a cv2 stub on sys.path; None if usable, else the reason."""
    if not os.path.isfile(os.path.join(args.d2src, "detectron2", "__init__.py")):
        return f"no detectron2 source at {args.d2src} (--d2src / D2_SRC)"
    if not os.path.isdir(os.path.join(args.d2deps, "fvcore")):
        return f"no detectron2 dependencies at {args.d2deps} (--d2deps / D2_DEPS)"
    stub = os.path.join(args.d2stubs, "cv2", "__init__.py")
    if not os.path.isfile(stub):  # detectron2 imports cv2 at module level; the mappers never call it
        os.makedirs(os.path.dirname(stub), exist_ok=True)
        with open(stub, "w") as f:
            f.write('__version__ = "0.0.0"\n')
    sys.path[:0] = [args.d2src, args.d2deps, args.d2stubs, os.path.join(args.d2src, "projects", "PointSup")]
    try:
        import detectron2.data  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means "time pointsup alone"
        return f"importing detectron2 from {args.d2src} failed: {type(e).__name__}: {e}"
    return None


def detectron2_dicts(json_path: str, image_dir: str, mode: str) -> list[dict[str, Any]]:
    """detectron2's dataset dicts (what load_coco_json gives) for the same JSON."""
    from detectron2.structures import BoxMode

    with open(json_path) as f:
        coco = json.load(f)
    cat_ids = sorted(c["id"] for c in coco["categories"])
    by_image: dict[int, list] = {img["id"]: [] for img in coco["images"]}
    for ann in coco["annotations"]:
        obj = {"bbox": ann["bbox"], "bbox_mode": BoxMode.XYWH_ABS, "category_id": cat_ids.index(ann["category_id"]),
               "iscrowd": 0}
        if mode == "masks":
            obj["segmentation"] = ann["segmentation"]
        else:  # the PointSup files carry no masks
            obj["point_coords"], obj["point_labels"] = ann["point_coords"], ann["point_labels"]
        by_image[ann["image_id"]].append(obj)
    return [{"file_name": os.path.join(image_dir, img["file_name"]), "height": img["height"], "width": img["width"],
             "image_id": img["id"], "annotations": by_image[img["id"]]} for img in coco["images"]]


def detectron2_loaders(json_path: str, image_dir: str, mode: str) -> dict[str, tuple[Callable, Callable]]:
    import detectron2.data.transforms as T
    from detectron2.data import DatasetMapper
    from detectron2.data.build import trivial_batch_collator

    dicts = detectron2_dicts(json_path, image_dir, mode)
    augs = [T.ResizeShortestEdge(MIN_SIZES, MAX_SIZE, "choice"), T.RandomFlip()]
    if mode == "masks":
        loaders = {}
        for fmt in ("bitmask", "polygon"):
            mapper = DatasetMapper(is_train=True, augmentations=augs, image_format="RGB", use_instance_mask=True,
                                   instance_mask_format=fmt)
            loaders[f"detectron2-{fmt}"] = (lambda i, m=mapper: m(dicts[i]), trivial_batch_collator)
        return loaders
    import point_sup.detection_utils as point_sup_utils
    from point_sup.dataset_mapper import PointSupDatasetMapper

    # PointSup passes keypoint_hflip_indices positionally, which detectron2's
    # transform_instance_annotations now takes by keyword only: adapt the call in-process.
    base = point_sup_utils.base_transform_instance_annotations
    if not getattr(base, "_bench_adapter", False):
        def adapter(annotation, transforms, image_size, keypoint_hflip_indices=None):
            return base(annotation, transforms, image_size, keypoint_hflip_indices=keypoint_hflip_indices)
        adapter._bench_adapter = True
        point_sup_utils.base_transform_instance_annotations = adapter
    mapper = PointSupDatasetMapper(is_train=True, augmentations=augs, image_format="RGB", sample_points=POINT_AUG_KEEP)
    return {"detectron2": (lambda i: mapper(dicts[i]), trivial_batch_collator)}


# ----------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------


def one_pass(map_fn: Callable, collate_fn: Callable, n: int, batch: int, seed: int) -> dict[str, float]:
    """Map all n images and collate them in batches -> seconds: "map", "collate" (wall clock) and
    "cpu" (this process's CPU time for both: less disturbed than wall time on a loaded machine)."""
    random.seed(seed)
    np.random.seed(seed)  # detectron2's augmentations
    torch.manual_seed(seed)  # pointsup's
    t_map = t_collate = 0.0
    cpu0 = time.process_time()
    for start in range(0, n, batch):
        t0 = time.perf_counter()
        samples = [map_fn(i) for i in range(start, min(start + batch, n))]
        t1 = time.perf_counter()
        collate_fn(samples)
        t_collate += time.perf_counter() - t1
        t_map += t1 - t0
    return {"map": t_map, "collate": t_collate, "cpu": time.process_time() - cpu0}


def profile_lines(map_fn: Callable, collate_fn: Callable, n: int, batch: int, top: int) -> list[str]:
    """The `top` functions with the most own time in one pass (share of the pass, ms per image)."""
    profiler = cProfile.Profile()
    profiler.enable()
    one_pass(map_fn, collate_fn, n, batch, seed=0)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (cc, calls, own time, cumulative, callers)}
    total = sum(v[2] for v in stats.values())
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    out = []
    for (file, line, name), (_, calls, own, _, _) in rows:
        where = name if file == "~" else f"{os.path.basename(file)}:{line}({name})"
        out.append(f"{100 * own / total:5.1f}%  {1000 * own / n:7.2f} ms/image  {calls / n:6.1f} calls/image  {where}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-images", type=int, default=24)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--objects", type=int, default=7, help="objects per image (COCO averages ~7)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=2, help="images per collate (detectron2's 16 over 8 GPUs)")
    p.add_argument("--modes", nargs="+", default=["masks", "points"], choices=["masks", "points"])
    p.add_argument("--resize-backend", nargs="+", default=["torch"], choices=["torch", "pil", "torch_uint8"],
                   help="pointsup's data.resize_backend; several: one pointsup loader each (the first is "
                        "'pointsup', the others 'pointsup-<backend>')")
    p.add_argument("--profile", type=int, default=0, metavar="K", help="print each loader's K costliest functions")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default="", help="reuse / keep the generated data here (default: a temp folder)")
    p.add_argument("--no-detectron2", action="store_true", help="time pointsup alone")
    p.add_argument("--d2src", default=os.environ.get("D2_SRC", "/tmp/d2src"))
    p.add_argument("--d2deps", default=os.environ.get("D2_DEPS", "/tmp/d2deps"))
    p.add_argument("--d2stubs", default=os.environ.get("D2_STUBS", "/tmp/d2stubs"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    missing = "--no-detectron2" if args.no_detectron2 else find_detectron2(args)
    if missing:
        print(f"detectron2 not found or not used ({missing}): timing pointsup alone")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_dir or tmp
        os.makedirs(root, exist_ok=True)
        json_path = os.path.join(root, "instances.json")
        reused = os.path.isfile(json_path)
        if not reused:
            make_data(root, args.num_images, args.width, args.height, args.objects)
        with open(json_path) as f:
            n = len(json.load(f)["images"])
        print(f"data: {n} JPEGs {args.width}x{args.height} (every 4th portrait), {args.objects} polygon objects "
              f"with P{NUM_POINTS} each{' (reused from ' + root + ')' if reused else ''}; sizes {MIN_SIZES} "
              f"max {MAX_SIZE}, flip; batch {args.batch}; {args.rounds} rounds, "
              f"torch threads {torch.get_num_threads()}")
        for mode in args.modes:
            loaders = {"pointsup" if i == 0 else f"pointsup-{backend}": pointsup_loader(json_path, root, mode, backend)
                       for i, backend in enumerate(args.resize_backend)}
            if not missing:
                loaders.update(detectron2_loaders(json_path, root, mode))
            for map_fn, collate_fn in loaders.values():  # warm-up: imports, page cache, allocator
                one_pass(map_fn, collate_fn, min(n, args.batch), args.batch, seed=0)
            times: dict[str, list[dict[str, float]]] = {name: [] for name in loaders}
            for r in range(args.rounds):
                names = list(loaders) if r % 2 == 0 else list(loaders)[::-1]
                for name in names:
                    times[name].append(one_pass(*loaders[name], n, args.batch, seed=r))
            ips, ips_cpu = {}, {}
            for name, runs in times.items():
                ips[name] = statistics.median(n / (t["map"] + t["collate"]) for t in runs)
                ips_cpu[name] = statistics.median(n / t["cpu"] for t in runs)
                ms_map = 1000 * statistics.median(t["map"] for t in runs) / n
                ms_col = 1000 * statistics.median(t["collate"] for t in runs) / n
                print(f"[{mode}] {name:<19} {ips[name]:7.2f} images/s wall, {ips_cpu[name]:7.2f} images/s CPU time "
                      f"(median of {args.rounds}; per image map {ms_map:.1f} ms + collate {ms_col:.1f} ms)")
            detectron2_names = [name for name in ips if not name.startswith("pointsup")]
            for mine in (name for name in ips if name.startswith("pointsup")):
                # Each pointsup loader against detectron2's; the other backends also against the first.
                for name in ([] if mine == "pointsup" else ["pointsup"]) + detectron2_names:
                    print(f"[{mode}] ratio {mine} / {name}: {ips[mine] / ips[name]:.2f}x wall, "
                          f"{ips_cpu[mine] / ips_cpu[name]:.2f}x CPU time")
            for name in loaders if args.profile else []:
                print(f"[{mode}] {name} profile (cProfile, own time, one pass):")
                for line in profile_lines(*loaders[name], n, args.batch, args.profile):
                    print(f"[{mode}]   {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
