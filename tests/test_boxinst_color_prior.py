"""scripts/boxinst_color_prior.py: in-box neighbour pairs sorted by their GT labels, and the
share of each kind that BoxInst's colour prior would supervise."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "boxinst_color_prior.py")


def _load_script():
    spec = importlib.util.spec_from_file_location("boxinst_color_prior", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _square_on_background(noise: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    image = torch.full((3, 64, 64), 60.0)
    image[:, 16:48, 16:48] = torch.tensor([200.0, 40.0, 40.0])[:, None, None]
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[0, 16:48, 16:48] = True
    background = ~mask[0]
    image[:, background] += noise * torch.randn(3, int(background.sum()), generator=torch.Generator().manual_seed(0))
    return image.clamp(0, 255), mask, torch.tensor([[8.0, 8.0, 56.0, 56.0]])


def test_flat_colours_supervise_every_same_label_pair_and_no_boundary_pair():
    script = _load_script()
    image, mask, box = _square_on_background(noise=0.0)
    counts = script.pair_counts(image, mask, box, [0.3])
    bg, obj, across = (counts[kind] for kind in script.KINDS)
    # Box cells 2..13 on the 16 x 16 grid: 144 cells, 8 neighbours each, all on the map.
    assert bg[0] + obj[0] + across[0] == 144 * 8
    assert across[0] > 0 and bg[0] > 0 and obj[0] > 0
    assert bg[1] == bg[0] and obj[1] == obj[0]  # identical colours: similarity 1
    assert across[1] == 0  # red vs grey: far apart in LAB


def test_background_noise_silences_the_prior_on_background_pairs():
    script = _load_script()
    image, mask, box = _square_on_background(noise=40.0)
    bg, obj, across = (script.pair_counts(image, mask, box, [0.1, 0.3])[kind] for kind in script.KINDS)
    assert obj[1] == obj[2] == obj[0]  # the object stays flat
    assert bg[2] <= bg[1] < 0.5 * bg[0]  # noisy background: most pairs fall below tau
    assert across[1] == across[2] == 0


def test_counts_over_a_coco_file(tmp_path):
    script = _load_script()
    image, mask, box = _square_on_background(noise=0.0)
    os.makedirs(tmp_path / "images")
    Image.fromarray(image.permute(1, 2, 0).round().byte().numpy()).save(tmp_path / "images" / "a.png")
    rle = mask_util.encode(np.asfortranarray(mask[0].numpy().astype(np.uint8)))
    rle["counts"] = rle["counts"].decode()
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 64, "width": 64}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 8, 48, 48], "segmentation": rle,
                             "iscrowd": 0, "area": 1024}],
            "categories": [{"id": 1, "name": "square"}]}
    (tmp_path / "train.json").write_text(json.dumps(coco))
    totals = script.data_set_counts(str(tmp_path / "train.json"), str(tmp_path / "images"), [0.3], max_images=10)
    assert totals == script.pair_counts(image.round(), mask, box, [0.3])

    # Bad records: a clear error naming the file and the annotation, not a crash in a tensor op.
    for field, value, message in (("bbox", [8, 8], "annotation id 1 has no valid bbox"),
                                  ("segmentation", None, "annotation ids [1] have no segmentation")):
        bad = json.loads(json.dumps(coco))
        bad["annotations"][0][field] = value
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=re.escape(message)) as error:
            script.data_set_counts(str(tmp_path / "bad.json"), str(tmp_path / "images"), [0.3], max_images=10)
        assert "bad.json" in str(error.value)
