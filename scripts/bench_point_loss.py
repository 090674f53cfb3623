"""Share of the point loss (targets + sampling + BCE, forward and backward) in a Mask R-CNN P10
training step, at the library's defaults (configs/synthetic/mask_rcnn_P10.yaml, built-in data).

    OMP_NUM_THREADS=1 python scripts/bench_point_loss.py [--config C] [--steps 10] [--threads 1]

Profiles `--steps` training steps with torch.profiler; the point loss's forward is labelled by
wrapping the two functions the mask head calls (`roi_point_targets`, `point_mask_loss`), and
its backward is the autograd nodes that only it creates (grid_sample's and the weighted BCE's
backward). Prints both times and their share of the step, measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import pointsup.models.mask_head as mask_head
from pointsup.config import load_config
from pointsup.data.collate import collate
from pointsup.models import build_model
from pointsup.train import build_datasets

BACKWARD_OPS = ("GridSampler2DBackward0", "BinaryCrossEntropyWithLogitsBackward0")


def labelled(fn, label):
    def wrapper(*args, **kwargs):
        with record_function(label):
            return fn(*args, **kwargs)
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/synthetic/mask_rcnn_P10.yaml")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, ["data.num_workers=0"])
    if cfg.model.mask_head.name != "mask_rcnn" or cfg.model.mask_head.supervision != "points":
        raise SystemExit("the benchmark measures the Mask R-CNN head with point supervision")
    torch.manual_seed(0)
    train_set, _ = build_datasets(cfg)
    batches = [collate([train_set[4 * s + i] for i in range(cfg.solver.ims_per_batch)], size_divisibility=32)
               for s in range(args.steps + 2)]
    model = build_model(cfg, train_set.num_classes).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    mask_head.roi_point_targets = labelled(mask_head.roi_point_targets, "point_loss_forward")
    mask_head.point_mask_loss = labelled(mask_head.point_mask_loss, "point_loss_forward")

    def step(batch):
        loss = sum(model(batch.images, batch.image_sizes, batch.targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for batch in batches[:2]:  # warm-up
        step(batch)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches[2:]:
            step(batch)
    step_s = (time.perf_counter() - start) / args.steps
    by_name = {e.key: e.cpu_time_total for e in prof.key_averages()}  # microseconds, all steps
    forward_s = by_name.get("point_loss_forward", 0.0) / 1e6 / args.steps
    backward_s = sum(by_name.get(name, 0.0) for name in BACKWARD_OPS) / 1e6 / args.steps
    print(f"training step (profiled): {step_s * 1e3:.1f} ms")
    print(f"point loss forward:  {forward_s * 1e3:.2f} ms  ({100 * forward_s / step_s:.2f}% of the step)")
    print(f"point loss backward: {backward_s * 1e3:.2f} ms  ({100 * backward_s / step_s:.2f}% of the step)")
    print(f"point loss total:    {100 * (forward_s + backward_s) / step_s:.2f}% of a training step (target < 2%)")


if __name__ == "__main__":
    main()
