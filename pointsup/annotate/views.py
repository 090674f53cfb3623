"""The two views of a point (paper appendix A, Figure 8), cut and scaled on the server.

    context view  the whole object: its box plus margins for context, clipped to the image.
                  It depends only on the object, so it does not move between its points.
    zoom view     a square patch centred on the point, for points near the boundary.

The server sends only these small JPEGs, never a whole image file. Each view comes with
its window `crop_xyxy` (image pixels, continuous frame of `pointsup.structures`) and its
display size, from which the page maps a point to the view:
    x_view = (x_img - crop_x0) * view_w / (crop_x1 - crop_x0), the same for y.
The page draws the box, the purple point and the green box around it itself (SVG), so the
context JPEG is the same for all points of an object and the browser caches it.

Images are found only through the JSON's `file_name` of an image id, and the resolved path
(symlinks followed) must stay inside the image folder.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from typing import Any

from PIL import Image

CONTEXT_MAX_SIDE = 560  # display pixels of the context view's long side
CONTEXT_MIN_SIDE = 320  # small objects are enlarged to at least this
ZOOM_SIDE = 280  # display pixels of the (square) zoom view
CONTEXT_MARGIN = 0.25  # context added on each side, as a fraction of the box side
ZOOM_FRACTION = 0.3  # zoom window side as a fraction of the box's long side ...
ZOOM_MIN_PIXELS, ZOOM_MAX_PIXELS = 24.0, 200.0  # ... within these image pixels


def context_window(box_xyxy: tuple[float, float, float, float], image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Integer window (x0, y0, x1, y1) around the box with margins, clipped to the (H, W) image."""
    H, W = image_size
    x0, y0, x1, y1 = box_xyxy
    mx = max(CONTEXT_MARGIN * (x1 - x0), 8.0)
    my = max(CONTEXT_MARGIN * (y1 - y0), 8.0)
    cx0, cy0 = max(int(x0 - mx), 0), max(int(y0 - my), 0)
    cx1, cy1 = min(int(x1 + mx + 1), W), min(int(y1 + my + 1), H)
    return cx0, cy0, max(cx1, cx0 + 1), max(cy1, cy0 + 1)


def zoom_window(point_xy: tuple[float, float], box_xyxy: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """Square window centred exactly on the point; it may reach past the image edge."""
    x, y = point_xy
    side = ZOOM_FRACTION * max(box_xyxy[2] - box_xyxy[0], box_xyxy[3] - box_xyxy[1])
    half = min(max(side, ZOOM_MIN_PIXELS), ZOOM_MAX_PIXELS) / 2
    return x - half, y - half, x + half, y + half


def display_size(window_xyxy: tuple[float, float, float, float], max_side: int, min_side: int) -> tuple[int, int]:
    """(width, height) in display pixels: the window scaled to fit max_side, at least min_side."""
    w, h = window_xyxy[2] - window_xyxy[0], window_xyxy[3] - window_xyxy[1]
    scale = min(max_side / max(w, h), max(min_side / max(w, h), 1.0))
    return max(int(round(w * scale)), 1), max(int(round(h * scale)), 1)


def safe_image_path(image_dir: str, file_name: Any) -> str:
    """The real path of `file_name` inside `image_dir`; ValueError if it would leave the folder."""
    if not isinstance(file_name, str) or not file_name or os.path.isabs(file_name) or "\x00" in file_name:
        raise ValueError(f"image file_name {file_name!r} must be a relative path")
    root = os.path.realpath(image_dir)
    path = os.path.realpath(os.path.join(root, file_name))
    # realpath resolves "..", and symlinks, so this also refuses a link pointing outside.
    if os.path.commonpath([root, path]) != root:
        raise ValueError(f"image file_name {file_name!r} resolves outside the image folder")
    return path


class ViewRenderer:
    """Cuts the views out of the job's images (a few decoded images are kept in memory)."""

    def __init__(self, coco: dict[str, Any], image_dir: str, cache_size: int = 4) -> None:
        self.images = {img["id"]: img for img in coco["images"]}
        self.image_dir = image_dir
        self.cache_size = cache_size
        self._cache: OrderedDict[Any, Image.Image] = OrderedDict()
        self._lock = threading.Lock()

    def load(self, image_id: Any) -> Image.Image:
        """The decoded RGB image of a JSON image id (FileNotFoundError / ValueError if bad)."""
        with self._lock:
            if image_id in self._cache:
                self._cache.move_to_end(image_id)
                return self._cache[image_id]
        info = self.images[image_id]
        path = safe_image_path(self.image_dir, info.get("file_name"))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file not found: {path} (image id {image_id})")
        with Image.open(path) as im:
            image = im.convert("RGB")
        if image.size != (int(info["width"]), int(info["height"])):
            raise ValueError(f"{path} is {image.size[0]}x{image.size[1]} but the JSON says "
                             f"{info['width']}x{info['height']} (image id {image_id})")
        with self._lock:
            self._cache[image_id] = image
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return image

    def image_size(self, image_id: Any) -> tuple[int, int]:
        """(H, W) of an image as the JSON gives it."""
        return int(self.images[image_id]["height"]), int(self.images[image_id]["width"])

    def context_geometry(self, image_id: Any, box_xyxy: tuple[float, float, float, float]) -> dict[str, Any]:
        """{crop_xyxy, width, height} of an object's context view."""
        window = context_window(box_xyxy, self.image_size(image_id))
        width, height = display_size(window, CONTEXT_MAX_SIDE, CONTEXT_MIN_SIDE)
        return {"crop_xyxy": list(window), "width": width, "height": height}

    @staticmethod
    def zoom_geometry(point_xy: tuple[float, float], box_xyxy: tuple[float, float, float, float]) -> dict[str, Any]:
        """{crop_xyxy, width, height} of a point's zoom view."""
        return {"crop_xyxy": list(zoom_window(point_xy, box_xyxy)), "width": ZOOM_SIDE, "height": ZOOM_SIDE}

    def context(self, image_id: Any, box_xyxy: tuple[float, float, float, float]) -> bytes:
        """JPEG of the context view (see `context_geometry`)."""
        geometry = self.context_geometry(image_id, box_xyxy)
        # crop + resize: resize filters properly when a large object is shrunk.
        view = self.load(image_id).crop(tuple(geometry["crop_xyxy"]))
        return _jpeg(view.resize((geometry["width"], geometry["height"]), Image.Resampling.BILINEAR))

    def zoom(self, image_id: Any, point_xy: tuple[float, float], box_xyxy: tuple[float, float, float, float]) -> bytes:
        """JPEG of the zoom view (see `zoom_geometry`)."""
        window = zoom_window(point_xy, box_xyxy)
        # EXTENT takes a fractional window (the point stays exactly centred) and fills
        # what lies outside the image with black.
        view = self.load(image_id).transform((ZOOM_SIDE, ZOOM_SIDE), Image.Transform.EXTENT, window, Image.Resampling.BILINEAR)
        return _jpeg(view)


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
