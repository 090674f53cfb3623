"""A tiny COCO box file with real images, and the annotation tool run as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

# Queue order of box_dataset(): ann 3 is a crowd region, never asked.
QUEUED_IDS = [1, 2, 4, 5]


def box_dataset(folder: str) -> tuple[str, str]:
    """Two 160x120 images with coloured shapes; returns (boxes JSON path, image folder)."""
    rng = np.random.default_rng(0)
    image_dir = os.path.join(folder, "images")
    os.makedirs(image_dir, exist_ok=True)
    images = []
    for i in range(2):
        image = Image.fromarray(rng.integers(60, 120, size=(120, 160, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        draw.ellipse([20, 20, 70, 80], fill=(230, 190, 40))
        draw.rectangle([90, 30, 140, 100], fill=(40, 160, 220))
        image.save(os.path.join(image_dir, f"img{i}.png"))
        images.append({"id": i + 1, "file_name": f"img{i}.png", "height": 120, "width": 160})
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 20, 51, 61], "iscrowd": 0, "area": 2500.0},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [90, 30, 51, 71], "iscrowd": 0, "area": 3600.0},
        {"id": 3, "image_id": 1, "category_id": 2, "bbox": [0, 100, 40, 20], "iscrowd": 1, "area": 800.0},
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [20, 20, 51, 61], "iscrowd": 0, "area": 2500.0},
        {"id": 5, "image_id": 2, "category_id": 2, "bbox": [90, 30, 51, 71], "iscrowd": 0, "area": 3600.0},
    ]
    categories = [{"id": 1, "name": "ball"}, {"id": 2, "name": "block"}]
    json_path = os.path.join(folder, "boxes.json")
    with open(json_path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_path, image_dir


class ToolProcess:
    """`python -m pointsup.annotate ... --port 0` in a subprocess; `url` is its first line."""

    def __init__(self, args: list[str]) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pointsup.annotate", *args, "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            self.proc.kill()
            raise RuntimeError(f"the tool did not print its URL first: {self.url!r}\n{self.proc.stderr.read()}")

    def kill(self) -> None:
        """SIGKILL: no chance to save anything on the way out."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM: the normal way out (final snapshot); returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def __enter__(self) -> "ToolProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc.stdout.close()
        self.proc.stderr.close()


def tool_args(json_path: str, image_dir: str, output: str, num_points: int = 4, seed: int = 0) -> list[str]:
    return ["--input", json_path, "--images", image_dir, "--output", output,
            "--num-points", str(num_points), "--seed", str(seed)]
