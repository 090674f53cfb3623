"""Do the shipped synthetic configs train without a non-finite loss on other data?

Trains every config of configs/synthetic (or those given) for `--iters` iterations on
variants of the synthetic generator (image size, objects per image, classes, background)
with several seeds, through the experiment harness (finished runs are read, not
retrained), and prints a markdown table: per variant and config, how many seeds trained
to the end and, for the others, the error (the divergence stop names the iteration).

    python scripts/check_stability.py --iters 300 --seeds 3 --out experiments/stability \
        --variants default size160 flat3 clutter8
    python scripts/check_stability.py ... --report-only   # the table from the finished runs, trains nothing

Divergence shows up early (right after warm-up, when the LR peaks), so a few hundred
iterations at the configs' LR and batch exercise the dangerous phase.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from pointsup import experiments
from pointsup.utils.io import atomic_write_text
from pointsup.utils.logging import read_jsonl

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
    "condinst_boxinst_inside_box",
]


def loss_rise(folder: str) -> float:
    """The largest logged total loss after the first, over the first (each a mean over
    `log_period` iterations): below 1 when the loss never came back to its starting level; a
    run that nearly diverged shows a spike here even if it recovered before the divergence
    stop fired. NaN with fewer than two logged losses."""
    path = os.path.join(folder, "metrics.jsonl")
    losses = [r["total_loss"] for r in read_jsonl(path) if "total_loss" in r] if os.path.exists(path) else []
    return max(losses[1:]) / losses[0] if len(losses) > 1 else math.nan


def stability_table(runs: list, statuses: dict[str, dict], num_seeds: int) -> str:
    """Markdown: per variant and config, the seeds that trained to the end, their mask AP
    (a run that finishes but learns nothing is not "stable"), the largest loss rise among
    them (`loss_rise`) and the other seeds' errors."""
    lines = [f"| variant | config | seeds finished (of {num_seeds}) | mask AP | largest later loss / first loss | errors |",
             "|---|---|---|---|---|---|"]
    for label in dict.fromkeys(run.label for run in runs):
        mine = [run for run in runs if run.label == label]
        metrics = {run.key(): experiments.run_finished(run) for run in mine}
        done = [run for run in mine if metrics[run.key()] is not None]
        ap = experiments.fmt(*experiments.mean_std([metrics[run.key()].get("segm", {}).get("AP", math.nan) for run in done]))
        rises = [r for r in (loss_rise(run.folder) for run in done) if not math.isnan(r)]
        rise = f"{max(rises):.2f}" if rises else "n/a"
        errors = "; ".join(f"seed {run.seed}: {statuses.get(run.key(), {}).get('error', 'not run')}" for run in mine if run not in done)
        variant, config = label.split(" ", 1)
        lines.append(f"| {variant} | {config} | {len(done)} | {ap} | {rise} | {errors} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="experiments/stability")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    parser.add_argument("--output", default="", help="also write the table (and the command) to this markdown file")
    parser.add_argument("--dry-run", action="store_true", help="list the runs, train nothing")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: the table of the runs that finished (the others as not run or failed)")
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
    if args.dry_run:
        for run in runs:
            print(run.key(), run.config, " ".join(run.overrides))
        return
    if args.report_only:
        statuses = {run.key(): experiments.read_status(run) for run in runs}
    else:
        statuses = experiments.run_all(runs, args.jobs, threads=1)
    table = stability_table(runs, statuses, args.seeds)
    print(table)
    if args.output:
        command = "python scripts/check_stability.py " + " ".join(argv if argv is not None else sys.argv[1:])
        atomic_write_text(args.output, f"# Stability of the shipped configs\n\n- command: `{command}`\n"
                          f"- {args.iters} iterations per run, LR steps at 75% / 90%, seeds 0..{args.seeds - 1}\n\n{table}\n")
    failed = sum(experiments.run_finished(run) is None for run in runs)
    print(f"\n{len(runs) - failed} of {len(runs)} runs finished; {failed} did not", file=sys.stderr)


if __name__ == "__main__":
    main()
