"""Draw images with boxes, masks, class names and labelled points (object red, background blue).

Shape letters: M instances, P points per instance, H x W the image.

The command `python -m pointsup.data.visualize --json points.json --images DIR --out OUTDIR`
draws a data set's ground truth with it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from pointsup.utils.io import atomic_save

POINT_COLOURS = {1: (230, 25, 25), 0: (30, 80, 255), -1: (150, 150, 150)}  # object, background, ignore
MASK_ALPHA = 0.45


def _palette(k: int) -> tuple[int, int, int]:
    """A distinct, deterministic colour per instance index (golden-ratio hue steps)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _to_numpy(x) -> np.ndarray | None:
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def draw_instances(
    image: np.ndarray,
    boxes=None,
    masks=None,
    point_coords=None,
    point_labels=None,
    classes=None,
    scores=None,
    class_names: Sequence[str] | None = None,
    scale: float = 1.0,
) -> Image.Image:
    """Render instances onto an image.

    image:        (H, W, 3) uint8 RGB.
    boxes:        (M, 4) xyxy in image pixels.        masks: (M, H, W) bool.
    point_coords: (M, P, 2) (x, y) continuous image pixels; point_labels (M, P) in 1/0/-1.
    classes:      (M,) contiguous class ids; scores (M,) optional; class_names for the text.
    scale:        upsampling factor of the output (small images are hard to look at).
    Arrays may be numpy or torch. Returns a PIL image of size (W * scale, H * scale).
    """
    image = np.asarray(image, dtype=np.uint8)
    boxes, masks = _to_numpy(boxes), _to_numpy(masks)
    point_coords, point_labels = _to_numpy(point_coords), _to_numpy(point_labels)
    classes, scores = _to_numpy(classes), _to_numpy(scores)
    M = next((len(a) for a in (boxes, masks, point_coords, classes) if a is not None), 0)

    canvas = image.astype(np.float32)
    if masks is not None:
        for m in range(M):
            colour = np.asarray(_palette(m), dtype=np.float32)
            mk = masks[m].astype(bool)
            canvas[mk] = (1 - MASK_ALPHA) * canvas[mk] + MASK_ALPHA * colour
    H, W = image.shape[:2]
    out = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    if scale != 1.0:
        out = out.resize((max(1, round(W * scale)), max(1, round(H * scale))), Image.NEAREST)
    draw = ImageDraw.Draw(out)

    for m in range(M):
        if boxes is not None:
            x0, y0, x1, y1 = (float(v) * scale for v in boxes[m])
            draw.rectangle([x0, y0, x1, y1], outline=_palette(m), width=max(1, round(scale)))
            text = ""
            if classes is not None:
                c = int(classes[m])
                text = class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)
            if scores is not None:
                text = f"{text} {float(scores[m]):.2f}".strip()
            if text:
                tx, ty = x0 + 2, max(y0 - 11, 0)
                draw.rectangle(draw.textbbox((tx, ty), text), fill=(0, 0, 0))
                draw.text((tx, ty), text, fill=_palette(m))
        if point_coords is not None and point_labels is not None:
            radius = max(1.5, 1.5 * scale)
            for (x, y), label in zip(point_coords[m], point_labels[m]):
                colour = POINT_COLOURS.get(int(label), POINT_COLOURS[-1])
                cx, cy = float(x) * scale, float(y) * scale
                draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour, outline=(255, 255, 255))
    return out


def save_visualization(path: str, image: np.ndarray, **kwargs) -> None:
    """`draw_instances(image, **kwargs)` saved atomically as a PNG at `path`."""
    rendered = draw_instances(image, **kwargs)
    atomic_save(path, lambda tmp_path: rendered.save(tmp_path, format="PNG"))
