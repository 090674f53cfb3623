"""The two views and the image path rules, without a server."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from pointsup.annotate import views
from pointsup.annotate.views import ViewRenderer, context_window, safe_image_path, zoom_window


def test_paths_stay_inside_the_image_folder(tmp_path):
    image_dir = tmp_path / "images"
    (image_dir / "sub").mkdir(parents=True)
    (image_dir / "sub" / "a.png").write_bytes(b"x")
    (tmp_path / "secret.png").write_bytes(b"x")
    assert safe_image_path(str(image_dir), "sub/a.png") == os.path.realpath(image_dir / "sub" / "a.png")
    for bad in ["../secret.png", "sub/../../secret.png", str(tmp_path / "secret.png"), "", None, "a\x00.png"]:
        with pytest.raises(ValueError):
            safe_image_path(str(image_dir), bad)
    os.symlink(tmp_path / "secret.png", image_dir / "link.png")  # a link that escapes
    with pytest.raises(ValueError, match="outside"):
        safe_image_path(str(image_dir), "link.png")
    os.symlink(image_dir / "sub" / "a.png", image_dir / "inside.png")  # a link that stays inside
    assert safe_image_path(str(image_dir), "inside.png") == os.path.realpath(image_dir / "sub" / "a.png")


def test_view_windows():
    box = (30.0, 40.0, 90.0, 70.0)
    x0, y0, x1, y1 = context_window(box, (100, 120))
    assert x0 < 30 and y0 < 40 and x1 > 90 and y1 > 70  # the whole box plus margins
    assert context_window((0.0, 0.0, 120.0, 100.0), (100, 120)) == (0, 0, 120, 100)  # clipped to the image
    zx0, zy0, zx1, zy1 = zoom_window((31.5, 69.25), box)
    assert ((zx0 + zx1) / 2, (zy0 + zy1) / 2) == (31.5, 69.25)  # centred exactly on the point
    assert zx1 - zx0 == zy1 - zy0 == views.ZOOM_MIN_PIXELS  # 0.3 * 60 px is below the minimum


def _renderer(tmp_path, array, file_name="img.png"):
    Image.fromarray(array).save(tmp_path / file_name)
    H, W = array.shape[:2]
    coco = {"images": [{"id": 7, "file_name": file_name, "height": H, "width": W}]}
    return ViewRenderer(coco, str(tmp_path))


def test_zoom_is_centred_on_the_point_and_context_has_the_stated_size(tmp_path):
    array = np.zeros((60, 80, 3), dtype=np.uint8)
    array[:, 40:] = (250, 250, 250)  # left half black, right half white
    renderer = _renderer(tmp_path, array)
    box = (10.0, 10.0, 70.0, 50.0)
    for x, expected in [(30.0, 0), (50.0, 250)]:
        zoom = np.asarray(Image.open(io.BytesIO(renderer.zoom(7, (x, 30.0), box))))
        assert zoom.shape == (views.ZOOM_SIDE, views.ZOOM_SIDE, 3)
        centre = zoom[views.ZOOM_SIDE // 2 - 3: views.ZOOM_SIDE // 2 + 3, views.ZOOM_SIDE // 2 - 3: views.ZOOM_SIDE // 2 + 3]
        assert np.abs(centre.astype(int) - expected).max() < 20
    geometry = renderer.context_geometry(7, box)
    context = Image.open(io.BytesIO(renderer.context(7, box)))
    assert context.size == (geometry["width"], geometry["height"])


def test_large_images_are_scaled_on_the_server(tmp_path):
    renderer = _renderer(tmp_path, np.full((1500, 2400, 3), 128, dtype=np.uint8))
    jpeg = renderer.context(7, (0.0, 0.0, 2400.0, 1500.0))
    assert max(Image.open(io.BytesIO(jpeg)).size) == views.CONTEXT_MAX_SIDE
    assert len(jpeg) < 200_000


def test_image_size_must_match_the_json(tmp_path):
    renderer = _renderer(tmp_path, np.zeros((10, 10, 3), dtype=np.uint8))
    renderer.images[7]["height"] = 11
    with pytest.raises(ValueError, match="JSON says"):
        renderer.load(7)
