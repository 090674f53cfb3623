"""Do the shipped synthetic configs train without a non-finite loss on other data?

Trains every config of configs/synthetic (or those given) for `--iters` iterations on
variants of the synthetic generator (image size, objects per image, classes, background)
with several seeds, through the experiment harness (finished runs are read, not
retrained), and prints a markdown table: per variant and config, how many seeds trained
to the end and, for the others, the error (the divergence stop names the iteration).

    python scripts/check_stability.py --iters 300 --seeds 3 --out experiments/stability \
        --variants default size160 flat3 clutter8

Divergence shows up early (right after warm-up, when the LR peaks), so a few hundred
iterations at the configs' LR and batch exercise the dangerous phase.
"""

from __future__ import annotations

import argparse
import os
import sys

from pointsup import experiments

VARIANTS = {  # name -> synthetic generator options (pointsup/data/synthetic.py)
    "default": {},
    "size160": {"synthetic_image_size": 160},
    "size96_obj12": {"synthetic_image_size": 96, "synthetic_max_objects": 12},
    "flat3": {"synthetic_background": "flat", "synthetic_num_classes": 3},
    "clutter8": {"synthetic_background": "clutter", "synthetic_num_classes": 8, "synthetic_max_objects": 10},
}
CONFIGS = [
    "mask_rcnn_masks", "mask_rcnn_P10", "mask_rcnn_P10_point_aug", "pointrend_masks", "pointrend_P10",
    "pointrend_P10_point_aug", "implicit_pointrend_masks", "implicit_pointrend_P10", "implicit_pointrend_P10_point_aug",
    "condinst_masks", "condinst_P10", "condinst_P10_point_aug", "condinst_boxinst",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="experiments/stability")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    args = parser.parse_args(argv)

    runs = []
    for variant in args.variants:
        options = argparse.Namespace(
            out=os.path.join(args.out, variant), iters=args.iters, seeds=args.seeds, num_workers=1, config_set="synthetic",
            synthetic_image_size=128, synthetic_max_objects=6, synthetic_num_classes=5, synthetic_background="texture")
        for key, value in VARIANTS[variant].items():
            setattr(options, key, value)
        data = experiments.builtin_data(options)
        planner = experiments.Planner(data, options)
        for seed in range(args.seeds):
            for config in args.configs:
                train_json = data.train_json if config.endswith("_masks") else data.points(10)
                runs.append(planner.run("stability", f"{variant} {config}", config, train_json, seed))
    statuses = experiments.run_all(runs, args.jobs, threads=1)

    lines = [f"| variant | config | seeds finished (of {args.seeds}) | errors |", "|---|---|---|---|"]
    for label in dict.fromkeys(run.label for run in runs):
        mine = [run for run in runs if run.label == label]
        done = [run for run in mine if experiments.run_finished(run) is not None]
        errors = "; ".join(f"seed {run.seed}: {statuses[run.key()].get('error', '')}" for run in mine if run not in done)
        variant, config = label.split(" ", 1)
        lines.append(f"| {variant} | {config} | {len(done)} | {errors} |")
    print("\n".join(lines))
    failed = sum(experiments.run_finished(run) is None for run in runs)
    print(f"\n{len(runs) - failed} of {len(runs)} runs finished; {failed} did not", file=sys.stderr)


if __name__ == "__main__":
    main()
