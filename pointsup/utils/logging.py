"""Training logs: `metrics.jsonl` (one JSON object per line) and a loss-curve PNG.

The PNG is drawn with PIL only (matplotlib is not a dependency): one polyline per loss
term on a shared log-scale y axis, iterations on the x axis.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from PIL import Image, ImageDraw

from pointsup.utils.io import atomic_save_png


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
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def append_jsonl(path: str, record: dict[str, Any]) -> None:
    # One write + flush per line: a crash loses at most the line being written.
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def draw_loss_curve(records: list[dict[str, Any]], path: str, width: int = 900, height: int = 520) -> None:
    """Plot every `loss*` / `total_loss` key of `records` against `iter` and save a PNG."""
    records = [r for r in records if "iter" in r and "total_loss" in r]
    names = ["total_loss"] + sorted({k for r in records for k in r if k.startswith("loss")})
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 70, width - 190, 20, height - 50  # plot area in pixels

    points = [(r["iter"], r[k]) for r in records for k in names if k in r and r[k] > 0 and math.isfinite(r[k])]
    if not points:
        draw.text((left, top), "no finite losses logged", fill="black")
        atomic_save_png(path, image)
        return
    x_min, x_max = min(p[0] for p in points), max(p[0] for p in points)
    y_min, y_max = math.log10(min(p[1] for p in points)), math.log10(max(p[1] for p in points))
    x_max, y_max = max(x_max, x_min + 1), max(y_max, y_min + 1e-3)

    def to_px(it: float, value: float) -> tuple[float, float]:
        x = left + (it - x_min) / (x_max - x_min) * (right - left)
        y = bottom - (math.log10(value) - y_min) / (y_max - y_min) * (bottom - top)
        return x, y

    # Axes; x ticks at (up to) 5 whole iterations, y ticks at 1, 2, 5 x 10^d inside the range.
    draw.rectangle([left, top, right, bottom], outline="black")
    for it in sorted({round(x_min + (x_max - x_min) * i / 4) for i in range(5)}):
        x, _ = to_px(it, 10**y_min)
        draw.line([x, bottom, x, bottom + 5], fill="black")
        draw.text((x - 15, bottom + 8), str(it), fill="black")
    y_ticks = [m * 10.0**d for d in range(math.floor(y_min), math.ceil(y_max) + 1) for m in (1, 2, 5)
               if y_min - 1e-9 <= math.log10(m * 10.0**d) <= y_max + 1e-9]
    for value in y_ticks if len(y_ticks) >= 2 else [10**y_min, 10**y_max]:
        _, y = to_px(x_min, value)
        draw.line([left - 5, y, right, y], fill=(220, 220, 220))
        draw.text((5, y - 6), f"{value:.3g}", fill="black")
    draw.text(((left + right) // 2 - 20, height - 22), "iteration", fill="black")
    draw.text((left + 5, top + 3), "loss (log scale)", fill="black")

    for i, name in enumerate(names):
        color = _COLORS[i % len(_COLORS)]
        xy = [to_px(r["iter"], r[name]) for r in records if name in r and r[name] > 0 and math.isfinite(r[name])]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=3 if name == "total_loss" else 1)
        elif xy:
            x, y = xy[0]
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
        draw.line([right + 10, top + 8 + 16 * i, right + 30, top + 8 + 16 * i], fill=color, width=3)
        draw.text((right + 35, top + 2 + 16 * i), name, fill="black")
    atomic_save_png(path, image)
