"""The paper's headline comparison on the built-in synthetic data: masks vs 10 points.

For each model (Mask R-CNN, PointRend, Implicit PointRend) trains the synthetic config with
full masks and with P10 (10 labelled points per object, no masks), evaluates mask AP on the
synthetic validation split, and prints a table with each model's P10 / masks ratio (the
paper: 94-98% on COCO) and Implicit PointRend vs PointRend with points (the paper: higher).

Each run is a plain `pointsup.train.main(cfg)` of configs/synthetic/<model>_<supervision>.yaml,
writing to <output-root>/<model>_<supervision>/ (metrics.json there). A run whose
metrics.json already exists is read, not retrained, unless --retrain is given, so the
table can be built up over several sessions or from runs made with the CLI:

    python -m pointsup.train --config configs/synthetic/pointrend_P10.yaml \
        --set output_dir=output/compare/pointrend_P10

    python scripts/compare_supervision.py                      # all six runs (~15 min each, 1 CPU core)
    python scripts/compare_supervision.py --models implicit_pointrend --supervisions P10
    python scripts/compare_supervision.py --set solver.max_iter=2000   # applied to every run

On a 2-core CPU each run of the default 1000 iterations takes ~15 min; two runs can go in
parallel (one thread each) from two shells with disjoint --models.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ["mask_rcnn", "pointrend", "implicit_pointrend"]
SUPERVISIONS = ["masks", "P10"]


def run_or_read(model: str, supervision: str, args) -> dict | None:
    """Metrics of one run: read from its metrics.json, or train it first."""
    out = os.path.join(args.output_root, f"{model}_{supervision}")
    metrics_path = os.path.join(out, "metrics.json")
    if os.path.exists(metrics_path) and not args.retrain:
        with open(metrics_path) as f:
            return json.load(f)
    if args.read_only:
        return None
    from pointsup import train
    from pointsup.config import load_config

    config = ROOT / "configs" / "synthetic" / f"{model}_{supervision}.yaml"
    cfg = load_config(str(config), [*args.set, f"output_dir={out}"])
    print(f"training {config.name} -> {out}", flush=True)
    return train.main(cfg)


def mask_ap(metrics: dict | None) -> float | None:
    return None if not metrics or "segm" not in metrics else metrics["segm"]["AP"]


def fmt(value: float | None) -> str:
    return f"{value:6.1f}" if value is not None else f"{'-':>6s}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=MODELS)
    parser.add_argument("--supervisions", nargs="+", choices=SUPERVISIONS, default=SUPERVISIONS)
    parser.add_argument("--output-root", default="output/compare")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides for every run, e.g. solver.max_iter=2000")
    parser.add_argument("--retrain", action="store_true", help="train even where metrics.json exists")
    parser.add_argument("--read-only", action="store_true", help="only print the table of existing runs")
    args = parser.parse_args()

    results = {(m, s): run_or_read(m, s, args) for m in args.models for s in args.supervisions}

    print(f"\nmask AP on the synthetic validation split ({args.output_root})")
    print(f"{'model':20s} {'masks':>6s} {'P10':>6s} {'P10/masks':>10s}   box AP (masks, P10)")
    for m in args.models:
        runs = [results.get((m, s)) for s in ("masks", "P10")]
        masks, points = (mask_ap(r) for r in runs)
        ratio = f"{points / masks:10.1%}" if masks and points is not None else f"{'-':>10s}"
        box_ap = ", ".join(f"{r['bbox']['AP']:.1f}" if r else "-" for r in runs)
        print(f"{m:20s} {fmt(masks)} {fmt(points)} {ratio}   {box_ap}")
    pr, ipr = mask_ap(results.get(("pointrend", "P10"))), mask_ap(results.get(("implicit_pointrend", "P10")))
    if pr is not None and ipr is not None:
        print(f"P10: Implicit PointRend - PointRend = {ipr - pr:+.1f} mask AP (paper, COCO: Implicit PointRend higher)")


if __name__ == "__main__":
    main()
