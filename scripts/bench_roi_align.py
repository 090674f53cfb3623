"""RoIAlign forward + backward through the multi-level pooler: pointsup's op (torchvision's
forward, batched-matmul backward on CPU) against torchvision's own backward, same inputs.

    OMP_NUM_THREADS=1 python scripts/bench_roi_align.py [--preset coco|synthetic] [--rounds 7]
    OMP_NUM_THREADS=1 python scripts/bench_roi_align.py --train-step configs/synthetic/mask_rcnn_P10.yaml

Presets (the library's defaults):
  coco       2 images of 800x1088, FPN P2-P5 with 256 channels, the box head's 512 sampled
             RoIs per image (7x7) and 128 positives per image for the mask head (14x14),
             sampling_ratio 0 (configs/coco)
  synthetic  4 images of 128x128, 64 channels, 64 RoIs per image (7x7) and 16 positives
             (14x14) (configs/synthetic, the built-in job)
Boxes: side log-uniform between 8 px and the image's short side, aspect ratio in [1/3, 3],
anywhere in the image. Both ops run alternately each round; medians are printed with their
ratio, and the largest gradient difference (float summation order only).

`--train-step CONFIG`: instead, whole training steps (forward + backward, no optimizer step,
so both ops see the same weights) of CONFIG's model on its training data (the built-in data
for configs/synthetic), the pooler's op switched between the two each step.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torchvision.ops import roi_align as torchvision_roi_align

import pointsup.ops.roi_pooler as roi_pooler
from pointsup.ops.roi_pooler import ROIPooler

PRESETS = {  # images, height, width, channels, box-head RoIs / image, mask-head RoIs / image
    "coco": (2, 800, 1088, 256, 512, 128),
    "synthetic": (4, 128, 128, 64, 64, 16),
}


def random_boxes(num: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """(num, 4) xyxy image pixels."""
    side = torch.exp(torch.empty(num).uniform_(math.log(8), math.log(min(height, width)), generator=generator))
    aspect = torch.exp(torch.empty(num).uniform_(-math.log(3), math.log(3), generator=generator))
    w, h = side * aspect.sqrt(), side / aspect.sqrt()
    x0 = torch.rand(num, generator=generator) * (width - w).clamp(min=1)
    y0 = torch.rand(num, generator=generator) * (height - h).clamp(min=1)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def torchvision_op(features, rois, output_size, spatial_scale, sampling_ratio, aligned):
    """torchvision's RoIAlign with pointsup's op's signature, to swap into the pooler."""
    return torchvision_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned=aligned)


def step(pooler: ROIPooler, features: list[torch.Tensor], boxes: list[torch.Tensor], grad_out: torch.Tensor):
    leaves = [f.detach().requires_grad_() for f in features]
    start = time.perf_counter()
    pooler(leaves, boxes).backward(grad_out)
    return time.perf_counter() - start, [f.grad for f in leaves]


def train_step_ratio(config: str, rounds: int) -> None:
    from pointsup.config import load_config
    from pointsup.data.collate import collate
    from pointsup.models import build_model
    from pointsup.train import build_datasets

    cfg = load_config(config, ["data.num_workers=0"])
    torch.manual_seed(0)
    train_set, _ = build_datasets(cfg)
    n = cfg.solver.ims_per_batch
    batches = [collate([train_set[n * b + i] for i in range(n)], size_divisibility=32) for b in range(3)]
    model = build_model(cfg, train_set.num_classes).train()
    ops = {"pointsup": roi_pooler.roi_align, "torchvision": torchvision_op}
    times = {label: [] for label in ops}
    for round_ in range(rounds + 1):  # round 0 warms up
        for b, batch in enumerate(batches):
            labels = list(ops) if (round_ + b) % 2 == 0 else list(ops)[::-1]
            for label in labels:
                roi_pooler.roi_align = ops[label]
                model.zero_grad(set_to_none=True)
                start = time.perf_counter()
                sum(model(batch.images, batch.image_sizes, batch.targets).values()).backward()
                if round_:
                    times[label].append(time.perf_counter() - start)
    ours_s, theirs_s = statistics.median(times["pointsup"]), statistics.median(times["torchvision"])
    print(f"{config}: training step with pointsup's RoIAlign {ours_s * 1000:.0f} ms, with torchvision's "
          f"{theirs_s * 1000:.0f} ms, ratio {ours_s / theirs_s:.3f}x (medians of {len(times['pointsup'])} steps)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="coco")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-step", metavar="CONFIG", default="", help="time whole training steps of CONFIG")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.train_step:
        return train_step_ratio(args.train_step, args.rounds)
    N, H, W, C, box_rois, mask_rois = PRESETS[args.preset]
    generator = torch.Generator().manual_seed(0)
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    features = [torch.randn(N, C, math.ceil(H * s), math.ceil(W * s), generator=generator)
                .contiguous(memory_format=torch.channels_last) for s in scales]
    heads = {"box head (7x7)": (ROIPooler(7, scales, channels_last=False), box_rois),
             "mask head (14x14)": (ROIPooler(14, scales), mask_rois)}
    ours = roi_pooler.roi_align
    print(f"preset {args.preset}: {N} images {H}x{W}, {C} channels, {args.threads} thread(s), {args.rounds} rounds")
    for name, (pooler, per_image) in heads.items():
        boxes = [random_boxes(per_image, H, W, generator) for _ in range(N)]
        S = pooler.output_size
        grad_out = torch.randn(N * per_image, C, S, S, generator=generator)
        times = {"pointsup": [], "torchvision": []}
        for round_ in range(args.rounds + 1):  # round 0 warms up
            order = (("pointsup", ours), ("torchvision", torchvision_op))
            for label, op in order if round_ % 2 == 0 else order[::-1]:
                roi_pooler.roi_align = op
                seconds, grads = step(pooler, features, boxes, grad_out)
                if round_:
                    times[label].append(seconds)
                if label == "pointsup":
                    grads_ours = grads
                else:
                    grads_theirs = grads
        roi_pooler.roi_align = ours
        pairs = [(a, b) for a, b in zip(grads_ours, grads_theirs) if b is not None]  # levels with RoIs
        diff = max(float((a - b).abs().max()) for a, b in pairs)
        scale = max(float(b.abs().max()) for _, b in pairs)
        ours_s, theirs_s = statistics.median(times["pointsup"]), statistics.median(times["torchvision"])
        print(f"{name}: pointsup {ours_s * 1000:.1f} ms, torchvision {theirs_s * 1000:.1f} ms, "
              f"ratio {ours_s / theirs_s:.2f}x (forward + backward); max |grad diff| {diff:.1e} (max |grad| {scale:.1f})")


if __name__ == "__main__":
    main()
