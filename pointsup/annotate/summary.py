"""How fast is the labelling going? Seconds per point and per object from a job's timing.

    python -m pointsup.annotate.summary labels.json [--instances 849949] [--pause-seconds 30]

The tool stores, for every labelled point, the milliseconds from showing it to the key
press (the "annotate" block of its output, see `pointsup.annotate.job`). A point that took
longer than --pause-seconds is taken as a break, not labelling work: it is counted and
reported but left out of the speed. The projection multiplies that speed by the points
still open in this job (and, with --instances, by N points for that many objects).
Compare with the paper: 0.9 s per point (sec. 3.1, appendix A); the whole-pipeline cost
of a data set is `python -m pointsup.annotation_time --timing labels.json`.
While the tool runs, the file can lag the last few labels (they are in its journal until
the next snapshot); stop the tool first for exact numbers.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

DEFAULT_PAUSE_SECONDS = 30.0
HISTOGRAM_EDGES = (0.0, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, np.inf)  # seconds


def load_job_block(path: str) -> dict[str, Any]:
    """The "annotate" block of a pointsup.annotate output file (ValueError if there is none)."""
    with open(path) as f:
        saved = json.load(f)
    block = saved.get("annotate") if isinstance(saved, dict) else None
    if not isinstance(block, dict) or "objects" not in block:
        raise ValueError(f"{path} has no 'annotate' block: not written by pointsup.annotate")
    return block


def point_seconds(block: dict[str, Any], pause_seconds: float = DEFAULT_PAUSE_SECONDS) -> tuple[np.ndarray, int]:
    """(seconds of every labelled point that is not a pause, number of pauses left out)."""
    ms = [m for obj in block["objects"].values() for m, v in zip(obj["ms"], obj["labels"]) if v is not None]
    seconds = np.asarray(ms, dtype=np.float64) / 1000.0
    work = seconds[seconds <= pause_seconds]
    return work, int(len(seconds) - len(work))


def summarize(block: dict[str, Any], pause_seconds: float = DEFAULT_PAUSE_SECONDS,
              instances: int | None = None) -> dict[str, Any]:
    """The numbers printed by `main` (None where there is nothing to measure yet)."""
    objects = list(block["objects"].values())
    N = int(block["num_points"])
    work, num_pauses = point_seconds(block, pause_seconds)
    status = {"complete": 0, "partial": 0, "unlabelled": 0, "skipped": 0}
    per_object = []
    for obj in objects:
        n = sum(v is not None for v in obj["labels"])
        key = "skipped" if obj["skipped"] else "complete" if n == N else "partial" if n else "unlabelled"
        status[key] += 1
        if key == "complete" and all(m / 1000.0 <= pause_seconds for m in obj["ms"]):
            per_object.append(sum(obj["ms"]) / 1000.0)
    open_points = sum(v is None for obj in objects if not obj["skipped"] for v in obj["labels"])
    mean = float(work.mean()) if len(work) else None
    return {
        "num_points": N,
        "labelled": int(sum(v is not None for obj in objects for v in obj["labels"])),
        "total": N * len(objects),
        "status": status,
        "num_timed": len(work),
        "num_pauses": num_pauses,
        "seconds_per_point": mean,
        "median_seconds_per_point": float(np.median(work)) if len(work) else None,
        "quantiles": {q: float(np.quantile(work, q / 100)) for q in (10, 25, 50, 75, 90)} if len(work) else {},
        "histogram": np.histogram(work, bins=HISTOGRAM_EDGES)[0].tolist(),
        "seconds_per_object": float(np.mean(per_object)) if per_object else None,
        "open_points": open_points,
        "seconds_left": None if mean is None else open_points * mean,
        "instances": instances,
        "seconds_for_instances": None if mean is None or instances is None else instances * N * mean,
    }


def format_summary(path: str, s: dict[str, Any]) -> str:
    lines = [f"{path}: {s['labelled']}/{s['total']} points labelled; objects: "
             + ", ".join(f"{v} {k}" for k, v in s["status"].items())]
    if s["seconds_per_point"] is None:
        lines.append("no timed labels yet")
        return "\n".join(lines)
    lines.append(f"seconds per point: mean {s['seconds_per_point']:.2f}, median {s['median_seconds_per_point']:.2f} "
                 f"over {s['num_timed']} points ({s['num_pauses']} pauses left out; paper: 0.9)")
    lines.append("quantiles: " + ", ".join(f"p{q} {v:.2f} s" for q, v in s["quantiles"].items()))
    peak = max(s["histogram"]) or 1
    for lo, hi, count in zip(HISTOGRAM_EDGES[:-1], HISTOGRAM_EDGES[1:], s["histogram"]):
        label = f"{lo:.2f}-{hi:.2f} s" if np.isfinite(hi) else f">= {lo:.2f} s"
        lines.append(f"  {label:>12} {'#' * round(40 * count / peak):<40} {count}")
    if s["seconds_per_object"] is not None:
        lines.append(f"seconds per complete object ({s['num_points']} points): {s['seconds_per_object']:.1f}")
    lines.append(f"left in this job: {s['open_points']} points, about {s['seconds_left'] / 60:.1f} min at this pace")
    if s["seconds_for_instances"] is not None:
        lines.append(f"{s['instances']:,} objects x {s['num_points']} points: {s['seconds_for_instances'] / 3600:.1f} h "
                     f"({s['seconds_for_instances'] / 86400:.1f} days) of point labelling, boxes not included")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pointsup.annotate.summary", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     description="Labelling speed and time left of a pointsup.annotate job.")
    parser.add_argument("labels", help="the --output file of pointsup.annotate")
    parser.add_argument("--pause-seconds", type=float, default=DEFAULT_PAUSE_SECONDS,
                        help="a point that took longer is a break and is left out of the speed")
    parser.add_argument("--instances", type=int, default=None, help="also project the time for this many objects (None: no projection)")
    args = parser.parse_args(argv)
    print(format_summary(args.labels, summarize(load_job_block(args.labels), args.pause_seconds, args.instances)))


if __name__ == "__main__":
    main()
