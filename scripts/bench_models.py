"""Benchmark pointsup's detectors (R50-FPN, COCO-sized) against each other and torchvision.

Models (`--models`, any subset; `all` = every one):
  - mask_rcnn (alias: pointsup): configs/coco/mask_rcnn_R_50_FPN_3x.yaml
  - pointrend:                   configs/coco/pointrend_R_50_FPN_3x.yaml
  - implicit_pointrend:          configs/coco/implicit_pointrend_R_50_FPN_3x.yaml
  - condinst:                    configs/coco/condinst_R_50_FPN_3x.yaml
  - torchvision:                 torchvision's maskrcnn_resnet50_fpn (see below)
Every pointsup model is built from its COCO config (detectron2's sizes: FrozenBN,
freeze_at=2, FPN 256, 512 RoIs/img, fc 1024, 80 classes) with random weights
(`model.backbone.weights=""`) and `model.mask_head.supervision` set by `--supervision`.

All models see the same random batch (N x 3 x H x W, pixels 0..255 for pointsup and the
same pixels / 255 for torchvision, whose transform normalises itself) and the same
synthetic targets (M boxes with full masks, plus P labelled points for pointsup's point
supervision). Timed: inference (eval, no_grad) and one training step (forward + backward).

Inference cost grows with the number of detections (every detection gets a mask, pasted
into the image), and random weights give arbitrary scores. So every model's score
threshold is set to 0 (`--score-thresh`): each keeps its `detections_per_image` = 100 best
after NMS, and the number of detections per image is printed next to the times.

Matching setups with torchvision:
  - pointsup: detectron2 defaults (FrozenBN, freeze_at=2, FPN 256, 80 classes).
  - torchvision: `maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=81)`
    with min_size/max_size set to the input size so it does not resize. Without weights
    torchvision builds trainable BatchNorm everywhere; by default we then convert it to what
    the same builder does with ImageNet weights (FrozenBatchNorm2d, stem + layer1 frozen),
    the same as pointsup. `--torchvision-as-built` keeps the raw builder output.

Timing: both models are built in one process and their runs alternate (after warm-up),
so load from other processes on a shared machine hits both alike; medians are reported.
Peak memory: each (model, mode) in a fresh spawned process, one warm-up step then one
measured step. On CUDA `torch.cuda.max_memory_allocated`. On CPU (Linux) the process's
peak RSS during the measured step minus its RSS just before it, after handing freed heap
back to the OS (`malloc_trim`) and resetting the kernel's high-water mark (writing 5 to
/proc/self/clear_refs): the step's own peak on top of the model and its inputs. Where
that reset is unavailable, the growth of `ru_maxrss` over the warm-up's high-water mark
(a lower bound: memory the warm-up already reached and freed is not counted again).

    python scripts/bench_models.py                       # CPU, batch 2 of 3 x 800 x 1088
    python scripts/bench_models.py --device cuda --iters 10
    python scripts/bench_models.py --models mask_rcnn pointrend implicit_pointrend condinst \
        --size 512 --batch 1 --threads 1                 # the issue 5/6 comparison on a small CPU
    python scripts/bench_models.py --models mask_rcnn torchvision --size 512 --batch 1 --threads 1 \
        --profile 25 --skip-memory                       # also: where the time goes, by op

`--profile K`: after the timed runs, one more run of each model under torch.profiler; prints
its K most expensive ops (self CPU time, summed over calls) and each op's share of the run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ctypes
import multiprocessing
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic_batch(N: int, H: int, W: int, M: int, P: int, num_classes: int, seed: int = 0):
    """images (N, 3, H, W) 0..255 and per image M boxes / classes / masks / P points."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(N, 3, H, W, generator=g) * 255
    per_image = []
    for _ in range(N):
        x0y0 = torch.rand(M, 2, generator=g) * torch.tensor([W * 0.7, H * 0.7])
        wh = 32 + torch.rand(M, 2, generator=g) * torch.tensor([W * 0.3, H * 0.3])
        boxes = torch.cat([x0y0, x0y0 + wh], dim=1)
        masks = torch.zeros(M, H, W, dtype=torch.bool)
        for m, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            masks[m, y0:y1, x0:x1] = True
        coords = boxes[:, None, :2] + torch.rand(M, P, 2, generator=g) * wh[:, None]
        labels = (torch.rand(M, P, generator=g) > 0.5).float()
        classes = torch.randint(0, num_classes, (M,), generator=g)
        per_image.append((boxes, classes, masks, coords, labels))
    return images, per_image


ROOT = Path(__file__).resolve().parents[1]
POINTSUP_CONFIGS = {
    "mask_rcnn": "mask_rcnn_R_50_FPN_3x.yaml",
    "pointrend": "pointrend_R_50_FPN_3x.yaml",
    "implicit_pointrend": "implicit_pointrend_R_50_FPN_3x.yaml",
    "condinst": "condinst_R_50_FPN_3x.yaml",
}
ALL_MODELS = [*POINTSUP_CONFIGS, "torchvision"]


def build_pointsup(which: str, args):
    """One of POINTSUP_CONFIGS from its COCO config, random weights, forced detections."""
    from pointsup.config import load_config
    from pointsup.models import build_model

    overrides = [
        "model.backbone.weights=",  # random init: no ImageNet file needed
        f"model.mask_head.supervision={args.supervision}",
        # a fixed number of detections (100 per image) for comparable inference times
        f"model.roi_heads.score_thresh_test={args.score_thresh}",
        f"model.condinst.score_thresh_test={args.score_thresh}",
    ]
    if args.sampling_ratio >= 0:  # detectron2's default is 0 (adaptive); torchvision uses 2
        overrides += [f"model.roi_heads.pooler_sampling_ratio={args.sampling_ratio}",
                      f"model.mask_head.pooler_sampling_ratio={args.sampling_ratio}"]
    cfg = load_config(str(ROOT / "configs" / "coco" / POINTSUP_CONFIGS[which]), overrides)
    return build_model(cfg, args.num_classes)


def build_torchvision(args):
    from torchvision.models.detection import maskrcnn_resnet50_fpn
    from torchvision.ops.misc import FrozenBatchNorm2d

    model = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=args.num_classes + 1, min_size=args.height, max_size=args.width,
        box_score_thresh=args.score_thresh, box_detections_per_img=100,
    )
    if not args.torchvision_as_built:
        body = model.backbone.body

        def freeze_bn(module):
            for name, child in module.named_children():
                if isinstance(child, torch.nn.BatchNorm2d):
                    setattr(module, name, FrozenBatchNorm2d(child.num_features))
                else:
                    freeze_bn(child)

        freeze_bn(body)
        for name, p in body.named_parameters():
            if not name.startswith(("layer2", "layer3", "layer4")):
                p.requires_grad_(False)
    return model


def make_runner(which: str, mode: str, args):
    """Build one model and its inputs; returns a function that runs one step (synchronised)
    and returns the number of detections per image (inference) or None (training)."""
    device = torch.device(args.device)
    from pointsup.structures import InstanceTargets

    images, per_image = synthetic_batch(args.batch, args.height, args.width, args.num_objects, args.num_points, args.num_classes)
    images = images.to(device)
    if which in POINTSUP_CONFIGS:
        model = build_pointsup(which, args).to(device)
        targets = [InstanceTargets(b, c, (args.height, args.width), m, p, l).to(device) for b, c, m, p, l in per_image]
        sizes = [(args.height, args.width)] * args.batch

        def step():
            return model(images, sizes, targets if mode == "train" else None)

    else:
        model = build_torchvision(args).to(device)
        tv_images = list(images / 255.0)
        targets = [
            {"boxes": b.to(device), "labels": (c + 1).to(device), "masks": m.to(torch.uint8).to(device)}
            for b, c, m, _, _ in per_image
        ]

        def step():
            return model(tv_images, targets if mode == "train" else None)

    params = [p for p in model.parameters() if p.requires_grad]

    def once() -> list[int] | None:
        detections = None
        if mode == "train":
            model.train()
            losses = step()
            sum(losses.values()).backward()
            for p in params:
                p.grad = None
        else:
            model.eval()
            with torch.no_grad():
                outputs = step()
            key = "pred_boxes" if which in POINTSUP_CONFIGS else "boxes"
            detections = [len(o[key]) for o in outputs]
        if device.type == "cuda":
            torch.cuda.synchronize()
        return detections

    return once


def time_interleaved(mode: str, args) -> tuple[dict[str, list[float]], dict[str, list[int] | None]]:
    """All models in one process, runs alternating, so load from other processes on a
    shared machine hits them alike. Returns seconds per run and detections per image
    (inference; None when training) for each model."""
    torch.set_num_threads(args.threads)
    runners = {}
    for which in args.models:
        torch.manual_seed(0)  # the same random weights whatever the other models are
        runners[which] = make_runner(which, mode, args)
    for _ in range(args.warmup):
        for once in runners.values():
            once()
    times = {which: [] for which in runners}
    detections = {}
    for _ in range(args.iters):
        for which, once in runners.items():
            start = time.perf_counter()
            detections[which] = once()
            times[which].append(time.perf_counter() - start)
    if args.profile:
        for which, once in runners.items():
            print_profile(which, mode, once, args.profile)
    return times, detections


def print_profile(which: str, mode: str, once, top: int) -> None:
    """One run of `once` under torch.profiler: the `top` ops by self CPU time, with shares."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        once()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)  # microseconds
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    print(f"\nprofile {which} {mode}: {total / 1e6:.3f} s self CPU time in all ops", flush=True)
    print(f"  {'op':44s} {'self ms':>9s} {'share':>7s} {'calls':>6s}")
    for e in events[:top]:
        print(f"  {e.key[:44]:44s} {e.self_cpu_time_total / 1e3:9.1f} {100 * e.self_cpu_time_total / total:6.1f}% {e.count:6d}")
    sys.stdout.flush()


def peak_memory_mib(which: str, mode: str, args) -> float:
    """In a fresh process: peak memory of one step after one warm-up step (see module doc)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    once = make_runner(which, mode, args)
    once()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        once()
        return torch.cuda.max_memory_allocated() / 2**20
    baseline_kib = _reset_peak_rss()
    if baseline_kib is not None:
        once()
        return (_proc_status_kib("VmHWM") - baseline_kib) / 1024
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    once()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024


def _proc_status_kib(key: str) -> int:
    """A `VmRSS` / `VmHWM` line of /proc/self/status, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak_rss() -> int | None:
    """Return freed heap to the OS and reset the peak RSS to the current RSS (Linux);
    returns that RSS in KiB, or None where this is not possible."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed memory otherwise
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (Linux >= 4.0)
        return _proc_status_kib("VmRSS")
    except (OSError, AttributeError, KeyError):
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1088)
    parser.add_argument("--size", type=int, default=0, help="square input: sets --height and --width")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--num-objects", type=int, default=5, help="GT instances per image")
    parser.add_argument("--num-points", type=int, default=10, help="GT points per instance (pointsup)")
    parser.add_argument("--supervision", choices=["masks", "points"], default="points")
    parser.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    parser.add_argument("--sampling-ratio", type=int, default=-1, help="pointsup RoIAlign sampling ratio (-1: keep 0 = adaptive, detectron2's; 2 = torchvision's)")
    parser.add_argument("--models", nargs="+", default=["mask_rcnn", "torchvision"], choices=[*ALL_MODELS, "pointsup", "all"],
                        help="pointsup = mask_rcnn; all = every model. The first pointsup model in "
                             "the list is the reference of the printed ratios (mask_rcnn when present)")
    parser.add_argument("--score-thresh", type=float, default=0.0,
                        help="test score threshold of every model (0: each gives its 100 best detections)")
    parser.add_argument("--skip-memory", action="store_true", help="only time (memory needs a fresh process per model)")
    parser.add_argument("--profile", type=int, default=0, metavar="K",
                        help="after timing, profile one more run of each model and print its K costliest ops")
    parser.add_argument("--torchvision-as-built", action="store_true", help="keep trainable BN and no frozen stages")
    args = parser.parse_args(argv)
    if args.size:
        args.height = args.width = args.size
    models = ALL_MODELS if "all" in args.models else ["mask_rcnn" if m == "pointsup" else m for m in args.models]
    args.models = list(dict.fromkeys(models))  # drop repeats, keep the order

    print(
        f"device={args.device} batch={args.batch} size={args.height}x{args.width} iters={args.iters} "
        f"warmup={args.warmup} threads={args.threads} supervision={args.supervision} sampling_ratio={args.sampling_ratio} "
        f"score_thresh={args.score_thresh} (forced detections: each model keeps its 100 best)"
    )
    ctx = multiprocessing.get_context("spawn")
    reference = "mask_rcnn" if "mask_rcnn" in args.models else next((m for m in args.models if m in POINTSUP_CONFIGS), None)
    memory_what = "torch.cuda.max_memory_allocated" if args.device.startswith("cuda") else "peak RSS during the step over RSS before it"
    for mode in args.modes:
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            times, detections = pool.submit(time_interleaved, mode, args).result()
        peaks = {}
        if not args.skip_memory:
            for which in args.models:
                with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                    peaks[which] = pool.submit(peak_memory_mib, which, mode, args).result()
        med = {k: statistics.median(t) for k, t in times.items()}
        print(f"\n{mode}: median seconds per {'inference (eval, no_grad)' if mode == 'infer' else 'training step (fwd + bwd)'}"
              f"{'' if args.skip_memory else f'; peak memory in MiB ({memory_what})'}")
        header = f"{'model':19s} {'median s':>9s} {'x ' + (reference or '-'):>14s} {'peak MiB':>9s}  {'dets/img':>8s}  runs"
        print(header)
        print("-" * len(header))
        for which, runs in times.items():
            ratio = f"{med[which] / med[reference]:.2f}" if reference else "-"
            mem = f"{peaks[which]:.0f}" if which in peaks else "-"
            dets = "/".join(map(str, detections[which])) if detections[which] is not None else "-"
            print(f"{which:19s} {med[which]:9.3f} {ratio:>14s} {mem:>9s}  {dets:>8s}  {', '.join(f'{t:.3f}' for t in runs)}")
        if "mask_rcnn" in med and "torchvision" in med:
            print(f"{mode}: ratio pointsup mask_rcnn / torchvision = {med['mask_rcnn'] / med['torchvision']:.2f}")
        if mode == "infer" and "implicit_pointrend" in med and "mask_rcnn" in med:
            ratio = med["implicit_pointrend"] / med["mask_rcnn"]
            verdict = "meets" if ratio <= 1.5 else "misses"
            print(f"infer: ratio implicit_pointrend / mask_rcnn = {ratio:.2f} ({verdict} the issue-5 target <= 1.5)")

if __name__ == "__main__":
    main()
