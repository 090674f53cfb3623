"""Training logs: `metrics.jsonl` (one JSON object per line) and two curves drawn with
matplotlib: `loss_curve.png` (every loss term, log scale) and `ap_curve.png` (box and mask
AP of the evaluations against the iteration).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from pointsup.utils.io import atomic_save, atomic_write_text


def read_jsonl(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a killed run
                    pass
    return records


def truncate_jsonl(path: str, max_iter: int) -> None:
    """Drop records logged after iteration `max_iter` (a resumed run redoes those)."""
    records = [r for r in read_jsonl(path) if r.get("iter", 0) <= max_iter]
    # atomic: a kill during the rewrite leaves the old log, never a truncated one
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def append_jsonl(path: str, record: dict[str, Any]) -> None:
    # One write + flush per line: a crash loses at most the line being written.
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def new_figure(figsize: tuple[float, float] = (8, 4.5), dpi: int = 100):
    """(figure, axes) for a PNG file. A bare `matplotlib.figure.Figure`, not pyplot: no display
    needed, and the caller's pyplot backend is left alone (a notebook keeps its inline plots)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    return fig, fig.subplots()


def save_figure(fig, ax, path: str, ylabel: str, xlabel: str = "iteration") -> None:
    """Label and grid the axes, then write the PNG atomically (Agg renders it)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_save(path, lambda tmp_path: fig.savefig(tmp_path, format="png"))


def draw_loss_curve(records: list[dict[str, Any]], path: str) -> None:
    """Plot every `loss*` / `total_loss` key of `records` against `iter` (log y) into a PNG."""
    records = [r for r in records if "iter" in r and "total_loss" in r]
    names = ["total_loss"] + sorted({k for r in records for k in r if k.startswith("loss")})
    fig, ax = new_figure()
    plotted = False
    for name in names:
        xy = [(r["iter"], r[name]) for r in records if name in r and r[name] > 0 and math.isfinite(r[name])]
        if xy:
            ax.plot(*zip(*xy), label=name, linewidth=2.5 if name == "total_loss" else 1, marker="." if len(xy) == 1 else None)
            plotted = True
    if plotted:
        ax.set_yscale("log")
        ax.legend(fontsize=8, loc="upper right")
    else:
        ax.text(0.5, 0.5, "no finite losses logged", ha="center", transform=ax.transAxes)
    save_figure(fig, ax, path, "loss (log scale)")


def ap_records(records: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """(iteration, metrics) of the evaluation records in `records` (they carry "bbox")."""
    return [(r["iter"], r) for r in records if "iter" in r and isinstance(r.get("bbox"), dict)]


def draw_ap_curve(records: list[dict[str, Any]], path: str) -> None:
    """Box and mask AP of each evaluation record against its iteration, into a PNG."""
    evals = ap_records(records)
    fig, ax = new_figure()
    for task, label in (("segm", "mask AP"), ("bbox", "box AP")):
        xy = [(it, r[task]["AP"]) for it, r in evals if isinstance(r.get(task), dict) and r[task].get("AP") is not None]
        if xy:
            ax.plot(*zip(*xy), marker="o", label=label)
    if evals:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no evaluation yet", ha="center", transform=ax.transAxes)
    save_figure(fig, ax, path, "AP (%)")


def open_tensorboard(log_dir: str):
    """A TensorBoard SummaryWriter on log_dir; a clear error when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError('tensorboard=true needs the tensorboard package: pip install "pointsup[tensorboard]"') from None
    return SummaryWriter(log_dir=log_dir)


def tensorboard_scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """A metrics.jsonl record as TensorBoard tags: {"segm": {"AP": 30}} -> {"segm/AP": 30};
    the iteration and non-numbers (None APs) are left out."""
    scalars = {}
    for key, value in record.items():
        if isinstance(value, dict):
            scalars.update(tensorboard_scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "iter":
            scalars[prefix + key] = float(value)
    return scalars

