"""Time pointsup's use of every CPU thread for the kernels torchvision runs on one
(RoIAlign's forward, NMS per group; `pointsup.ops.cpu_threads`) against the same model with
each of those ops as one call, and against torchvision's Mask R-CNN, in one process.

The three alternate after a warm-up, so load from other processes hits them alike; medians
are printed. First the outputs of the two pointsup variants are compared: they must be the
same tensors (boxes, scores, classes, masks), or the script exits with an error.

    OMP_NUM_THREADS=2 python scripts/bench_cpu_threads.py --threads 2 --iters 9
    OMP_NUM_THREADS=1 python scripts/bench_cpu_threads.py --threads 1 --iters 7   # nothing to split: ~1.00x

Models and inputs are those of scripts/bench_models.py (R50-FPN Mask R-CNN from the COCO
config, random weights, score threshold 0 so each keeps 100 detections).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_models  # noqa: E402  (scripts/ is not a package)

from pointsup.ops.cpu_threads import one_call_each  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=512, help="square input side")
    parser.add_argument("--iters", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-torchvision", action="store_true", help="time the two pointsup variants only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = argparse.Namespace(
        device="cpu", batch=1, height=args.size, width=args.size, num_classes=80, num_objects=5, num_points=10,
        supervision="points", sampling_ratio=-1, score_thresh=0.0, torchvision_as_built=False,
    )
    torch.manual_seed(0)
    model = bench_models.build_pointsup("mask_rcnn", settings).eval()
    images, _ = bench_models.synthetic_batch(1, args.size, args.size, 5, 10, 80)
    sizes = [(args.size, args.size)]

    def split():
        with torch.no_grad():
            return model(images, sizes)[0]

    def one_call():
        with one_call_each(), torch.no_grad():
            return model(images, sizes)[0]

    a, b = split(), one_call()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    if different:
        raise SystemExit(f"outputs differ with and without the split: {different}")
    print(f"outputs equal with and without the split ({len(a['pred_boxes'])} detections: boxes, scores, classes, masks)")

    runs = {"pointsup, split on threads": split, "pointsup, one call each": one_call}
    if not args.no_torchvision:
        torch.manual_seed(0)
        runs["torchvision"] = bench_models.make_runner("torchvision", "infer", settings)
    for _ in range(args.warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.iters):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"inference, {args.size}x{args.size}, {args.threads} thread(s), {args.iters} runs each, median s:")
    for name, t in times.items():
        print(f"  {name:28s} {medians[name]:.3f}  ({', '.join(f'{x:.2f}' for x in t)})")
    split_t, one_t = medians["pointsup, split on threads"], medians["pointsup, one call each"]
    print(f"split / one call each: {split_t / one_t:.3f}")
    if "torchvision" in medians:
        tv = medians["torchvision"]
        print(f"pointsup / torchvision: split {split_t / tv:.3f}, one call each {one_t / tv:.3f}")


if __name__ == "__main__":
    main()
